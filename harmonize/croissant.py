"""A Croissant 1.0 JSON-LD description of a build folder (`croissant.json` beside the card).

Croissant (MLCommons) is schema.org `Dataset` plus a description of the files and the records in
them. Here: one `cr:FileObject` per Parquet shard (with its sha256, so a copy can be checked), one
`cr:FileSet` per config (the shards a record set reads), a `cr:Split` record set naming the splits,
and one record set per config whose fields are the flat columns of its shards (names and types
read from the shards' own Hugging Face features; list columns such as `masks` are named in the
record set's description). Everything is read from the folder, so the file describes what was
written; keys come in a fixed order and nothing depends on the clock, so two builds of the same
inputs give the same bytes.

    write_croissant(build_dir)  # -> build_dir / "croissant.json"
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import ClassLabel, Features, Image, Json, List, Value

from covid_cxr_unified.adapters import adapter_class
from covid_cxr_unified.harmonize.data_files import DataFiles, build_data_files
from covid_cxr_unified.harmonize.errors import HarmonizeError
from covid_cxr_unified.harmonize.shards import sha256_file
from covid_cxr_unified.harmonize.splits import SPLITS

CROISSANT_FILENAME = "croissant.json"
CONFORMS_TO = "http://mlcommons.org/croissant/1.0"
PARQUET_MIME = "application/x-parquet"
DEFAULT_NAME = "covid_cxr_unified"
DEFAULT_DESCRIPTION = (
    "Public COVID-19 chest X-ray datasets (ieee8023 covid-chestxray-dataset, V7 Labs lung "
    "segmentations, BIMCV COVID-19+) harmonized into one record schema: namespaced patient ids, "
    "views, a five-state COVID-19 label (positive, negative, uncertain, not mentioned, not annotated), "
    "findings, COCO RLE masks and per-record licenses, with patient-disjoint train/validation/test splits. "
    "Licenses differ per record: see the license_* fields and LICENSE.md; filter before redistributing."
)

# The standard Croissant 1.0 JSON-LD context, as the specification's examples give it.
CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

_VALUE_TYPES = {
    "string": "sc:Text",
    "large_string": "sc:Text",
    "bool": "sc:Boolean",
    "float16": "sc:Float",
    "float32": "sc:Float",
    "float64": "sc:Float",
    "int8": "sc:Integer",
    "int16": "sc:Integer",
    "int32": "sc:Integer",
    "int64": "sc:Integer",
    "uint8": "sc:Integer",
    "uint16": "sc:Integer",
    "uint32": "sc:Integer",
    "uint64": "sc:Integer",
}

FIELD_DESCRIPTIONS = {
    "record_id": "Unique, stable id of the record: `<source>:<source id>`.",
    "source": "Source dataset of the record (ieee8023, v7_darwin, bimcv).",
    "patient_id": "Patient id namespaced by source, e.g. `ieee8023:19`.",
    "sex": "M or F, as the source states it; null when unknown.",
    "age_years": "Age in years at the study; null when unknown.",
    "image": "The image file as stored by the source (JPEG or PNG bytes, unchanged).",
    "image_mode": "PIL mode of the stored image: L, RGB, RGBA or I;16.",
    "bits_stored": "Bits per pixel actually used (DICOM Bits Stored for BIMCV).",
    "photometric_interpretation": "MONOCHROME1 (air bright: invert for display), MONOCHROME2, or null.",
    "view": "Projection",
    "covid19": "COVID-19 label state",
    "findings": "Findings named by the source, each with its label state and raw text",
    "masks": "Regions, one per annotation: label (lung, ignore or finding), the finding, and a compressed "
    "COCO RLE (`counts`) of an image of `size` [height, width], with `area` and `bbox` [x, y, w, h]",
    "license_id": "SPDX-like id of the image license; the license_* booleans say what it permits.",
}


def _field_type(feature: Any) -> str | None:
    if isinstance(feature, Image):
        return "sc:ImageObject"
    if isinstance(feature, ClassLabel):
        return "sc:Integer"
    if isinstance(feature, Json):
        return "sc:Text"
    if isinstance(feature, Value):
        return _VALUE_TYPES.get(feature.dtype)
    return None  # lists and structs


def _field(config: str, fileset: str, name: str, feature: Any, data_type: str) -> dict[str, Any]:
    description = FIELD_DESCRIPTIONS.get(name, f"Column `{name}` of the Parquet shards.")
    if isinstance(feature, ClassLabel):
        names = ", ".join(f"{i} = {n}" for i, n in enumerate(feature.names))
        description = f"{description}: class index ({names})."
    elif isinstance(feature, Json):
        description = f"Column `{name}`: JSON text."
    source: dict[str, Any] = {"fileSet": {"@id": fileset}, "extract": {"column": name}}
    if isinstance(feature, Image):
        source["transform"] = {"jsonPath": "bytes"}
    return {
        "@type": "cr:Field",
        "@id": f"{config}/{name}",
        "name": name,
        "description": description,
        "dataType": data_type,
        "source": source,
    }


def _list_field(config: str, fileset: str, name: str, feature: List) -> dict[str, Any] | None:
    """A list column as a repeated field: a list of scalars directly, a list of structs through one
    sub-field per scalar member (members that are themselves lists, e.g. a mask's `size` and `bbox`,
    are named in the description)."""
    inner = feature.feature
    column_source = {"fileSet": {"@id": fileset}, "extract": {"column": name}}
    description = FIELD_DESCRIPTIONS.get(name, f"Column `{name}` of the Parquet shards")
    field: dict[str, Any] = {"@type": "cr:Field", "@id": f"{config}/{name}", "name": name}
    if not isinstance(inner, dict):
        data_type = _field_type(inner)
        if data_type is None:
            return None
        return {
            **field,
            "description": f"{description} (a list).",
            "dataType": data_type,
            "repeated": True,
            "source": column_source,
        }
    members, other = [], []
    for key, member in inner.items():
        data_type = _field_type(member)
        if data_type is None or isinstance(member, Image):
            other.append(key)
            continue
        members.append(
            {
                "@type": "cr:Field",
                "@id": f"{config}/{name}/{key}",
                "name": key,
                "dataType": data_type,
                "source": {**column_source, "transform": {"jsonPath": key}},
            }
        )
    if not members:
        return None
    if other:
        description += "; members also in the column: " + ", ".join(other)
    return {**field, "description": f"{description}.", "repeated": True, "subField": members}


def _sources_in(shards: dict[str, dict[str, list[Path]]]) -> list[str]:
    found: set[str] = set()
    for path in {path for per_split in shards.values() for paths in per_split.values() for path in paths}:
        column = pq.read_table(path, columns=["source"]).column("source")
        found.update(str(v) for v in pc.unique(column).to_pylist() if v is not None)
    return sorted(found)


def _citations(sources: list[str]) -> str:
    texts = []
    for source in sources:
        try:
            texts.append(adapter_class(source).citation)
        except HarmonizeError:
            continue
    return "\n\n".join(texts)


def croissant_jsonld(
    build_dir: Path,
    *,
    name: str = DEFAULT_NAME,
    description: str = DEFAULT_DESCRIPTION,
    url: str | None = None,
    version: str = "1.0.0",
    data_files: DataFiles | None = None,
    sha256: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Croissant 1.0 JSON-LD document of the build folder `build_dir`, as a dict.

    `url` is where the dataset is published (e.g. its Hub page); file `contentUrl`s are relative
    to the folder. The build fingerprint (from `build_report.json`, when present) is the
    `identifier`. `data_files` is config -> split -> shard globs relative to `build_dir`
    (`{c.name: c.shards for c in result.configs}`); without it they are read from the card's
    YAML, or else taken from `data/<config>/`. A shard listed by two configs (the `all` config
    reusing another config's shards) is one `cr:FileObject`, included by both configs' file sets.
    `sha256`: shard path (relative to `build_dir`) -> its sha256, known already (a build's writers take
    them as each shard closes); the others are read and hashed.
    """
    shards = build_data_files(build_dir, data_files)
    sources = _sources_in(shards)
    document: dict[str, Any] = {
        "@context": CONTEXT,
        "@type": "sc:Dataset",
        "name": name,
        "description": description,
        "conformsTo": CONFORMS_TO,
    }
    fingerprint = _fingerprint(build_dir)
    if fingerprint:
        document["identifier"] = fingerprint
    document["citeAs"] = _citations(sources)
    document["license"] = "other"
    if url:
        document["url"] = url
    document["version"] = version
    document["keywords"] = ["medical", "chest x-ray", "covid-19", "segmentation", *sources]
    document["isAccessibleForFree"] = True
    distribution: list[dict[str, Any]] = []
    record_sets: list[dict[str, Any]] = []
    split_names = [s for s in SPLITS if any(s in per_split for per_split in shards.values())]
    if split_names:
        record_sets.append(_splits_record_set(split_names))
    unique = sorted({path for per_split in shards.values() for paths in per_split.values() for path in paths})
    distribution.extend(_file_object(build_dir, path, sha256 or {}) for path in unique)
    for config, per_split in shards.items():
        if not per_split:
            continue
        fileset = f"parquet-files-for-config-{config}"
        distribution.append(
            {
                "@type": "cr:FileSet",
                "@id": fileset,
                "name": fileset,
                "description": f"The Parquet shards of the {config} config (the split is in each file name).",
                "encodingFormat": PARQUET_MIME,
                "includes": [p.relative_to(build_dir).as_posix() for paths in per_split.values() for p in paths],
            }
        )
        first = next(iter(per_split.values()))[0]
        record_sets.append(_config_record_set(config, fileset, Features.from_arrow_schema(pq.read_schema(first))))
    document["distribution"] = distribution
    document["recordSet"] = record_sets
    return document


def _fingerprint(build_dir: Path) -> str | None:
    report = build_dir / "build_report.json"
    if not report.is_file():
        return None
    value = json.loads(report.read_text(encoding="utf-8")).get("fingerprint")
    return None if value is None else str(value)


def _file_object(build_dir: Path, path: Path, known: Mapping[str, str]) -> dict[str, Any]:
    relative = path.relative_to(build_dir).as_posix()
    return {
        "@type": "cr:FileObject",
        "@id": relative,
        "name": relative,
        "contentUrl": relative,
        "contentSize": f"{path.stat().st_size} B",
        "encodingFormat": PARQUET_MIME,
        "sha256": known.get(relative) or sha256_file(path),
    }


def _splits_record_set(split_names: list[str]) -> dict[str, Any]:
    return {
        "@type": "cr:RecordSet",
        "dataType": "cr:Split",
        "@id": "splits",
        "name": "splits",
        "description": "The splits of every config; patients (and linked patients and duplicate images) "
        "never straddle two.",
        "key": {"@id": "splits/name"},
        "field": [
            {
                "@type": "cr:Field",
                "@id": "splits/name",
                "name": "name",
                "description": "The name of the split.",
                "dataType": "sc:Text",
            }
        ],
        "data": [{"splits/name": split} for split in split_names],
    }


def _config_record_set(config: str, fileset: str, features: Features) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [
        {
            "@type": "cr:Field",
            "@id": f"{config}/split",
            "name": "split",
            "description": "Split to which the record belongs.",
            "dataType": "sc:Text",
            "source": {
                "fileSet": {"@id": fileset},
                "extract": {"fileProperty": "fullpath"},
                "transform": {"regex": _split_regex()},
            },
            "references": {"field": {"@id": "splits/name"}},
        }
    ]
    skipped = []
    for column, feature in features.items():
        data_type = _field_type(feature)
        if data_type is not None:
            fields.append(_field(config, fileset, column, feature, data_type))
        elif isinstance(feature, List) and (listed := _list_field(config, fileset, column, feature)):
            fields.append(listed)
        else:
            skipped.append(column)
    description = f"The records of the {config} config, one per image."
    if skipped:
        description += " Columns not described as fields here: " + ", ".join(skipped) + "."
    record_set: dict[str, Any] = {
        "@type": "cr:RecordSet",
        "@id": config,
        "name": config,
        "description": description,
    }
    if "record_id" in features:
        record_set["key"] = {"@id": f"{config}/record_id"}
    record_set["field"] = fields
    return record_set


def _split_regex() -> str:
    """The split of a shard path, e.g. `.../data/bimcv/train-00000-of-00001.parquet` -> `train`.

    Any folder: a config may include another config's shards. The path part is optional because
    mlcroissant (1.1) applies a field's transforms a second time to the already extracted value;
    the pattern then matches the bare split name too.
    """
    names = "|".join(SPLITS)
    return f"^(?:.*/)?({names})(?:-\\d+-of-\\d+\\.parquet)?$"


def croissant_text(document: dict[str, Any]) -> str:
    """The document as written: two-space indented JSON, keys in insertion order, final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_croissant(build_dir: Path, path: Path | None = None, **options: Any) -> Path:
    """Write `croissant_jsonld(build_dir, **options)` to `path` (default `build_dir/croissant.json`)."""
    target = build_dir / CROISSANT_FILENAME if path is None else path
    target.write_text(croissant_text(croissant_jsonld(build_dir, **options)), encoding="utf-8")
    return target
