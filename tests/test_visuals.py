"""Card pictures: display pixels, mask overlays, the contact sheet and the plots, checked by pixel values."""

from __future__ import annotations

import io
import json
import random
import struct
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from covid_cxr_unified.harmonize import visuals
from covid_cxr_unified.harmonize.build import BuildOptions, SourceSpec, build
from covid_cxr_unified.harmonize.features import FEATURES
from covid_cxr_unified.harmonize.splits import SPLITS
from covid_cxr_unified.harmonize.synthetic.ieee8023 import write_ieee8023
from covid_cxr_unified.harmonize.visuals import (
    MASK_ALPHA,
    MASK_COLOURS,
    choose_sample,
    contact_sheet,
    decode_mask,
    display_image,
    overlay_masks,
    plot_ages,
    plot_label_by_source,
    plot_views,
    read_config,
    render_card_figures,
    render_tile,
    sample_key,
)
from covid_cxr_unified.schema.vocab import Source


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _rle(box: tuple[int, int, int, int], height: int, width: int, label: str) -> dict[str, Any]:
    """A mask struct as a build stores it, covering rows top..bottom-1 and columns left..right-1."""
    top, left, bottom, right = box
    pixels = np.zeros((height, width), np.uint8)
    pixels[top:bottom, left:right] = 1
    rle = coco_mask.encode(np.asfortranarray(pixels))
    return {
        "label": label,
        "finding": None,
        "size": [height, width],
        "counts": rle["counts"].decode(),
        "area": int(pixels.sum()),
        "bbox": [float(left), float(top), float(right - left), float(bottom - top)],
    }


def _blend(grey: int, colour: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(round((1 - MASK_ALPHA) * grey + MASK_ALPHA * c) for c in colour)


def _mono1_row(record_id: str = "bimcv:sub-S1/ses-E1/img", source: str = "bimcv") -> dict[str, Any]:
    """A 12-bit MONOCHROME1 picture stored as I;16: air (left) bright, body (right) dark, with masks."""
    height, width = 40, 60
    stored = np.full((height, width), 3500, np.uint16)  # air: high stored value = bright in MONOCHROME1
    stored[:, 30:] = 600  # body
    return {
        "record_id": record_id,
        "source": source,
        "view": 1,
        "covid19": 0,
        "image": {"bytes": _png(stored), "path": None},
        "image_mode": "I;16",
        "bits_stored": 12,
        "photometric_interpretation": "MONOCHROME1",
        "masks": [_rle((5, 35, 35, 55), height, width, "lung"), _rle((2, 2, 8, 12), height, width, "ignore")],
    }


# --- pixels ----------------------------------------------------------------------------------------


def test_monochrome1_is_inverted_and_16_bit_is_windowed() -> None:
    row = _mono1_row()
    shown = display_image(row["image"], photometric_interpretation="MONOCHROME1", bits_stored=12)
    assert shown.dtype == np.uint8 and shown.shape == (40, 60)
    # the stored maximum (air) becomes black, the stored minimum (body) white
    assert shown[0, 0] == 0 and shown[0, 59] == 255
    as_mono2 = display_image(row["image"], photometric_interpretation="MONOCHROME2", bits_stored=12)
    assert as_mono2[0, 0] == 255 and as_mono2[0, 59] == 0
    assert np.array_equal(shown, 255 - as_mono2)


def test_16_bit_window_clips_outliers_to_the_percentiles() -> None:
    rng = np.random.default_rng(0)
    stored = rng.integers(1000, 3001, size=(100, 100)).astype(np.uint16)
    stored[0, 0], stored[0, 1] = 0, 4095  # single hot and cold pixels must not set the window
    shown = display_image(_png(stored), bits_stored=12)
    low, high = np.percentile(stored.astype(np.float64), (0.5, 99.5))
    assert shown[0, 0] == 0 and shown[0, 1] == 255
    mid = np.abs(stored.astype(np.float64) - (low + high) / 2).argmin()
    assert abs(int(shown.flat[mid]) - 128) <= 2
    assert shown.std() > 50  # spread over the full range, not a flat grey


def test_a_thumbnail_of_a_large_picture_is_shrunk_by_block_means_before_windowing() -> None:
    stored = np.zeros((1000, 730), np.uint16)
    stored[:, 365:] = 4095  # dark left half, bright right half
    stored[::2, ::2] += 7  # texture that block means average out
    shown = display_image(_png(stored), bits_stored=12, max_side=200)
    assert shown.shape == (200, 146)  # 1000 // 200 = 5: every 5 x 5 block is one pixel
    full = display_image(_png(stored), bits_stored=12)
    assert shown[:, :70].max() == full[:, :350].max() == 0 and shown[:, 75:].min() == full[:, 380:].min() == 255
    small = display_image(_png(stored[:300, :300]), bits_stored=12, max_side=200)
    assert small.shape == (300, 300)  # under twice max_side: left as it is


def test_8_bit_is_shown_as_stored_and_colour_becomes_grey() -> None:
    grey = np.tile(np.arange(40, 200, dtype=np.uint8), (8, 1))
    assert np.array_equal(display_image(_png(grey), bits_stored=8), grey)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    assert np.array_equal(display_image(_png(rgba), bits_stored=8), grey)
    inverted = display_image(_png(grey), photometric_interpretation="MONOCHROME1", bits_stored=8)
    assert np.array_equal(inverted, 255 - grey)


def test_overlay_colours_the_masked_pixels_only() -> None:
    grey = np.full((40, 60), 100, np.uint8)
    lung = _rle((5, 35, 35, 55), 40, 60, "lung")
    finding = _rle((10, 40, 20, 50), 40, 60, "finding")
    out = overlay_masks(grey, [finding, lung])
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (100, 100, 100)  # outside every mask: untouched
    assert tuple(out[30, 45]) == _blend(100, MASK_COLOURS["lung"])  # inside the lung only
    inside_both = _blend(100, MASK_COLOURS["lung"])
    expected = tuple(
        round((1 - MASK_ALPHA) * g + MASK_ALPHA * c) for g, c in zip(inside_both, MASK_COLOURS["finding"], strict=True)
    )
    assert tuple(out[15, 45]) == expected  # findings are blended over lungs
    assert tuple(out[5, 45]) == MASK_COLOURS["lung"]  # outline, opaque
    no_outline = overlay_masks(grey, [lung], outline=False)
    assert tuple(no_outline[5, 45]) == _blend(100, MASK_COLOURS["lung"])


def test_overlay_scales_masks_to_the_picture() -> None:
    lung = _rle((10, 70, 70, 110), 80, 120, "lung")  # stored at twice the picture's size
    assert decode_mask(lung).shape == (80, 120)
    out = overlay_masks(np.full((40, 60), 50, np.uint8), [lung])
    assert tuple(out[20, 45]) == _blend(50, MASK_COLOURS["lung"])
    assert tuple(out[20, 10]) == (50, 50, 50)


def test_tile_of_a_monochrome1_image_shows_dark_air_and_coloured_masks() -> None:
    row = _mono1_row()
    tile = np.asarray(render_tile(row, 120))  # 60 x 40 -> 120 x 80, letterboxed vertically
    assert tile.shape == (120, 120, 3)
    top = (120 - 80) // 2
    assert tuple(tile[top + 40, 10]) == (0, 0, 0)  # air, inverted to black, no mask there
    assert tuple(tile[top + 40, 115]) == (255, 255, 255)  # body, white, right of the lung
    assert tuple(tile[top + 40, 90]) == _blend(255, MASK_COLOURS["lung"])  # inside the lung mask
    assert tuple(tile[top + 10, 14]) == _blend(0, MASK_COLOURS["ignore"])  # inside the ignore mask


# --- sample -------------------------------------------------------------------------------------


def _candidates(n: int, source: str, masked_every: int = 0) -> list[dict[str, Any]]:
    return [
        {"record_id": f"{source}:img-{i:03d}", "source": source, "masks": bool(masked_every and i % masked_every == 0)}
        for i in range(n)
    ]


def test_sample_is_deterministic_mixed_and_order_free() -> None:
    rows = _candidates(40, "ieee8023", masked_every=5) + _candidates(200, "bimcv") + _candidates(3, "v7_darwin", 1)
    chosen = choose_sample(rows, 12)
    assert len(chosen) == len(set(chosen)) == 12
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert choose_sample(shuffled, 12) == chosen
    sources = [rid.split(":")[0] for rid in chosen]
    assert sources == sorted(sources) and set(sources) == {"bimcv", "ieee8023", "v7_darwin"}
    masked_ids = {r["record_id"] for r in rows if r["masks"]}
    ieee = [rid for rid in chosen if rid.startswith("ieee8023:")]
    assert ieee[0] in masked_ids and ieee[1] not in masked_ids  # masked and unmasked alternate
    without_image = [{**r, "image": None} for r in rows[:5]]
    assert not set(choose_sample(without_image, 5))


def test_sample_from_many_rows_keeps_only_a_few_yet_picks_the_first_in_sample_order() -> None:
    rows = _candidates(900, "bimcv", masked_every=7) + _candidates(400, "ieee8023")
    chosen = choose_sample(iter(rows), 6)  # a stream: far more rows than the 2n+64 it keeps per list
    by_key = sorted(rows, key=lambda r: sample_key(r["record_id"]))
    first_masked = [r["record_id"] for r in by_key if r["source"] == "bimcv" and r["masks"]][:2]
    first_plain = [r["record_id"] for r in by_key if r["source"] == "bimcv" and not r["masks"]][:2]
    first_ieee = [r["record_id"] for r in by_key if r["source"] == "ieee8023"][:3]
    assert chosen == [first_masked[0], first_plain[0], first_masked[1], *first_ieee]


def test_sample_keeps_its_members_when_unrelated_records_are_added() -> None:
    rows = _candidates(50, "ieee8023")
    before = choose_sample(rows, 8)
    after = choose_sample(rows + _candidates(5, "ieee8023x"), 8)
    kept = [rid for rid in after if rid.startswith("ieee8023:")]
    assert kept == before[: len(kept)]  # a new source takes turns, it never reshuffles the old picks


# --- files ---------------------------------------------------------------------------------------


def _png_text_chunks(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        if kind in (b"tEXt", b"iTXt", b"zTXt", b"tIME"):
            chunks.append(kind + b":" + data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    return chunks


def _open(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_contact_sheet_of_hand_made_rows(tmp_path: Path) -> None:
    rows = [_mono1_row(f"bimcv:sub-S{i}/ses-E1/img", "bimcv") for i in range(5)]
    rows.append({**_mono1_row("bimcv:no-image"), "image": None})
    path = contact_sheet(rows, tmp_path / "sheet.png", title="bimcv: sample images", n=4, columns=2, tile=100)
    pixels = _open(path)
    assert pixels.shape[1] == 8 + 2 * (100 + 8)  # two columns of 100 px tiles
    assert pixels.std() > 20  # not blank
    lung = np.array(_blend(255, MASK_COLOURS["lung"]))
    assert (np.abs(pixels.astype(int) - lung).sum(axis=2) == 0).sum() > 100  # lung overlays drawn
    assert _png_text_chunks(path) == []


@pytest.mark.parametrize("plot", [plot_views, plot_ages, plot_label_by_source])
def test_plots_of_hand_made_rows(plot: Any, tmp_path: Path) -> None:
    rows = [
        {
            "record_id": f"s:{i}",
            "source": ("bimcv", "ieee8023")[i % 2],
            "view": ("PA", "AP", 3)[i % 3],
            "covid19": i % 3,
            "age_years": None if i % 7 == 0 else float(5 + i % 90),
            "split": ("train", "test")[i % 4 == 0],
        }
        for i in range(60)
    ]
    path = plot(rows, tmp_path / "plot.png", title="test")
    pixels = _open(path)
    assert pixels.shape[0] > 150 and pixels.shape[1] > 500
    assert (pixels != 255).any(axis=2).mean() > 0.03  # something drawn on the white page
    assert _png_text_chunks(path) == []
    empty = plot([], tmp_path / "empty.png", title="empty")
    assert _open(empty).shape[1] > 500


def _build(source: Path, out: Path) -> Path:
    build([SourceSpec(Source.IEEE8023, source)], BuildOptions(out=out, progress=False))
    return out


def test_card_figures_of_a_build_are_byte_identical_across_builds(tmp_path: Path) -> None:
    source = write_ieee8023(tmp_path / "src", seed=5, patients=40).root
    outputs = []
    for name in ("a", "b"):
        out = _build(source, tmp_path / name)
        figures = render_card_figures(out, "ieee8023")
        assert [f.kind for f in figures] == ["contact_sheet", "views", "ages", "labels_by_source"]
        assert [f.markdown().split("](")[1] for f in figures] == [f"images/ieee8023_{f.kind}.png)" for f in figures]
        for figure in figures:
            pixels = _open(figure.path)
            assert pixels.shape[0] > 150 and pixels.std() > 10
        outputs.append({f.path.name: f.path.read_bytes() for f in figures})
    assert outputs[0] == outputs[1]
    again = render_card_figures(tmp_path / "a", "ieee8023", tmp_path / "a" / "again")
    assert {f.path.name: f.path.read_bytes() for f in again} == outputs[0]


def test_card_figures_of_an_empty_config(tmp_path: Path) -> None:
    figures = render_card_figures(tmp_path, "nothing")
    assert all(f.path.is_file() for f in figures)
    assert _open(figures[0].path).std() > 1  # a titled placeholder, not an error


def test_read_config_reads_splits_and_only_the_asked_rows(tmp_path: Path) -> None:
    out = _build(write_ieee8023(tmp_path / "src", seed=2, patients=30).root, tmp_path / "out")
    everything = read_config(out, "ieee8023", ("record_id", "view"))
    report = json.loads((out / "build_report.json").read_text())["configs"]["ieee8023"]
    assert Counter(everything.column("split").to_pylist()) == {s: n for s, n in report.items() if n}
    ids = everything.column("record_id").to_pylist()[::7]
    some = read_config(out, "ieee8023", ("record_id", "image"), record_ids=ids)
    assert sorted(some.column("record_id").to_pylist()) == sorted(ids)
    assert all(cell["bytes"] for cell in some.column("image").to_pylist())


def test_configs_are_read_from_the_shards_the_card_lists(tmp_path: Path) -> None:
    out = _build(write_ieee8023(tmp_path / "src", seed=3, patients=30).root, tmp_path / "out")
    report = json.loads((out / "build_report.json").read_text())["configs"]
    assert not (out / "data" / "all").exists()  # `all` reuses the ieee8023 shards
    assert read_config(out, "all", ("record_id",)).num_rows == sum(report["all"].values()) > 0
    assert render_card_figures(out, "all")[0].path.name == "all_contact_sheet.png"
    mine = {split: [f"data/ieee8023/{split}-*.parquet"] for split in SPLITS}
    table = read_config(out, "mine", ("record_id",), shards=mine)
    assert table.num_rows == sum(report["ieee8023"].values())
    (out / "README.md").unlink()  # without a card: the config folders
    assert read_config(out, "ieee8023", ("record_id",)).num_rows == table.num_rows
    assert read_config(out, "all", ("record_id",)).num_rows == 0


def test_card_sample_images_are_not_in_memory_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each sample tile is made as its row group is read: twelve 1 MB images never sit in memory at once."""
    noise = np.random.default_rng(0).integers(0, 256, size=(12, 1024, 1024), dtype=np.uint8)
    rows = [
        {"record_id": f"x:{i:02d}", "source": "ieee8023", "view": 0, "covid19": 1, "image": {"bytes": _png(noise[i])}}
        for i in range(12)
    ]
    schema = pa.schema([FEATURES.arrow_schema.field(c) for c in visuals.SHEET_COLUMNS])
    (tmp_path / "data" / "c").mkdir(parents=True)
    shard = tmp_path / "data" / "c" / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema), shard, row_group_size=1)
    held: list[int] = []
    render = visuals.render_tile

    def measured(row: dict[str, Any], size: int) -> Image.Image:
        held.append(tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes())
        return render(row, size)

    monkeypatch.setattr(visuals, "render_tile", measured)
    tracemalloc.start()
    try:
        tiles = visuals._sample_tiles(tmp_path, "c", [r["record_id"] for r in rows][::-1], None, 64)
    finally:
        tracemalloc.stop()
    assert [row["record_id"] for _, row in tiles] == [f"x:{i:02d}" for i in range(12)][::-1]
    assert len(held) == 12 and max(held) < 4 * 1024 * 1024  # one image as Arrow, as bytes, and slack
