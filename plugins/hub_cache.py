"""Finds a model's files in the local Hugging Face cache, offline (after the local weights folders)."""

from __future__ import annotations

from pathlib import Path

from evs_framework.hookspecs import hookimpl


@hookimpl(trylast=True)
def resolve_weights(location, settings):
    if not location.hub:
        return None
    from huggingface_hub import hf_hub_download, snapshot_download  # imported late: only a lookup needs it
    from huggingface_hub.errors import LocalEntryNotFoundError

    settings.searched.append(f"Hugging Face cache: {location.hub}" + (f" / {location.file}" if location.file else ""))
    try:
        if location.file:
            return Path(hf_hub_download(location.hub, location.file, local_files_only=True))
        return Path(snapshot_download(location.hub, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
