"""Where a native spec's videos come from besides a list: a folder, a glob, or a manifest file.

`inputs` may be a mapping instead of a list:
- `{manifest: clips.csv}` (or `.jsonl`): one video a row, with `video`, `prompt` and optionally `seed`,
  `negative_prompt` and `settings` (an object of composition settings to change for that video; JSON text in a CSV
  field); video paths are read from the manifest's folder;
- `{folder: clips/, prompt: "..."}`: every video file in the folder, in name order, with one prompt;
- `{glob: "clips/**/*.mp4", prompt: "..."}`: the files the pattern matches, in name order.
The mapping becomes the list it stands for before the spec is structured, and every problem of a manifest is
reported at once with its line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from evs_framework.errors import did_you_mean, written
from evs_framework.paths import resolved, unreadable_reason

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".webm", ".avi", ".mkv", ".gif")
MANIFEST_COLUMNS = ("video", "prompt", "seed", "negative_prompt", "settings")
REQUIRED_COLUMNS = ("video", "prompt")
SOURCES = ("manifest", "folder", "glob")
MAX_SEED = 2**64


def expand_inputs(data: dict, folder: Path) -> tuple[dict, list[str], list[str] | None]:
    """`data` with a mapping under `inputs` replaced by the list of {video, prompt, ...} it stands for, the problems
    found, and where each input came from (a manifest's lines; None otherwise); other data is returned as it is."""
    inputs = data.get("inputs")
    if not isinstance(inputs, dict):
        return data, [], None
    given = [key for key in SOURCES if key in inputs]
    allowed = {"manifest"} if given == ["manifest"] else {*given, "prompt", "negative_prompt"}
    problems = [f"$.inputs.{key}: unknown key{did_you_mean(str(key), allowed)}; fix or drop it" for key in inputs
                if key not in allowed and len(given) == 1]
    if len(given) != 1:
        return data, [f"$.inputs: give one of {', '.join(SOURCES)} (got {', '.join(given) or 'none'}), or a list of "
                      f"{{video, prompt}}"], None
    source = given[0]
    if source == "manifest":
        rows, found, origins = read_manifest(folder / str(inputs["manifest"]))
    else:
        (rows, found), origins = listed_videos(inputs, source, folder), None
    return {**data, "inputs": rows}, problems + found, origins


def listed_videos(inputs: dict, source: str, folder: Path) -> tuple[list[dict], list[str]]:
    prompt = inputs.get("prompt")
    problems = [] if isinstance(prompt, str) and prompt.strip() else \
        [f"$.inputs.prompt: got {written(prompt)}; a {source} of videos needs the prompt they share, as text"]
    where = str(inputs[source])
    if source == "folder":
        path = folder / where
        if not path.is_dir():
            return [], problems + [f"$.inputs.folder: {path} is not a folder; give the folder holding the videos"]
        videos = [p for p in path.iterdir() if p.is_file()]
    else:
        pattern = Path(where)
        base, relative = (Path(pattern.anchor), pattern.relative_to(pattern.anchor)) if pattern.is_absolute() else \
            (folder, pattern)
        videos = [p for p in base.glob(str(relative)) if p.is_file()]
    videos = sorted(resolved(p) for p in videos if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        problems.append(f"$.inputs.{source}: {where} holds no videos ({', '.join(VIDEO_SUFFIXES)})")
    extra = {"negative_prompt": inputs["negative_prompt"]} if "negative_prompt" in inputs else {}
    return [{"video": str(v), "prompt": prompt, **extra} for v in videos], problems


def read_manifest(path: Path) -> tuple[list[dict], list[str], list[str]]:
    """The rows of a CSV or JSONL manifest as input mappings (videos resolved from the manifest's folder), every
    problem with its line, and each row's line."""
    reason = unreadable_reason(path)
    if reason:
        return [], [f"$.inputs.manifest: {path} {reason}; give the path of a .csv or .jsonl manifest"], []
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        return [], [f"$.inputs.manifest: {path.name} is neither .csv nor .jsonl; write the manifest in one of them"], []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"$.inputs.manifest: {path} cannot be read ({exc}); save it as UTF-8 text"], []
    lines = _csv_lines(text, path.name) if suffix == ".csv" else _jsonl_lines(text, path.name)
    rows, problems, origins = [], [], []
    for line, values in lines:
        if isinstance(values, str):
            problems.append(values)
            continue
        row, found = _manifest_row(values, f"{path.name} line {line}", path.parent)
        problems += found
        if not found:
            rows.append(row)
            origins.append(f"{path.name} line {line}")
    if not rows and not problems:
        problems.append(f"$.inputs.manifest: {path.name} lists no videos")
    return rows, problems, origins


def _csv_lines(text: str, name: str):
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    unknown = [c for c in header if c not in MANIFEST_COLUMNS]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if unknown or missing:
        parts = [f"unknown column {c!r}{did_you_mean(c, MANIFEST_COLUMNS, list_all=False)}" for c in unknown] + \
                ([f"no {', '.join(missing)} column"] if missing else [])
        yield 1, f"{name} line 1: {'; '.join(parts)}; the columns are {', '.join(MANIFEST_COLUMNS)} (video and prompt needed)"
        return
    for values in reader:
        if None in values:
            yield reader.line_num, f"{name} line {reader.line_num}: more fields than columns; quote fields that hold commas"
            continue
        yield reader.line_num, {k: v for k, v in values.items() if v not in (None, "") or k in REQUIRED_COLUMNS}


def _jsonl_lines(text: str, name: str):
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, f"{name} line {number}: not JSON ({exc.msg}); write one object a line"
            continue
        if not isinstance(values, dict):
            yield number, f"{name} line {number}: {written(values)} is not an object; write {{\"video\": ..., \"prompt\": ...}}"
            continue
        unknown = [k for k in values if k not in MANIFEST_COLUMNS]
        if unknown:
            yield number, "; ".join(f"{name} line {number}: unknown key {key!r}{did_you_mean(key, MANIFEST_COLUMNS)}"
                                    for key in unknown)
            continue
        yield number, values


def _manifest_row(values: dict, where: str, folder: Path) -> tuple[dict, list[str]]:
    problems = []
    for key in REQUIRED_COLUMNS:
        if not isinstance(values.get(key), str) or not values[key].strip():
            problems.append(f"{where}: {key} {written(values.get(key)) if key in values else 'missing'}; give the {key} as text")
    row = {"video": str(resolved(folder / str(values.get("video", "")))), "prompt": values.get("prompt")}
    if "seed" in values:
        seed = _seed(values["seed"])
        if seed is None:
            problems.append(f"{where}: seed {written(values['seed'])}; give an integer in 0..2**64-1, or leave it "
                            f"out for one derived from the spec's seed and the video")
        row["seed"] = seed
    if "negative_prompt" in values:
        if not isinstance(values["negative_prompt"], str):
            problems.append(f"{where}: negative_prompt {written(values['negative_prompt'])}; give it as text")
        row["negative_prompt"] = values["negative_prompt"]
    if "settings" in values:
        settings = values["settings"]
        if isinstance(settings, str):  # a CSV field holds the overrides as a JSON object
            try:
                settings = json.loads(settings)
            except json.JSONDecodeError:
                settings = None
        if not isinstance(settings, dict):
            problems.append(f"{where}: settings {written(values['settings'])}; give an object of the settings to "
                            f"change for this video, e.g. {{\"idm_inverse_strength\": 0.6}}")
        row["settings"] = settings
    return row, problems


def _seed(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    return value if isinstance(value, int) and 0 <= value < MAX_SEED else None
