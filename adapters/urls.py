"""Text that must not reach a build as is: credentials in URLs (V7 exports sign image links with
`?token=…`) and lone UTF-16 surrogates (a JSON `"\\ud800"` escape), which no UTF-8 file can hold."""

from __future__ import annotations

import json
import re
import urllib.parse

from pydantic import JsonValue

# Query parameters that are credentials: removed from every URL kept in a record's raw fields.
SECRET_QUERY_KEYS = frozenset(
    {
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "sig",
        "auth",
    }
)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Text decoded from UTF-8 holds no surrogate; json.loads makes one only from a \uD800-\uDFFF escape.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def load_json(text: str) -> object:
    """`json.loads(text)` with lone surrogates replaced; the walk runs only when an escape could make one."""
    value = json.loads(text)
    return without_surrogates(value) if _SURROGATE_ESCAPE.search(text) else value


def without_surrogates(value: object) -> object:
    """`value` (parsed JSON) with every lone surrogate in its strings and keys replaced by U+FFFD."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {without_surrogates(key): without_surrogates(item) for key, item in value.items()}
    return value


def strip_url_secrets(value: JsonValue, where: str = "") -> tuple[JsonValue, list[str]]:
    """`value` with credential query parameters (`?token=…`) removed from every URL in it, and the
    paths (e.g. `image.url`) of the URLs that carried one."""
    if isinstance(value, dict):
        result: dict[str, JsonValue] = {}
        found: list[str] = []
        for key, item in value.items():
            result[key], inner = strip_url_secrets(item, f"{where}.{key}" if where else str(key))
            found += inner
        return result, found
    if isinstance(value, list):
        items, found = [], []
        for index, item in enumerate(value):
            clean, inner = strip_url_secrets(item, f"{where}[{index}]")
            items.append(clean)
            found += inner
        return items, found
    if isinstance(value, str) and "://" in value and "?" in value:
        try:
            parts = urllib.parse.urlsplit(value)
            query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        except ValueError:
            return value, []
        kept = [(k, v) for k, v in query if k.lower() not in SECRET_QUERY_KEYS]
        if len(kept) != len(query):
            return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept))), [where]
    return value, []


def scrubbed(raw: dict[str, JsonValue]) -> tuple[dict[str, JsonValue], tuple[str, ...]]:
    clean: dict[str, JsonValue] = {}
    found: list[str] = []
    for key, value in raw.items():
        clean[key], inner = strip_url_secrets(value, key)
        found += inner
    return clean, tuple(f"access token removed from the URL in raw {where}" for where in found)
