"""Cheap checks that weight files are whole, made before any weight loads: a safetensors file's header parses and
the file is as long as the header says (a download cut short is shorter), a JSON config parses, a zip-format torch
pickle has its table of contents. Each problem names the file; the caller adds how to get it again."""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from evs_framework.loaders.checkpoints import PICKLE_SUFFIXES

# safetensors refuses headers above 100 MB; a larger length read from the first 8 bytes means they are not a header
MAX_HEADER_BYTES = 100_000_000


def safetensors_problem(file: Path) -> str | None:
    """Why `file` is not a whole safetensors file (None when its header and length agree)."""
    size = file.stat().st_size
    with file.open("rb") as stream:
        start = stream.read(8)
        if len(start) < 8:
            return f"{file} is {size} bytes, too short for a safetensors file"
        (header_bytes,) = struct.unpack("<Q", start)
        if header_bytes > min(MAX_HEADER_BYTES, size - 8):
            return f"{file} ({size} bytes) does not start with a safetensors header"
        raw = stream.read(header_bytes)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return f"{file} ({size} bytes) has an unreadable safetensors header"
    if not isinstance(header, dict):
        return f"{file} ({size} bytes) has an unreadable safetensors header"
    offsets = [info.get("data_offsets") if isinstance(info, dict) else None
               for name, info in header.items() if name != "__metadata__"]
    if not all(isinstance(pair, list) and len(pair) == 2 and all(isinstance(o, int) for o in pair) for pair in offsets):
        return f"{file} ({size} bytes) has an unreadable safetensors header"
    ends = [end for _, end in offsets]
    expected = 8 + header_bytes + max(ends, default=0)
    if size != expected:
        cut = " (cut short)" if size < expected else ""
        return f"{file} is {size} bytes, but its header says {expected}{cut}"
    return None


def json_problem(file: Path) -> str | None:
    """Why `file` is not a readable JSON config (None when it parses to a mapping)."""
    try:
        data = json.loads(file.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{file} ({file.stat().st_size} bytes) is not valid JSON ({exc})"
    if not isinstance(data, dict):
        return f"{file} holds a JSON {type(data).__name__}, not the mapping a config is"
    return None


def pickle_problem(file: Path) -> str | None:
    """Why a torch pickle is damaged, where that shows cheaply: the zip format torch saves in keeps its table of
    contents at the end, which a cut-short download lacks (older pickles are not zips and are not checked here)."""
    with file.open("rb") as stream:
        if stream.read(4) != b"PK\x03\x04":
            return None
    try:
        with zipfile.ZipFile(file):
            return None
    except (zipfile.BadZipFile, OSError):
        return f"{file} ({file.stat().st_size} bytes) is a damaged torch checkpoint: its zip directory cannot be read"


def file_problem(file: Path) -> str | None:
    suffix = file.suffix.lower()
    if suffix == ".safetensors":
        return safetensors_problem(file)
    if suffix == ".json":
        return json_problem(file)
    if suffix in PICKLE_SUFFIXES:
        return pickle_problem(file)
    return None


def weight_file_problems(path: Path) -> list[str]:
    """A problem for each damaged weight or config file at `path` (a file, or a folder searched throughout)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [problem for file in files if (problem := file_problem(file))]
