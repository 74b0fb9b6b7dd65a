"""What an output's pixels depend on, as a key: a rerun skips a video only when every part is the same.

The parts: the resolved spec for that video (output settings aside), the input file's content, each weight file the
models read (path, size, modification time: a changed file changes them without reading gigabytes), the models'
and VAE's precision, the device type, and the versions of the packages that compute. The sidecar keeps the parts
beside the key, so a skipped or redone video can be explained.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import attrs

from evs_framework.errors import WeightsError
from evs_framework.preflight import entries_read, weight_path

PACKAGES = ("evs-framework", "torch", "diffusers", "transformers", "pluggy", "imageio-ffmpeg")
COMPUTING_PACKAGES = ("evs-framework", "torch", "diffusers", "transformers")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@functools.lru_cache(maxsize=256)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes, computed once per (path, size, mtime) in this process."""
    stat = Path(path).stat()
    return _content_hash(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def video_seed(spec_seed: int, item) -> int:
    """The seed of a video's noise: its own (a manifest's `seed`), else one drawn from the spec's seed and the video's
    content, so a video gets the same noise alone, in any batch, in any process and after a resume, and two videos
    do not share theirs."""
    return item.seed if item.seed is not None else derived_seed(spec_seed, content_hash(item.video))


def derived_seed(spec_seed: int, content: str) -> int:
    """A 64-bit seed made of the spec's seed and a digest of a video's content."""
    digest = hashlib.sha256(f"{spec_seed}:{content}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def file_fingerprints(path: Path) -> list[list]:
    """[relative name, size, mtime_ns] of `path` or of every file under it, sorted."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(f.relative_to(path)) if f != path else f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def weight_fingerprints(plan, context) -> dict[str, dict]:
    """Per registry entry the models read (with the entries they build on): its resolved path and files."""
    fingerprints = {}
    for entry in entries_read([model.entry for model in plan.models.values()], context):
        try:
            path = weight_path(entry, context)
        except WeightsError:
            path = None
        fingerprints[entry.name] = {"path": str(path) if path else None, "files": file_fingerprints(path) if path else []}
    return dict(sorted(fingerprints.items()))


def changed_parts(before: dict, now: dict, limit: int = 4) -> list[str]:
    """What differs between two runs' identity parts, as `path: old -> new` (at most `limit`, then how many more)."""
    changes = []

    def walk(old, new, path: str) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new), key=str):
                walk(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        elif old != new:
            changes.append(f"{path}: {_brief(old)} -> {_brief(new)}")

    walk(before, json.loads(json.dumps(now, default=str)), "")  # as the sidecar holds them (lists, not tuples)
    return changes[:limit] + ([f"{len(changes) - limit} more"] if len(changes) > limit else [])


def _brief(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else f"{text[:30]}..."


@attrs.frozen
class RunIdentity:
    key: str
    parts: dict


def run_identity(spec_data: dict, source: Path, weights: dict, context) -> RunIdentity:
    """The key of one video's run; `spec_data` is its resolved spec, `weights` the run's weight fingerprints."""
    versions = package_versions()
    parts = {
        "spec": {key: value for key, value in spec_data.items() if key != "output"},
        "input_sha256": content_hash(source),
        "weights": weights,
        "dtype": str(context.dtype).removeprefix("torch."),
        "vae_dtype": str(context.vae_dtype).removeprefix("torch."),
        "device_type": context.device.type,
        "versions": {name: versions[name] for name in COMPUTING_PACKAGES},
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return RunIdentity(key, parts)

