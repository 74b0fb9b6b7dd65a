"""`evs fetch`: download registry entries' weights from the Hugging Face Hub into its cache.

Runs are always offline; this is the one command that uses the network. Files that are not on the Hub
(civitai checkpoints) are downloaded by hand; the error says from where and to where. The Hub is asked once
whether it answers at all, with a short timeout, so that a machine without a network hears so in seconds
rather than after every name's retries.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

from huggingface_hub import constants, hf_hub_download, snapshot_download

from evs_framework.errors import WeightsError
from evs_framework.registry import ModelEntry

CONNECT_TIMEOUT = 5.0  # seconds


def hub_unreachable() -> str | None:
    """Why the Hub endpoint cannot be reached (a short reason), or None when it accepts a connection."""
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        return f"{url.hostname}:{port} does not answer ({exc.strerror or type(exc).__name__})"
    return None


def fetch(entry: ModelEntry, weights_folder: Path, unreachable: str | None = None) -> Path:
    """Download `entry`'s files (only those its registry entry lists) into the Hub cache; returns their path."""
    location = entry.weights
    target = weights_folder / (location.local or entry.name)
    if not location.hub:
        where = f" from {location.url}" if location.url else ""
        raise WeightsError(f"model {entry.name!r} is not on the Hugging Face Hub; download it{where} by hand and put it at {target}")
    try:
        if unreachable:
            raise OSError(unreachable)
        if location.file:
            return Path(hf_hub_download(location.hub, location.file))
        return Path(snapshot_download(location.hub, allow_patterns=list(location.patterns) or None))
    except Exception as exc:  # huggingface_hub raises many network and HTTP error types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"could not download {entry.name!r} from the Hugging Face Hub ({location.hub}): {reason}; "
                           f"check the network connection (and HF_TOKEN for gated repos), or download it by hand and "
                           f"put it at {target}") from None
