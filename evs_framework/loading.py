"""Loading models: weight resolution through the plugin hook, backends by kind, shared components."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Callable, Protocol

import attrs
import torch

from evs_framework.errors import EVSError, WeightsError
from evs_framework.failures import LEAVE_OUT, out_of_memory, raised_in, told
from evs_framework.loaders.integrity import weight_file_problems
from evs_framework.placement import Placement
from evs_framework.plugins import Plugins
from evs_framework.registry import ModelEntry, Registry

WEIGHTS_ENV = "EVS_WEIGHTS_DIR"
SHIPPED_WEIGHTS = Path(str(files("evs_framework") / "data" / "weights"))
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class Backend(Protocol):
    """What a backend kind's loader returns."""

    # the modules offloading moves to the device for denoising and for prompts; None for a backend without weights
    unet: torch.nn.Module | None
    text_encoder: torch.nn.Module | None
    codec: object  # encode(frames, chunk) / decode(latents, chunk), its `space` (LatentSpace) and `module` (the VAE)

    def encode_prompts(self, prompts: list[str]) -> object:
        """The model's conditioning, one row per prompt: a tensor, or a Conditioning (rows sliced alike)."""

    def predict(self, x: torch.Tensor, timestep: float, conditioning: object) -> torch.Tensor:
        """The model's raw output (noise, v, x0 or velocity, as its preset's `prediction` says) for x (batch, frames,
        channels, h, w), one conditioning row per batch entry; same shape as x."""


@attrs.define
class WeightSettings:
    folders: list[Path]
    offline: bool = True
    searched: list[str] = attrs.Factory(list)


def default_weight_folders(extra=()) -> list[Path]:
    """Folders named on the command line, then ./pretrained_models, then $EVS_WEIGHTS_DIR, then the weights that
    ship with EVS (the toy world's models)."""
    folders = [Path(p).expanduser() for p in extra] + [Path.cwd() / "pretrained_models"]
    if os.environ.get(WEIGHTS_ENV):
        folders.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    return folders + [SHIPPED_WEIGHTS]


@attrs.define
class LoadContext:
    plugins: Plugins
    registry: Registry
    weights: WeightSettings
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    # fp16 VAEs overflow to NaN (black frames) on some inputs, so the VAE keeps its own precision
    vae_dtype: torch.dtype = torch.float32
    allow_pickle: bool = False
    offload: bool = False  # keep weights in CPU memory, moving each model to `device` while it works
    compile: tuple[str, ...] = ()  # roles, `vae` or `all`: torch.compile'd once loaded (evs_framework.acceleration)
    _shared: dict = attrs.Factory(dict)
    placement: Placement = attrs.field(init=False)

    @placement.default
    def _placement(self) -> Placement:
        return Placement(self.device, self.offload)

    def weights_path(self, entry: ModelEntry) -> Path:
        self.weights.searched = []
        path = self.plugins.hook.resolve_weights(location=entry.weights, settings=self.weights)
        if path is None:
            places = "\n".join(f"    {p}" for p in self.weights.searched) or "    (no plugin searched anywhere)"
            target = self.weights.searched[0] if self.weights.searched else entry.weights.local
            if entry.weights.hub:
                how = f"run `evs fetch {entry.name}`, or put the files at {target}"
            else:
                how = f"download them{f' from {entry.weights.url}' if entry.weights.url else ''} and put them at {target}"
            raise WeightsError(f"weights for model {entry.name!r} ({entry.description}) not found; searched:\n{places}\n"
                               f"  {how} (or point --weights-dir / {WEIGHTS_ENV} at their folder)")
        return path

    def shared(self, key, build: Callable[[], object]):
        """One instance per key for this run (a base model's parts used by several entries load once)."""
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]

    def load(self, entry: ModelEntry) -> Backend:
        loader = self.plugins.catalogue.get("backends", entry.kind)
        return self.shared(("backend", entry.name), lambda: self._loaded(loader, entry))

    def _loaded(self, loader, entry: ModelEntry) -> Backend:
        try:
            return loader(entry, self)
        except EVSError:
            raise
        except Exception as exc:  # the libraries' own errors on files whose headers passed the preflight
            if out_of_memory(exc):
                raise
            raise WeightsError(load_failure(entry, self, exc)) from exc


def download_again(entry: ModelEntry, what: str = "it") -> str:
    """How to replace `what` (a damaged file of `entry`, or its files)."""
    if entry.weights.hub:
        return f"download {what} again (`evs fetch {entry.name}`)"
    if entry.weights.url:
        return f"download {what} again from {entry.weights.url}"
    return f"download or save {what} again"


def load_failure(entry: ModelEntry, context: LoadContext, error: Exception) -> str:
    """Why `entry` did not load, naming a damaged file where one is found now, and how to replace it."""
    try:
        path = context.weights_path(entry)
    except WeightsError as exc:
        return str(exc)
    damaged = weight_file_problems(path)
    if damaged:
        return f"model {entry.name!r} could not be loaded: {damaged[0]}; {download_again(entry)}"
    reason = told(error)
    catalogue = context.plugins.catalogue
    provider = catalogue.provider("backends", entry.kind)
    if provider is not None and provider not in catalogue.builtin:  # another's loader: its code may be at fault
        _, where = raised_in(error, catalogue.modules)
        return (f"model {entry.name!r} could not be loaded from {path}: plugin {provider!r}, which provides kind "
                f"{entry.kind!r}, failed with {reason} ({where}); {LEAVE_OUT}, or {download_again(entry, 'the files')} "
                f"if they may be damaged")
    return (f"model {entry.name!r} could not be loaded from {path} ({reason}); its files are damaged or are not those "
            f"of a model of kind {entry.kind!r}: {download_again(entry, 'them')}")
