"""JSON as Go's ``encoding/json`` writes it: the SIF objects Apptainer and SingularityCE
write (labels, inspect metadata, signature payloads) must match theirs byte for byte."""

from __future__ import annotations

import json


def go_json(value: object, indent: str | None = None) -> bytes:
    """``json.Marshal`` (or ``MarshalIndent`` with ``indent``) of plain data built in Go's
    field order: no trailing newline, HTML-safe escapes included."""
    text = json.dumps(value, ensure_ascii=False, indent=indent,
                      separators=(",", ": ") if indent else (",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text.encode()
