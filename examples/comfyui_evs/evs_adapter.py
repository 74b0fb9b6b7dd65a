"""The pack's one way into EVS: every import of EVS is here, so when EVS moves a module only this file changes.

The nodes pass ComfyUI's IMAGE batches, (frames, height, width, 3) float tensors in [0, 1] with the batch as the clip
(VideoHelperSuite's convention), to `Composer` as they are; it gives them back in the same form.
"""

from __future__ import annotations

import contextlib
import functools
import os

import attrs
import torch

try:
    from evs_framework.api import Composer
    from evs_framework.errors import EVSError
    from evs_framework.plan_text import format_plan
    from evs_framework.plugins import load_plugins
    from evs_framework.registry import load_registry
    from evs_framework.spec import Settings
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith("evs_framework"):
        raise
    raise ImportError("the EVS nodes need EVS in ComfyUI's Python: run `python -m pip install -e /path/to/evs` with "
                      "the python that runs ComfyUI") from None

try:  # ComfyUI's table of model folders; only there when ComfyUI runs the pack
    import folder_paths
except ImportError:
    folder_paths = None

AUTO = "auto"
DTYPE_CHOICES = (AUTO, "float16", "bfloat16", "float32")
EVS_FOLDER = "evs"  # ComfyUI/models/evs (or `evs:` in extra_model_paths.yaml), laid out as EVS's pretrained_models/
# ComfyUI's own folders, searched after it: a registry path such as `stable-diffusion-v1-5` is looked up under each
COMFYUI_FOLDERS = ("diffusers", "checkpoints", "loras", "animatediff_models")

if folder_paths is not None:
    folder_paths.add_model_folder_path(EVS_FOLDER, os.path.join(folder_paths.models_dir, EVS_FOLDER))


class EVSNodeError(Exception):
    """What a node reports when EVS refuses its inputs: EVS's own message (the problem and its fix) without a traceback
    into EVS, or what is wrong with a node's own input."""


@contextlib.contextmanager
def as_node_error():
    try:
        yield
    except EVSError as exc:
        raise EVSNodeError(str(exc)) from None


@functools.cache
def _plugins_and_registry():
    """EVS's plugins and model registry (with the files $EVS_REGISTRY names), read once per ComfyUI start."""
    with as_node_error():
        plugins = load_plugins()
        return plugins, load_registry([], plugins)


def model_names(model_type: str) -> list[str]:
    """The registry's names of `model_type` ("t2i" or "t2v") models, in the order `evs models` lists them."""
    return [name for name, entry in _plugins_and_registry()[1].entries.items() if entry.type == model_type]


def composition_names() -> list[str]:
    return _plugins_and_registry()[0].catalogue.names("compositions")


def default_settings() -> dict:
    return attrs.asdict(Settings())


def device_choices() -> list[str]:
    return [AUTO, "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def weight_folders(weights_dir: str) -> list[str]:
    """Where the models' files are looked for before EVS's usual places: `weights_dir` when given, then, inside
    ComfyUI, models/evs, ComfyUI's folders of COMFYUI_FOLDERS (with those of extra_model_paths.yaml) and models/."""
    folders = [weights_dir.strip()] if weights_dir.strip() else []
    if folder_paths is not None:
        names = [name for name in (EVS_FOLDER, *COMFYUI_FOLDERS) if name in folder_paths.folder_names_and_paths]
        folders += [folder for name in names for folder in folder_paths.get_folder_paths(name)]
        folders.append(folder_paths.models_dir)
    return folders


def load_models(idm: str, vdm: str, device: str, dtype: str, idm_upscale: float, weights_dir: str) -> Composer:
    """The two models, loaded once; every frame of a clip given is composed (long clips in context windows)."""
    spec = {"models": {"idm": {"name": idm, "upscale": idm_upscale}, "vdm": {"name": vdm}},
            "video": {"max_frames": None}}
    with as_node_error():
        return Composer(spec, device=None if device == AUTO else device, dtype=None if dtype == AUTO else dtype,
                        weights_dirs=weight_folders(weights_dir))


def compose(models: Composer, frames: torch.Tensor, prompt: str, negative_prompt: str, seed: int, composition: str,
            settings: dict) -> tuple[torch.Tensor, str]:
    """`frames` composed, and the plan that ran (its calls counted for the clip's length); an empty negative prompt
    leaves each model its registry preset's."""
    with as_node_error():
        result = models(frames, prompt, seed=seed, negative_prompt=negative_prompt or None, settings=settings,
                        composition=composition)
    return result.frames, result.record["plan"]


def plan_text(models: Composer, composition: str, settings: dict) -> str:
    """The plan as `evs plan` prints it, without running it."""
    with as_node_error():
        return format_plan(models.planned(settings=settings, composition=composition)[1])
