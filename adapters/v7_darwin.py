"""V7 Labs COVID-19 chest X-ray dataset: lung and "Ignore" masks, image tags, linkage to ieee8023.

One item per annotated image, from a COCO export, Darwin JSON 1.0 or Darwin JSON 2.0 (see
`v7_formats`). Tags are curator facts copied from the June-2020 ieee8023 metadata; they are mapped by
exact tables below. Masks carry V7's CC BY 4.0; the image keeps ieee8023's per-image license, known
only when the image is linked to its ieee8023 row.

Discovery keeps its per-image state on disk (`DiskIndex` in `workdir`): the images, the items in
order and each image's link; units only read it, so memory does not grow with the export.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from covid_cxr_unified.adapters.base import (
    Adapter,
    ExcludeItem,
    MappingContext,
    QuarantineItem,
    SourceItem,
    WorkUnit,
)
from covid_cxr_unified.adapters.disk_index import DiskIndex, DiskTable
from covid_cxr_unified.adapters.ieee8023 import LICENSES as IEEE8023_LICENSES
from covid_cxr_unified.adapters.ieee8023 import PLAUSIBLE_RANGES
from covid_cxr_unified.adapters.masks import GeometryError, Rle, polygon_rle, uncompressed_rle
from covid_cxr_unified.adapters.v7_formats import (
    TOO_LARGE,
    BatchWriter,
    ChunkedList,
    ImageTable,
    V7Annotation,
    V7Image,
    read_export,
)
from covid_cxr_unified.adapters.v7_linkage import Ieee8023Row, Linkage, link_of, read_ieee8023_rows
from covid_cxr_unified.schema.licenses import UNKNOWN_LICENSE_ID, license_record
from covid_cxr_unified.schema.record import (
    Clinical,
    Covid19Evidence,
    Covid19Label,
    FindingLabel,
    ImageRef,
    LicenseRecord,
    Mask,
    Outcomes,
    Patient,
    Provenance,
    Record,
    RecordLink,
    Study,
    ViewInfo,
)
from covid_cxr_unified.schema.vocab import (
    FINDING_CUI,
    Covid19Basis,
    Finding,
    LabelState,
    MaskLabel,
    Modality,
    Sex,
    Source,
    View,
    ViewBasis,
)

# Keyed tags: (key, separator) -> the ieee8023 column the value was copied from.
KEYED_TAGS: dict[tuple[str, str], str] = {
    ("PatientID", ":"): "patientid",
    ("Age", ":"): "age",
    ("Sex", "/"): "sex",
    ("View", "/"): "view",
    ("location", ":"): "location",
    ("Survival", "/"): "survival",
    ("Intubation", "/"): "intubated",
    ("Intubation_present", "/"): "intubation_present",
    ("ICU_admission", "/"): "went_icu",
    ("In_ICU_scan", "/"): "in_icu",
    ("Needed_supplemental_O2", "/"): "needed_supplemental_O2",
    ("Extubated", "/"): "extubated",
    ("Temperature", ":"): "temperature",
    ("pO2_saturation", ":"): "pO2_saturation",
    ("Leukocyte_count", ":"): "leukocyte_count",
    ("Neutrophil_count", ":"): "neutrophil_count",
    ("Lymphocyte_count_on_admission", ":"): "lymphocyte_count",
}
TAG_SEPARATORS = (":", "/")

# Bare tags that are findings (each positive finding flattened per level, as for ieee8023).
FINDING_TAGS: dict[str, tuple[Finding, ...]] = {
    "COVID-19": (Finding.COVID19,),
    "Viral Pneumonia": (Finding.PNEUMONIA, Finding.VIRAL_PNEUMONIA),
    "ARDS": (Finding.ARDS,),
}
COVID19_TAG = "COVID-19"
MODALITY_TAGS: dict[str, Modality] = {"X-ray": Modality.XR, "CT": Modality.CT}
# `19` is the June-2020 offset of exactly the 6 images carrying it: an export artefact, not a label.
NOISE_TAGS = frozenset({"19"})

VIEW_TAGS: dict[str, View] = {"PA": View.PA, "AP": View.AP, "AP_Supine": View.AP_SUPINE, "Lateral": View.LATERAL}
CT_VIEW_TAGS = frozenset({"Axial", "Coronal"})
# View tag -> the ieee8023 spelling of the same value, for comparison only.
VIEW_AS_IEEE8023 = {
    "PA": "PA",
    "AP": "AP",
    "AP_Supine": "AP Supine",
    "Lateral": "L",
    "Axial": "Axial",
    "Coronal": "Coronal",
}

SEXES: dict[str, Sex] = {"M": Sex.MALE, "F": Sex.FEMALE}
YES_NO: dict[str, bool] = {"Y": True, "N": False}
OUTCOME_FIELDS = {
    "survival": "survival",
    "intubated": "intubated",
    "intubation_present": "intubation_present",
    "went_icu": "went_icu",
    "in_icu": "in_icu",
    "needed_supplemental_O2": "needed_supplemental_o2",
    "extubated": "extubated",
}
CLINICAL_FIELDS = {
    "temperature": "temperature_c",
    "pO2_saturation": "po2_saturation",
    "leukocyte_count": "leukocyte_count",
    "neutrophil_count": "neutrophil_count",
    "lymphocyte_count": "lymphocyte_count",
}

MASK_LABELS: dict[str, MaskLabel] = {"Lung": MaskLabel.LUNG, "Ignore": MaskLabel.IGNORE}
ANNOTATION_LICENSE = license_record("CC-BY-4.0", None, attribution="V7 Labs COVID-19 chest X-ray dataset")
# An export's `area` may differ from the rasterized area by this share before the record is flagged.
AREA_TOLERANCE = 0.10
MOJIBAKE = "\ufffd"


@dataclass(frozen=True)
class Tags:
    """An image's tags split by kind; `values` uses ieee8023 column names and raw tag values."""

    values: dict[str, str]
    findings: tuple[str, ...]
    modalities: tuple[str, ...]
    noise: tuple[str, ...]
    unknown: tuple[str, ...]
    repeated: tuple[str, ...]  # fields tagged more than once (the first value is kept)


def parse_tags(tags: tuple[str, ...]) -> Tags:
    values: dict[str, str] = {}
    findings: list[str] = []
    modalities: list[str] = []
    noise: list[str] = []
    unknown: list[str] = []
    repeated: list[str] = []
    for tag in tags:
        keyed = _split_keyed(tag)
        if keyed is not None:
            column, value = keyed
            if column in values:
                repeated.append(column)
            else:
                values[column] = value
        elif tag in FINDING_TAGS:
            findings.append(tag)
        elif tag in MODALITY_TAGS:
            modalities.append(tag)
        elif tag in NOISE_TAGS:
            noise.append(tag)
        else:
            unknown.append(tag)
    if modalities:
        values["modality"] = modalities[0]
    return Tags(values, tuple(findings), tuple(modalities), tuple(noise), tuple(unknown), tuple(repeated))


def _split_keyed(tag: str) -> tuple[str, str] | None:
    for separator in TAG_SEPARATORS:
        key, found, value = tag.partition(separator)
        if found and (key, separator) in KEYED_TAGS:
            return KEYED_TAGS[(key, separator)], value
    return None


def comparable(tags: Tags) -> dict[str, str]:
    """Tag values spelled as ieee8023 spells them (views differ: `AP_Supine`, `Lateral`)."""
    values = dict(tags.values)
    if COVID19_TAG in tags.findings:
        values["finding"] = COVID19_TAG
    if "view" in values:
        values["view"] = VIEW_AS_IEEE8023.get(values["view"], values["view"])
    return values


@dataclass(frozen=True)
class Link:
    row: Ieee8023Row
    disagreements: tuple[str, ...]  # field names


@dataclass(frozen=True)
class _Current:
    """The item being processed (check_scope and to_record look it up by key)."""

    key: str
    image: V7Image
    duplicate: bool  # its file_name repeats an earlier image's
    link: Link | None


class V7DarwinAdapter(Adapter):
    name: ClassVar[Source] = Source.V7_DARWIN
    unit_state: ClassVar[tuple[str, ...]] = ("_masks", "_rejected", "_repaired", "_annotations_seen")
    version: ClassVar[str] = "1.0.0"
    title: ClassVar[str] = "V7 Labs COVID-19 chest X-ray dataset (lung segmentations)"
    homepage: ClassVar[str] = "https://github.com/v7labs/covid-19-xray-dataset"
    citation: ClassVar[str] = (
        "@misc{v7labs2020covid,\n"
        "  title={COVID-19 chest X-ray dataset (lung segmentations)},\n"
        "  author={{V7 Labs}},\n"
        "  howpublished={\\url{https://github.com/v7labs/covid-19-xray-dataset}},\n"
        "  year={2020}\n}"
    )
    access: ClassVar[str] = (
        "git clone https://github.com/v7labs/covid-19-xray-dataset and pass annotations/covid-only-coco.zip "
        "(COCO) or annotations/covid-only.zip (Darwin JSON 1.0) as --v7, or the annotations folder of a "
        "`darwin dataset pull` (Darwin JSON 2.0); images are the ieee8023 images/ folder (--images)"
    )

    def __init__(self, root: Path, **kwargs: object) -> None:
        super().__init__(root, **kwargs)  # type: ignore[arg-type]
        self.release = ""
        self._images: ImageTable | None = None
        self._order: ChunkedList | None = None  # [item key, image position, duplicate?, link] of each item
        self._numbers: DiskTable | None = None  # item key -> [image position, duplicate?, link]
        self._links: DiskTable | None = None  # file_name -> link: [ieee8023 cells, disagreeing fields]
        self._link_header: list[str] = []  # the ieee8023 columns of those cells
        self._current: _Current | None = None  # the item being processed
        self._masks: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._repaired = 0
        self._annotations_input = 0
        self._annotations_seen = 0

    # --- discovery ---------------------------------------------------------------------------
    def discover(self) -> None:
        export = read_export(
            self.root,
            self.access,
            max_json_bytes=self.max_json_bytes,
            max_members=self.max_archive_members,
            workdir=self.workdir,
        )
        self.release = export.release
        self._images = export.images
        linkage = self._linkage(export.images.index)
        classes = self._index(export.images, linkage)
        self.report.notes["format"] = export.shape
        self.report.notes["export"] = export.notes
        self.report.notes["annotations_by_class"] = dict(sorted(classes.items()))
        if linkage is None:
            self.report.notes["linkage"] = "not attempted: no ieee8023 metadata given"
        else:
            self.report.notes.update(linkage.notes())

    def _linkage(self, index: DiskIndex) -> Linkage | None:
        """Read the ieee8023 rows (to a scratch index) and set up the links table; None without ieee8023."""
        related = self.related.get(Source.IEEE8023)
        self._links, self._link_header = None, []
        if related is None:
            return None
        rows = read_ieee8023_rows(related, DiskIndex(self.workdir, name="v7-ieee8023"))
        self._links, self._link_header = index.table("links"), rows.header
        return Linkage(related, rows, self._links)

    def _index(self, images: ImageTable, linkage: Linkage | None) -> Counter[str]:
        """Key the items (a repeated file_name gets its own key), link each image and count the
        annotations by class, in one pass; then list the items in order, each with its link."""
        numbers = BatchWriter(images.index.table("numbers"))
        classes: Counter[str] = Counter()
        repeats = False
        self._annotations_input = 0
        for position, image in enumerate(images.summaries()):
            key, duplicate = image.file_name or image.source_file, False
            if key in numbers:
                key, duplicate, repeats = f"{key} (duplicate {position + 1})", True, True
            link = None
            if linkage is not None and image.error is None:
                link = linkage.add(image.file_name, comparable(parse_tags(image.tags)))
            numbers.add(key, [position, duplicate, link])  # a key met before keeps its place, takes this image
            self._annotations_input += len(image.categories)
            classes.update(image.categories)
        numbers.flush()
        if linkage is not None:
            linkage.links.flush()
        self._numbers = numbers.table
        self._order = ChunkedList(images.index.table("item_order"), size=256)
        for key, (position, duplicate, link) in numbers.table.items():
            if repeats and self._links is not None:  # a file_name's link is its last image's
                link = self._links.get(key)
            self._order.append([key, position, duplicate, link])
        self._order.close()
        return classes

    # --- items ---------------------------------------------------------------------------------
    def items(self) -> Iterator[SourceItem]:
        return self._items(0, len(self._order or ()))

    def units(self) -> list[WorkUnit]:
        return self.range_units(len(self._order or ()), "images")

    def items_of(self, unit: WorkUnit) -> Iterator[SourceItem]:
        return self._items(unit.start, unit.stop)

    def finish(self) -> None:
        self._note_annotations()

    def _items(self, start: int, stop: int) -> Iterator[SourceItem]:
        assert self._order is not None and self._images is not None, "discover() first"
        for number in range(start, stop):
            key, position, duplicate, link = self._order[number]
            image = self._images[position]
            self._current = _Current(key, image, duplicate, self._link(link))
            with_image = self.images is not None and not self.metadata_only and image.error is None
            yield SourceItem(
                key=key,
                source_file=image.source_file,
                row=None,
                fields=image.raw,
                image_path=image.file_name if with_image and image.file_name else None,
            )

    def _entry(self, key: str) -> _Current:
        """The item `key`: its image, whether its file_name repeats an earlier one, and its link."""
        if self._current is None or self._current.key != key:
            assert self._numbers is not None and self._images is not None, "discover() first"
            position, duplicate, _ = self._numbers[key]
            image = self._images[position]
            link = None if self._links is None else self._links.get(image.file_name)
            self._current = _Current(key, image, duplicate, self._link(link))
        return self._current

    def _link(self, stored: list[Any] | None) -> Link | None:
        """A link as stored by `Linkage`."""
        return None if stored is None else Link(*link_of(stored, self._link_header))

    def _note_annotations(self) -> None:
        """Annotation accounting, current after every item: check_scope sees every item first."""
        in_records = sum(self._masks.values()) + sum(self._rejected.values())
        self.report.notes["annotations"] = {
            "input": self._annotations_input,
            "masks_in_records": dict(sorted(self._masks.items())),
            "rejected_in_records": dict(sorted(self._rejected.items())),
            "repaired": self._repaired,
            "on_images_without_record": self._annotations_seen - in_records,
        }

    def check_scope(self, item: SourceItem, ctx: MappingContext) -> None:
        current = self._entry(item.key)
        image = current.image
        self._annotations_seen += len(image.annotations)
        self._note_annotations()
        if image.error is not None:
            too_large = image.error.startswith(TOO_LARGE)
            raise QuarantineItem(TOO_LARGE if too_large else "annotation file unreadable", image.error)
        if current.duplicate:
            raise QuarantineItem("duplicate file_name", image.file_name)
        if not image.file_name:
            raise QuarantineItem("file_name missing")
        tags = parse_tags(image.tags)
        if "CT" in tags.modalities or tags.values.get("view") in CT_VIEW_TAGS:
            raise ExcludeItem("CT slice: not a chest X-ray")
        if not tags.values.get("patientid", "").strip():
            raise QuarantineItem("PatientID tag missing")
        if image.width is None or image.height is None:
            raise QuarantineItem("image size missing", "the export states no width/height for the masks")

    # --- mapping -------------------------------------------------------------------------------
    def to_record(self, item: SourceItem, image: ImageRef | None, ctx: MappingContext) -> Record:
        current = self._entry(item.key)
        entry, link = current.image, current.link
        width, height = entry.width or 0, entry.height or 0
        if image is not None and (image.width, image.height) != (width, height):
            raise QuarantineItem(
                "image size differs from the annotated image", f"{image.width}x{image.height} vs {width}x{height}"
            )
        tags = parse_tags(entry.tags)
        self._flag_tags(entry, tags, link, ctx)
        masks, rejected, repairs = self._masks_of(entry, ctx)
        values = tags.values
        record = Record(
            record_id=f"v7_darwin:{entry.file_name}",
            source=Source.V7_DARWIN,
            release=self.release,
            patient=Patient(
                patient_id=f"v7_darwin:{values['patientid'].strip()}",
                sex=ctx.lookup("sex", SEXES, values.get("sex")),
                age_years=_number(ctx, "age", values.get("age")),
            ),
            study=Study(),
            image=image,
            modality=self._modality(tags, ctx),
            view=_view(values.get("view"), link, ctx),
            findings=tuple(
                FindingLabel(finding=f, state=LabelState.POSITIVE, cui=FINDING_CUI.get(f), raw=tag)
                for tag in tags.findings
                for f in FINDING_TAGS[tag]
            ),
            covid19=_covid19(tags),
            outcomes=Outcomes(
                **{attr: ctx.lookup(col, YES_NO, values.get(col)) for col, attr in OUTCOME_FIELDS.items()}
            ),
            clinical=Clinical(**{attr: _number(ctx, col, values.get(col)) for col, attr in CLINICAL_FIELDS.items()}),
            masks=tuple(masks),
            license=_image_license(link, ctx),
            links=() if link is None else (_record_link(link),),
            provenance=Provenance(
                source_file=entry.source_file,
                row=None,
                adapter_version=self.version,
                repairs=(*entry.repairs, *repairs),
                flags=tuple(ctx.flags),
            ),
            raw=dict(item.fields),
        )
        self._count_masks(masks, rejected, repairs)
        self._note_annotations()
        return record

    def _flag_tags(self, entry: V7Image, tags: Tags, link: Link | None, ctx: MappingContext) -> None:
        for tag in tags.unknown:
            ctx.unmapped("tag", tag)
        if tags.noise:
            ctx.flag("noise tag '19' ignored (a June-2020 offset copied as a tag)")
        for column in tags.repeated:
            ctx.flag(f"tag {column} given more than once; first kept")
        if any(MOJIBAKE in tag for tag in entry.tags):
            ctx.flag("tag text holds U+FFFD (mojibake from the June-2020 ieee8023 CSV), kept as published")
        for column, low, high in PLAUSIBLE_RANGES:
            number = _float(tags.values.get(column))
            if number is not None and not low <= number <= high:
                ctx.flag(f"implausible {column}")
        for name in link.disagreements if link is not None else ():
            ctx.flag(f"V7 tag disagrees with ieee8023: {name}")

    def _modality(self, tags: Tags, ctx: MappingContext) -> Modality:
        modality = ctx.lookup("modality", MODALITY_TAGS, tags.modalities[0] if tags.modalities else None)
        if modality is None:
            ctx.flag("modality tag missing; taken as X-ray (a V7 chest X-ray image that is not a CT slice)")
            return Modality.XR
        return modality

    def _masks_of(self, entry: V7Image, ctx: MappingContext) -> tuple[list[Mask], list[str], list[str]]:
        masks: list[Mask] = []
        rejected: list[str] = []
        repairs: list[str] = []
        for annotation in entry.annotations:
            label = ctx.lookup("annotation class", MASK_LABELS, annotation.category)
            try:
                if label is None:
                    raise GeometryError("unknown annotation class", annotation.category)
                rle = _rasterize(annotation, entry.height or 0, entry.width or 0)
            except GeometryError as exc:
                rejected.append(exc.reason)
                ctx.flag(f"annotation rejected: {exc.reason}")
                continue
            repairs += [f"annotation {annotation.annotation_id}: {text}" for text in rle.repairs]
            _flag_area(annotation, rle, ctx)
            masks.append(_mask(annotation, label, rle))
        return masks, rejected, repairs

    def _count_masks(self, masks: list[Mask], rejected: list[str], repairs: list[str]) -> None:
        self._masks.update(m.label.value for m in masks)
        self._rejected.update(rejected)
        self._repaired += len(repairs)


def image_masks(image: V7Image) -> tuple[list[tuple[V7Annotation, Rle]], list[tuple[V7Annotation, str]]]:
    """Every annotation of an image as an RLE, or the reason it cannot be one (for checks and tests)."""
    done: list[tuple[V7Annotation, Rle]] = []
    failed: list[tuple[V7Annotation, str]] = []
    for annotation in image.annotations:
        try:
            done.append((annotation, _rasterize(annotation, image.height or 0, image.width or 0)))
        except GeometryError as exc:
            failed.append((annotation, exc.reason))
    return done, failed


def _rasterize(annotation: V7Annotation, height: int, width: int) -> Rle:
    if annotation.rings is not None:
        return polygon_rle(annotation.rings, height, width)
    if annotation.rle is not None:
        if isinstance(annotation.rle.get("counts"), str):
            raise GeometryError("compressed RLE in the export is not read", "only uncompressed RLE occurs in V7")
        return uncompressed_rle(annotation.rle, height, width, annotation.stated_bbox)
    raise GeometryError("unsupported annotation geometry", annotation.unsupported or "")


def _flag_area(annotation: V7Annotation, rle: Rle, ctx: MappingContext) -> None:
    stated = annotation.stated_area
    if annotation.rings is not None and stated and abs(rle.area - stated) > AREA_TOLERANCE * stated:
        ctx.flag("mask area differs from the export's area by more than 10 %")


def _mask(annotation: V7Annotation, label: MaskLabel, rle: Rle) -> Mask:
    return Mask(
        label=label,
        size=rle.size,
        counts=rle.counts,
        area=rle.area,
        bbox=rle.bbox,
        annotation_source=Source.V7_DARWIN,
        annotation_id=annotation.annotation_id,
        annotation_license=ANNOTATION_LICENSE,
    )


def _view(raw: str | None, link: Link | None, ctx: MappingContext) -> ViewInfo:
    disagreements: tuple[str, ...] = ()
    if link is not None and "view" in link.disagreements:
        disagreements = (f"ieee8023={link.row.cells.get('view', '').strip()}",)
    view = ctx.lookup("view", VIEW_TAGS, raw)
    if view is None:
        return ViewInfo(view=View.UNKNOWN, raw=raw, basis=ViewBasis.NONE, disagreements=disagreements)
    return ViewInfo(view=view, raw=raw, basis=ViewBasis.TAG, disagreements=disagreements)


def _covid19(tags: Tags) -> Covid19Label:
    if COVID19_TAG not in tags.findings:
        return Covid19Label(state=LabelState.NOT_ANNOTATED, basis=Covid19Basis.NONE)
    evidence = Covid19Evidence(basis=Covid19Basis.ANNOTATION, state=LabelState.POSITIVE, raw=COVID19_TAG)
    return Covid19Label(state=LabelState.POSITIVE, basis=Covid19Basis.ANNOTATION, evidence=(evidence,))


def _image_license(link: Link | None, ctx: MappingContext) -> LicenseRecord:
    """ieee8023's license of the linked row; without a link the image license is unknown."""
    if link is None:
        return license_record(UNKNOWN_LICENSE_ID, None, attribution="image license unknown: not linked to ieee8023")
    raw = link.row.cells.get("license", "")
    license_id = ctx.lookup("license", IEEE8023_LICENSES, raw) or UNKNOWN_LICENSE_ID
    credit = link.row.cells.get("doi", "").strip() or link.row.cells.get("url", "").strip()
    return license_record(
        license_id,
        raw,
        attribution=f"{credit} ({raw.strip() or 'license not stated'}), via ieee8023/covid-chestxray-dataset",
    )


def _record_link(link: Link) -> RecordLink:
    return RecordLink(
        record_id=f"ieee8023:{link.row.filename}",
        patient_id=f"ieee8023:{link.row.patientid}",
        relation="same_image",
    )


def _float(raw: str | None) -> float | None:
    try:
        number = float(raw) if raw else None
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


def _number(ctx: MappingContext, column: str, raw: str | None) -> float | None:
    number = _float(raw)
    if raw and number is None:
        ctx.unmapped(column, raw)
    return number
