"""Reading the plain-data files users hand us (specs, registries, compositions, weight lists), defensively.

A spec is a few kilobytes a few levels deep. Anything far larger (a YAML alias bomb, thousands of nested lists),
text that is not UTF-8, or a YAML tag that would build a Python object is refused with one short error
before any of it reaches the structuring code or an error message.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from evs_framework.errors import SpecError, short_repr
from evs_framework.paths import unreadable_reason

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_VALUES = 100_000  # counted with YAML aliases expanded, as the structuring code would see them


def read_data_file(path, what: str = "spec"):
    """The parsed JSON (a `.json` file) or YAML (anything else) in `path`, checked for size and depth."""
    path = Path(path)
    source = str(path)
    reason = unreadable_reason(path)
    if reason:
        raise SpecError([f"{path} {reason}; check the path to the {what}"], source)
    raw = path.read_bytes()
    if len(raw) > MAX_BYTES:
        raise SpecError([f"$: the file is {len(raw)} bytes; a {what} is at most {MAX_BYTES} bytes"], source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"$: not UTF-8 text (byte {exc.start} is {raw[exc.start]:#04x}); save the {what} as UTF-8"],
                        source) from None
    language = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        data = json.loads(text) if language == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise SpecError([f"$: not valid {language} ({short_repr(reason, 300, quote=False)}); fix the syntax"],
                        source) from None
    except RecursionError:
        raise SpecError([f"$: nested too deeply to read; a {what} is only a few levels deep"], source) from None
    check_size(data, source)
    return data


def check_size(data, source: str) -> None:
    """Refuses data nested deeper than MAX_DEPTH or holding more than MAX_VALUES values once aliases expand."""
    values, pending = 0, [(data, 0)]
    while pending:
        value, depth = pending.pop()
        values += 1
        if depth > MAX_DEPTH:
            raise SpecError([f"$: nested more than {MAX_DEPTH} levels deep; a spec is only a few levels deep"], source)
        if values > MAX_VALUES:
            raise SpecError([f"$: more than {MAX_VALUES} values (YAML aliases expanded); write the values out "
                             f"plainly"], source)
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children)
