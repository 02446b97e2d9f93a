"""Generate and drift-check `record.schema.json` from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path

from covid_cxr_unified.harmonize.errors import SchemaDriftError
from covid_cxr_unified.schema.record import SCHEMA_VERSION, Record

SCHEMA_PATH = Path(__file__).with_name("record.schema.json")


def generate_schema() -> str:
    schema = Record.model_json_schema()
    schema["$id"] = f"https://covid-cxr-unified/record/{SCHEMA_VERSION}"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    path.write_text(generate_schema(), encoding="utf-8")
    return path


def check_schema(path: Path = SCHEMA_PATH) -> None:
    committed = path.read_text(encoding="utf-8") if path.is_file() else ""
    if committed != generate_schema():
        raise SchemaDriftError(
            f"{path.name} is out of date with the record models; run `covid-cxr schema` and commit it"
        )
