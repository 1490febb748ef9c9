"""Versioned JSON for frozen config dataclasses: {"version": V, ...fields}, sorted keys."""
from __future__ import annotations

import json


def dumps_versioned(version: int, fields: dict) -> str:
    return json.dumps({"version": version, **fields}, sort_keys=True)


def loads_versioned(text: str, version: int, what: str, error=ValueError) -> dict:
    """The fields of a versioned JSON text; `error` if its version is not `version`."""
    d = json.loads(text)
    v = d.pop("version", None)
    if v != version:
        raise error(f"{what} version {v!r} is not supported (this qcomp reads {version})")
    return d
