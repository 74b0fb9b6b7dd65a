"""`evs fetch`: download a registry entry's weights from the Hugging Face Hub into its cache.

Runs are always offline; this is the one command that uses the network. Files that are not on the Hub
(civitai checkpoints) are downloaded by hand; the error says from where and to where.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download

from evs_framework.errors import WeightsError
from evs_framework.registry import ModelEntry


def fetch(entry: ModelEntry, weights_folder: Path) -> Path:
    location = entry.weights
    target = weights_folder / (location.local or entry.name)
    if not location.hub:
        where = f" from {location.url}" if location.url else ""
        raise WeightsError(f"model {entry.name!r} is not on the Hugging Face Hub; download it{where} by hand and put it at {target}")
    try:
        if location.file:
            return Path(hf_hub_download(location.hub, location.file))
        return Path(snapshot_download(location.hub, allow_patterns=list(location.patterns) or None))
    except Exception as exc:  # huggingface_hub raises many network and HTTP error types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"could not download {entry.name!r} from the Hugging Face Hub ({location.hub}): {reason}; "
                           f"check the network connection (and HF_TOKEN for gated repos), or download it by hand and "
                           f"put it at {target}") from None
