"""Pictures for the dataset card: a contact sheet of sample images with their masks, and plots of
views, ages and label x source, one set per config.

Everything here reads plain columns (a `pyarrow.Table` or a list of row dicts), never a loaded
`datasets.Dataset`, so the build can call it on its own Parquet shards. The output is deterministic:
the sample is chosen by a keyed hash of `record_id` (adding unrelated records never reshuffles the
sheet, it can only let a new record in), fonts are the ones bundled with Pillow and matplotlib, and
no PNG carries a timestamp or software version, so two builds of the same inputs write identical bytes.

The build calls one function per config::

    figures = render_card_figures(build_dir, "ieee8023")  # writes build_dir/images/ieee8023_*.png
    markdown = "\\n\\n".join(f.markdown() for f in figures)
"""

from __future__ import annotations

import hashlib
import io
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as coco_mask

from covid_cxr_unified.harmonize.data_files import build_data_files, resolve_split_files
from covid_cxr_unified.harmonize.display import display_array
from covid_cxr_unified.harmonize.splits import SPLITS
from covid_cxr_unified.schema.vocab import LabelState, MaskLabel, View

VIEW_NAMES: tuple[str, ...] = tuple(v.value for v in View)
LABEL_STATE_NAMES: tuple[str, ...] = tuple(s.value for s in LabelState)

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies).
MASK_COLOURS: dict[str, tuple[int, int, int]] = {
    MaskLabel.LUNG.value: (86, 180, 233),  # sky blue
    MaskLabel.IGNORE.value: (240, 228, 66),  # yellow
    MaskLabel.FINDING.value: (213, 94, 0),  # vermillion
}
# Drawn in this order: findings over lungs, Ignore regions (burnt-in text, markers) on top.
MASK_ORDER: tuple[str, ...] = (MaskLabel.LUNG.value, MaskLabel.FINDING.value, MaskLabel.IGNORE.value)
MASK_ALPHA = 0.4  # fill opacity; the outline is drawn opaque
LABEL_COLOURS: dict[str, str] = {
    LabelState.POSITIVE.value: "#D55E00",
    LabelState.NEGATIVE.value: "#0072B2",
    LabelState.UNCERTAIN.value: "#E69F00",
    LabelState.NOT_MENTIONED.value: "#B8B8B8",
    LabelState.NOT_ANNOTATED.value: "#6E6E6E",
}
SPLIT_COLOURS: dict[str, str] = {"train": "#4477AA", "validation": "#CCBB44", "test": "#EE6677"}

SAMPLE_KEY = "covid-cxr-unified/contact-sheet/v1"
DPI = 100
_PNG_METADATA: dict[str, str | None] = {"Software": None}  # matplotlib writes no other text chunk

_SHEET_BG = (24, 24, 24)
_TILE_BG = (8, 8, 8)
_TEXT = (235, 235, 235)
_MUTED = (160, 160, 160)

# Columns each figure reads; `split` is derived from the shard file name.
PLOT_COLUMNS = ("source", "view", "covid19", "age_years")
SHEET_COLUMNS = (
    "record_id",
    "source",
    "view",
    "covid19",
    "image",
    "image_mode",
    "bits_stored",
    "photometric_interpretation",
    "masks",
)

Rows: TypeAlias = pa.Table | Iterable[Mapping[str, Any]]  # an iterable is read once per plot
_SLICE_ROWS = 10_000  # rows that become Python objects at once


@dataclass(frozen=True)
class CardFigure:
    """One written figure: its kind (`contact_sheet`, `views`, `ages`, `labels_by_source`), file and
    alt text. `markdown()` gives the card line, with the path relative to the build folder."""

    kind: str
    path: Path
    alt: str
    build_dir: Path

    def markdown(self) -> str:
        return f"![{self.alt}]({self.path.relative_to(self.build_dir).as_posix()})"


# --- reading a build ------------------------------------------------------------------------------


def config_shards(
    build_dir: Path, config: str, shards: Mapping[str, Sequence[str]] | None = None
) -> dict[str, list[Path]]:
    """The Parquet shards of `config`, per split (only splits that have shards).

    `shards` is split -> globs relative to `build_dir` (the build's `ConfigResult.shards`); without
    it they come from the card's YAML, or else from `data/<config>/`.
    """
    if shards is not None:
        return resolve_split_files(build_dir, shards)
    return build_data_files(build_dir).get(config, {})


def read_config(
    build_dir: Path,
    config: str,
    columns: Sequence[str],
    *,
    record_ids: Iterable[str] | None = None,
    shards: Mapping[str, Sequence[str]] | None = None,
) -> pa.Table:
    """The `columns` of every row of `config` plus a `split` column, in split then shard order.

    With `record_ids`, only those rows are returned, and only the row groups holding one of them
    are read beyond their `record_id` column (so a dozen images cost a dozen row groups, not the
    whole image column). `shards` as in `config_shards`.
    """
    tables = []
    wanted = None if record_ids is None else pa.array(sorted(set(record_ids)), pa.string())
    for split, paths in config_shards(build_dir, config, shards).items():
        for path in paths:
            for table in _shard_tables(path, columns, wanted):
                tables.append(table.append_column("split", pa.array([split] * table.num_rows, pa.string())))
    if not tables:
        return pa.table({**{c: pa.array([], pa.null()) for c in columns}, "split": pa.array([], pa.string())})
    return pa.concat_tables(tables)


@dataclass(frozen=True)
class _ConfigRows:
    """The rows of `config` as dicts of `columns` plus `split`, read again row group by row group on
    each iteration (so a plot holds one row group, not the config)."""

    build_dir: Path
    config: str
    columns: Sequence[str]
    shards: Mapping[str, Sequence[str]] | None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for split, table in _row_groups(self.build_dir, self.config, self.columns, self.shards):
            for row in table.to_pylist():
                yield {**row, "split": split}

    def __len__(self) -> int:
        paths = config_shards(self.build_dir, self.config, self.shards).values()
        return sum(pq.ParquetFile(path).metadata.num_rows for split_paths in paths for path in split_paths)


def _row_groups(
    build_dir: Path, config: str, columns: Sequence[str], shards: Mapping[str, Sequence[str]] | None
) -> Iterator[tuple[str, pa.Table]]:
    """(split, the `columns` of one row group) of `config`, in split then shard order."""
    for split, paths in config_shards(build_dir, config, shards).items():
        for path in paths:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.metadata.num_row_groups):
                yield split, parquet.read_row_group(group, columns=list(columns))


def _shard_tables(path: Path, columns: Sequence[str], wanted: pa.Array | None) -> Iterator[pa.Table]:
    """The shard's `columns`; with `wanted` record ids, those rows, a row group at a time."""
    parquet = pq.ParquetFile(path)
    if wanted is None:
        yield parquet.read(columns=list(columns))
        return
    for group in range(parquet.metadata.num_row_groups):
        ids = parquet.read_row_group(group, columns=["record_id"]).column("record_id")
        hit = pc.is_in(ids, value_set=wanted)
        if pc.any(hit).as_py():
            yield parquet.read_row_group(group, columns=list(columns)).filter(hit)


def _rows(data: Rows, columns: Sequence[str]) -> list[dict[str, Any]]:
    return list(_iter_rows(data, columns))


def _iter_rows(data: Rows, columns: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The rows as dicts of `columns` (None where missing); a table becomes Python objects a slice at a time."""
    if isinstance(data, pa.Table):
        present = [c for c in columns if c in data.column_names]
        for start in range(0, data.num_rows, _SLICE_ROWS):
            for row in data.select(present).slice(start, _SLICE_ROWS).to_pylist():
                yield {c: row.get(c) for c in columns}
    else:
        for row in data:
            yield {c: row.get(c) for c in columns}


def _class_name(value: object, names: Sequence[str]) -> str:
    """A ClassLabel value as its name: an index (as stored) or already a name."""
    if isinstance(value, int) and not isinstance(value, bool):
        return names[value]
    return str(value)


# --- pixels -----------------------------------------------------------------------------------------


def _block_means(pixels: np.ndarray, factor: int) -> np.ndarray:
    """The picture shrunk `factor` times: the mean of each factor x factor block (edges cut off)."""
    height, width = pixels.shape[0] // factor, pixels.shape[1] // factor
    blocks = pixels[: height * factor, : width * factor].reshape(height, factor, width, factor)
    means: np.ndarray = blocks.mean(axis=(1, 3))
    return means


def display_image(
    image: bytes | Mapping[str, Any] | Image.Image,
    *,
    photometric_interpretation: str | None = None,
    bits_stored: int | None = None,
    max_side: int | None = None,
) -> np.ndarray:
    """Stored image bytes (or a build's `{"bytes": ...}` cell) as a display-ready uint8 H x W array.

    Colour images (RGB, RGBA, P, LA) are converted to grey first (alpha is dropped). Images of at
    most 8 bits are shown as stored; deeper ones (I;16, I) are windowed to the 0.5..99.5 percentiles
    by `display_array`, which also inverts MONOCHROME1. With `max_side`, a picture more than twice
    that size is first shrunk by the largest whole factor that keeps it at least `max_side` (block
    means), so a thumbnail of a full-size radiograph never makes full-size float copies.
    """
    stored = image["bytes"] if isinstance(image, Mapping) else image
    if isinstance(stored, bytes):
        with Image.open(io.BytesIO(stored)) as img:
            img.load()
            picture = img.copy()
    else:
        picture = stored
    if picture.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
        picture = picture.convert("L")
    pixels = np.asarray(picture)
    depth = bits_stored if bits_stored else (8 if pixels.dtype == np.uint8 else 16)
    if max_side is not None and max(pixels.shape) >= 2 * max_side:
        pixels = _block_means(pixels, max(pixels.shape) // max_side)
    if depth <= 8:
        top = float(2**depth - 1)
        return display_array(
            pixels,
            photometric_interpretation=photometric_interpretation,
            bits_stored=depth,
            window_center=top / 2,
            window_width=top,
        )
    return display_array(pixels, photometric_interpretation=photometric_interpretation, bits_stored=bits_stored)


def decode_mask(mask: Mapping[str, Any]) -> np.ndarray:
    """A build's mask struct (`size` [h, w], compressed COCO RLE `counts`) as a bool H x W array."""
    height, width = (int(v) for v in mask["size"])
    counts = mask["counts"]
    rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    decoded: np.ndarray = coco_mask.decode(rle).astype(bool)
    return decoded


def _edges(inside: np.ndarray) -> np.ndarray:
    """Pixels of `inside` with a 4-neighbour outside it (or on the image border)."""
    padded = np.pad(inside, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    result: np.ndarray = inside & ~interior
    return result


def overlay_masks(
    grey: np.ndarray,
    masks: Sequence[Mapping[str, Any]],
    *,
    alpha: float = MASK_ALPHA,
    outline: bool = True,
) -> np.ndarray:
    """An H x W x 3 uint8 picture of `grey` (H x W uint8) with `masks` blended in their label colours.

    Masks are scaled to the picture when their size differs (coverage-weighted, so a downscaled
    edge is soft). A pixel wholly inside one mask becomes `(1 - alpha) * grey + alpha * colour`,
    rounded; with `outline`, the mask border is drawn in the opaque colour.
    """
    height, width = grey.shape
    rgb = np.repeat(grey[:, :, None].astype(np.float64), 3, axis=2)
    by_label: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for mask in masks:
        by_label[str(mask["label"])].append(mask)
    borders: list[tuple[np.ndarray, tuple[int, int, int]]] = []
    for label in (*MASK_ORDER, *sorted(set(by_label) - set(MASK_ORDER))):
        colour = MASK_COLOURS.get(label, (255, 255, 255))
        for mask in by_label.get(label, []):
            coverage = _coverage(decode_mask(mask), height, width)
            weight = (alpha * coverage)[:, :, None]
            rgb = rgb * (1.0 - weight) + np.asarray(colour, np.float64) * weight
            if outline:
                borders.append((_edges(coverage >= 0.5), colour))
    for border, colour in borders:
        rgb[border] = colour
    result: np.ndarray = np.clip(rgb.round(), 0, 255).astype(np.uint8)
    return result


def _coverage(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask.astype(np.float64)
    upscale = height > mask.shape[0] or width > mask.shape[1]
    resample = Image.Resampling.BILINEAR if upscale else Image.Resampling.BOX
    scaled = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), resample)
    coverage: np.ndarray = np.asarray(scaled, np.float64) / 255.0
    return coverage


# --- contact sheet ------------------------------------------------------------------------------


def sample_key(record_id: str) -> str:
    """The keyed hash that orders records for the contact sheet."""
    return hashlib.sha256(f"{SAMPLE_KEY}\0{record_id}".encode()).hexdigest()


def choose_sample(rows: Iterable[Mapping[str, Any]], n: int) -> list[str]:
    """`n` record ids, chosen deterministically: sources take turns (so every source of an `all`
    config shows), and within a source records with masks alternate with records without (so
    overlays show when a source has them); each list is in `sample_key` order. Rows needs
    `record_id`, `source` and `masks` (anything truthy when the row has masks); a row whose `image`
    is given and None is never chosen. The result is grouped by source, in sample order within a source.
    Memory is bounded by `n`, not by the rows: only the first `n` of each list can be chosen."""
    by_source: dict[str, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = defaultdict(lambda: ([], []))
    for row in rows:
        if "image" in row and row["image"] is None:
            continue
        masked, plain = by_source[str(row["source"])]
        kept = masked if row.get("masks") else plain
        kept.append((sample_key(row["record_id"]), row["record_id"]))
        if len(kept) >= 2 * n + 64:
            kept.sort()
            del kept[n:]
    queues: dict[str, list[str]] = {}
    for source, (masked, plain) in sorted(by_source.items()):
        masked.sort()
        plain.sort()
        queue = [rid for pair in zip(masked, plain, strict=False) for _, rid in pair]
        shorter = min(len(masked), len(plain))
        queue += [rid for _, rid in masked[shorter:] + plain[shorter:]]
        queues[source] = queue
    chosen: dict[str, list[str]] = {source: [] for source in queues}
    remaining = n
    depth = 0
    while remaining > 0 and any(depth < len(q) for q in queues.values()):
        for source, queue in queues.items():
            if remaining > 0 and depth < len(queue):
                chosen[source].append(queue[depth])
                remaining -= 1
        depth += 1
    return [rid for source in queues for rid in chosen[source]]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int, *, middle: bool = False) -> str:
    """`text` shortened with an ellipsis to fit `width` px: at the end, or in the middle (for ids,
    whose start names the source and whose end tells images apart)."""
    if draw.textlength(text, font=font) <= width:
        return text
    if middle:
        head, tail = text[: len(text) // 3], text[len(text) // 3 :]
        while tail and draw.textlength(f"{head}…{tail}", font=font) > width:
            tail = tail[1:]
        if tail:
            return f"{head}…{tail}"
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_tile(row: Mapping[str, Any], size: int) -> Image.Image:
    """One contact-sheet picture: the display image letterboxed into `size` x `size`, masks blended."""
    grey = display_image(
        row["image"],
        photometric_interpretation=row.get("photometric_interpretation"),
        bits_stored=row.get("bits_stored"),
        max_side=2 * size,
    )
    height, width = grey.shape
    scale = size / max(height, width)
    fit_w, fit_h = max(1, round(width * scale)), max(1, round(height * scale))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    scaled = np.asarray(Image.fromarray(grey).resize((fit_w, fit_h), resample))
    picture = Image.fromarray(overlay_masks(scaled, row.get("masks") or []))
    tile = Image.new("RGB", (size, size), _TILE_BG)
    tile.paste(picture, ((size - fit_w) // 2, (size - fit_h) // 2))
    return tile


def contact_sheet(
    rows: Rows,
    path: Path,
    *,
    title: str,
    n: int = 12,
    columns: int = 6,
    tile: int = 192,
    total: int | None = None,
) -> Path:
    """Write a PNG grid of `n` sample images of `rows` (see `choose_sample`) with masks overlaid.

    `rows` needs `record_id, source, view, covid19, image, image_mode, bits_stored,
    photometric_interpretation, masks`; only the chosen rows' images are decoded. Each tile is
    captioned with source, view and COVID-19 state, and the record id; a legend names the mask
    colours. `total` is the number of records the sample was drawn from (default: `len(rows)`).
    """
    records = _rows(rows, SHEET_COLUMNS)
    chosen = choose_sample(records, n)
    by_id = {r["record_id"]: r for r in records}
    return _write_sheet(
        [(render_tile(by_id[rid], tile), by_id[rid]) for rid in chosen],
        path,
        title=title,
        columns=columns,
        tile=tile,
        total=len(records) if total is None else total,
    )


def _sample_tiles(
    build_dir: Path, config: str, chosen: Sequence[str], shards: Mapping[str, Sequence[str]] | None, size: int
) -> list[tuple[Image.Image, dict[str, Any]]]:
    """(tile, caption fields) of each chosen record that has an image, in `chosen` order; each tile is
    made as its row group is read, so the sample's image bytes are never in memory together."""
    wanted = pa.array(sorted(set(chosen)), pa.string())
    tiles = {}
    for paths in config_shards(build_dir, config, shards).values():
        for table in (t for path in paths for t in _shard_tables(path, SHEET_COLUMNS, wanted)):
            for row in _iter_rows(table, SHEET_COLUMNS):
                if row["image"] is not None:
                    tiles[row["record_id"]] = (render_tile(row, size), {k: v for k, v in row.items() if k != "image"})
    return [tiles[rid] for rid in chosen if rid in tiles]


def _write_sheet(
    picked: Sequence[tuple[Image.Image, Mapping[str, Any]]],
    path: Path,
    *,
    title: str,
    columns: int,
    tile: int,
    total: int,
) -> Path:
    """The contact sheet of `picked` (tile, caption fields) tiles."""
    pad, header, caption = 8, 56, 40
    columns = max(1, min(columns, len(picked))) if picked else columns
    grid_rows = max(1, -(-len(picked) // columns))
    width = pad + columns * (tile + pad)
    height = header + grid_rows * (tile + caption + pad) + pad
    sheet = Image.new("RGB", (width, height), _SHEET_BG)
    draw = ImageDraw.Draw(sheet)
    title_font, small = _font(18), _font(12)
    draw.text((pad + 2, 8), _fit(draw, title, title_font, width - 2 * pad), fill=_TEXT, font=title_font)
    subtitle = f"{len(picked)} of {total:,} records (keyed hash of record_id); captions: view · COVID-19 state"
    draw.text((pad + 2, 33), subtitle, fill=_MUTED, font=small)
    _legend(draw, width - pad, 35, small)
    for index, (picture, row) in enumerate(picked):
        left = pad + (index % columns) * (tile + pad)
        top = header + (index // columns) * (tile + caption + pad)
        sheet.paste(picture, (left, top))
        view = _class_name(row["view"], VIEW_NAMES)
        state = _class_name(row["covid19"], LABEL_STATE_NAMES)
        dot = top + tile + 6
        draw.ellipse((left + 1, dot + 2, left + 9, dot + 10), fill=LABEL_COLOURS.get(state, "#FFFFFF"))
        masks = row.get("masks") or []
        line = f"{view} · {state}"
        if masks:
            line += f" · {len(masks)} mask{'s' * (len(masks) != 1)}"
        draw.text((left + 13, dot), _fit(draw, line, small, tile - 14), fill=_TEXT, font=small)
        draw.text(
            (left + 1, dot + 16),
            _fit(draw, str(row["record_id"]), small, tile - 2, middle=True),
            fill=_MUTED,
            font=small,
        )
    if not picked:
        draw.text((pad + 2, header + tile // 2), "no images in this config", fill=_MUTED, font=small)
    return _save_pil(sheet, path)


def _legend(draw: ImageDraw.ImageDraw, right: int, top: int, font: Any) -> None:
    """Mask colour swatches, right-aligned, ending at `right`."""
    x = right
    for label in reversed(MASK_ORDER):
        text = {"ignore": "ignore region"}.get(label, label)
        x -= int(draw.textlength(text, font=font))
        draw.text((x, top - 2), text, fill=_TEXT, font=font)
        x -= 16
        colour = MASK_COLOURS[label]
        fill = tuple(round((1 - MASK_ALPHA) * 60 + MASK_ALPHA * c) for c in colour)
        draw.rectangle((x, top, x + 11, top + 11), fill=fill, outline=colour)
        x -= 14
    x -= int(draw.textlength("masks:", font=font))
    draw.text((x, top - 2), "masks:", fill=_MUTED, font=font)


def _save_pil(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=True)
    return path


# --- plots --------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _style(axes: Any) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(labelsize=9)


def _save_figure(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI, metadata=_PNG_METADATA, facecolor="white")
    return path


def _empty(axes: Any, text: str = "no records") -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="#777777")
    axes.set_xticks([])
    axes.set_yticks([])


def plot_views(rows: Rows, path: Path, *, title: str) -> Path:
    """Write a horizontal bar chart of the number of images per view, stacked by split when `rows`
    has a `split` column, each bar labelled with its count and share."""
    counts: Counter[tuple[str, str]] = Counter(
        (_class_name(r["view"], VIEW_NAMES), r.get("split") or "all") for r in _iter_rows(rows, ("view", "split"))
    )
    splits = [s for s in (*SPLITS, "all") if any(k[1] == s for k in counts)]
    figure = _figure(7.2, 3.0)
    axes = figure.add_subplot()
    _style(axes)
    total = sum(counts.values())
    figure.suptitle(f"{title}: view of {total:,} images", fontsize=12, x=0.02, ha="left")
    if not total:
        _empty(axes)
        return _save_figure(figure, path)
    views = list(reversed(VIEW_NAMES))
    left = np.zeros(len(views))
    for split in splits:
        widths = np.array([counts[(view, split)] for view in views], np.float64)
        axes.barh(views, widths, left=left, color=SPLIT_COLOURS.get(split, "#4477AA"), label=split, height=0.65)
        left += widths
    for y, value in enumerate(left):
        axes.text(value + total * 0.01, y, f"{int(value):,} ({value / total:.0%})", va="center", fontsize=9)
    axes.set_xlim(0, left.max() * 1.22 or 1)
    axes.set_xlabel("images", fontsize=9)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if splits != ["all"]:
        axes.legend(frameon=False, fontsize=9, ncols=len(splits), loc="lower right", bbox_to_anchor=(1, 1))
    return _save_figure(figure, path)


AGE_BIN_YEARS = 5
AGE_MAX = 100


def plot_ages(rows: Rows, path: Path, *, title: str) -> Path:
    """Write a histogram of `age_years` in 5-year bins (ages of 100 and over in the last), stacked by
    COVID-19 state, with the number of images without an age. Negatives that are all children, a
    known shortcut, show as a blue block at the left."""
    ages_of: dict[str, array[float]] = {state: array("d") for state in LABEL_STATE_NAMES}  # 8 bytes an age
    total = 0
    for r in _iter_rows(rows, ("age_years", "covid19")):
        total += 1
        if r["age_years"] is not None:
            state = _class_name(r["covid19"], LABEL_STATE_NAMES)
            ages_of.setdefault(state, array("d")).append(min(float(r["age_years"]), AGE_MAX - 1e-9))
    unknown = total - sum(len(ages) for ages in ages_of.values())
    figure = _figure(7.2, 3.0)
    axes = figure.add_subplot()
    _style(axes)
    figure.suptitle(f"{title}: age of {total:,} images", fontsize=12, x=0.02, ha="left")
    if unknown == total:
        _empty(axes, "no ages" if total else "no records")
        return _save_figure(figure, path)
    edges = np.arange(0, AGE_MAX + AGE_BIN_YEARS, AGE_BIN_YEARS, dtype=np.float64)
    centers = edges[:-1] + AGE_BIN_YEARS / 2
    bottom = np.zeros(len(centers))
    for state in LABEL_STATE_NAMES:
        ages = ages_of[state]
        if not ages:
            continue
        heights, _ = np.histogram(np.clip(ages, 0, None), bins=edges)
        axes.bar(
            centers,
            heights,
            width=AGE_BIN_YEARS * 0.9,
            bottom=bottom,
            color=LABEL_COLOURS[state],
            label=f"covid19 {state} ({len(ages):,})",
        )
        bottom += heights
    axes.set_xlim(0, AGE_MAX)
    axes.set_xticks(np.arange(0, AGE_MAX + 1, 10))
    axes.set_xlabel("age (years, 5-year bins; 100+ in the last)", fontsize=9)
    axes.set_ylabel("images", fontsize=9)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(frameon=False, fontsize=8, loc="upper left")
    share = unknown / total
    axes.text(
        0.99,
        0.97,
        f"age unknown: {unknown:,} ({share:.0%})",
        transform=axes.transAxes,
        ha="right",
        va="top",
        fontsize=9,
        color="#444444",
    )
    return _save_figure(figure, path)


def plot_label_by_source(rows: Rows, path: Path, *, title: str) -> Path:
    """Write the COVID-19 state x source table as 100% stacked bars, one per source and split, each
    segment labelled with its count and each bar with its total. A class that comes from a single
    source (the DeGrave shortcut) shows as a colour present in one group of bars only."""
    counts: Counter[tuple[str, str, str]] = Counter(
        (str(r["source"]), r.get("split") or "all", _class_name(r["covid19"], LABEL_STATE_NAMES))
        for r in _iter_rows(rows, ("source", "covid19", "split"))
    )
    bars = sorted({(source, split) for source, split, _ in counts}, key=lambda k: (k[0], _split_rank(k[1])))
    figure = _figure(7.2, 1.3 + 0.34 * max(len(bars), 1))
    axes = figure.add_subplot()
    _style(axes)
    total = sum(counts.values())
    figure.suptitle(f"{title}: COVID-19 state by source ({total:,} images)", fontsize=12, x=0.02, ha="left")
    if not bars:
        _empty(axes)
        return _save_figure(figure, path)
    labels = [f"{source} · {split}" for source, split in bars]
    ys = np.arange(len(bars))[::-1]
    totals = np.array([sum(counts[(s, p, state)] for state in LABEL_STATE_NAMES) for s, p in bars], np.float64)
    left = np.zeros(len(bars))
    for state in LABEL_STATE_NAMES:
        values = np.array([counts[(s, p, state)] for s, p in bars], np.float64)
        if not values.any():
            continue
        shares = values / totals
        axes.barh(ys, shares, left=left, color=LABEL_COLOURS[state], label=state, height=0.7)
        for y, x0, share, value in zip(ys, left, shares, values, strict=True):
            if share >= 0.06:
                dark = state in ("negative", "not_annotated")
                axes.text(
                    x0 + share / 2,
                    y,
                    f"{int(value):,}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
        left += shares
    for y, total in zip(ys, totals, strict=True):
        axes.text(1.01, y, f"n={int(total):,}", va="center", fontsize=8)
    axes.set_yticks(ys, labels)
    axes.set_xlim(0, 1)
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:.0%}")
    axes.legend(frameon=False, fontsize=8, ncols=5, loc="lower left", bbox_to_anchor=(0, 1.0))
    return _save_figure(figure, path)


def _split_rank(split: str) -> int:
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


# --- one call per config ----------------------------------------------------------------------


def _sample_candidates(keys: pa.Table) -> Iterator[dict[str, Any]]:
    """`choose_sample` rows (record_id, source, has masks) of a table, a slice at a time."""
    for start in range(0, keys.num_rows, 10_000):
        part = keys.slice(start, 10_000)
        has_masks = pc.greater(pc.fill_null(pc.list_value_length(part.column("masks")), 0), 0)
        columns = (part.column("record_id").to_pylist(), part.column("source").to_pylist(), has_masks.to_pylist())
        for rid, source, masked in zip(*columns, strict=True):
            yield {"record_id": rid, "source": source, "masks": masked}


_CARD_TILE = 192  # px a side of a contact-sheet picture in the card


def render_card_figures(
    build_dir: Path,
    config: str,
    out_dir: Path | None = None,
    *,
    shards: Mapping[str, Sequence[str]] | None = None,
    samples: int = 12,
) -> list[CardFigure]:
    """Write the card figures of `config` from its shards in `build_dir` and return them in card order.

    Files: `<out_dir>/<config>_contact_sheet.png`, `_views.png`, `_ages.png`, `_labels_by_source.png`;
    `out_dir` defaults to `build_dir/images` and must lie inside `build_dir` (the card links to it).
    `shards` is split -> shard globs relative to `build_dir` (pass `ConfigResult.shards` during a
    build, before the card exists; without it they are read from the card's YAML, or else taken
    from `data/<config>/`). Reads only the small plot columns of every row, and the image column
    of the row groups holding the `samples` chosen rows.
    """
    out = build_dir / "images" if out_dir is None else out_dir
    plot_rows = _ConfigRows(build_dir, config, PLOT_COLUMNS, shards)
    keys = _row_groups(build_dir, config, ("record_id", "source", "masks"), shards)
    chosen = choose_sample((row for _, table in keys for row in _sample_candidates(table)), samples)
    ordered = _sample_tiles(build_dir, config, chosen, shards, _CARD_TILE)
    figures = [
        CardFigure(
            "contact_sheet",
            _write_sheet(
                ordered,
                out / f"{config}_contact_sheet.png",
                title=f"{config}: sample images",
                columns=6,
                tile=_CARD_TILE,
                total=len(plot_rows),
            ),
            f"{config}: {len(ordered)} sample images with lung (blue), finding (red) and ignore (yellow) masks",
            build_dir,
        ),
        CardFigure(
            "views",
            plot_views(plot_rows, out / f"{config}_views.png", title=config),
            f"{config}: number of images per view and split",
            build_dir,
        ),
        CardFigure(
            "ages",
            plot_ages(plot_rows, out / f"{config}_ages.png", title=config),
            f"{config}: age histogram by COVID-19 state",
            build_dir,
        ),
        CardFigure(
            "labels_by_source",
            plot_label_by_source(plot_rows, out / f"{config}_labels_by_source.png", title=config),
            f"{config}: COVID-19 state by source and split",
            build_dir,
        ),
    ]
    return figures
