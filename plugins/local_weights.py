"""Finds a model's files in local weights folders (./pretrained_models, $EVS_WEIGHTS_DIR, --weights-dir)."""

from __future__ import annotations

from pathlib import Path

from evs_framework.hookspecs import hookimpl


@hookimpl
def resolve_weights(location, settings):
    if not location.local:
        return None
    local = Path(location.local).expanduser()
    candidates = [local] if local.is_absolute() else [folder / local for folder in settings.folders]
    for candidate in candidates:
        settings.searched.append(str(candidate))
        if candidate.exists():
            return candidate
    return None
