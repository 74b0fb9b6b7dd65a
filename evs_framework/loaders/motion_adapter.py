"""AnimateDiff motion adapters as users have them: a diffusers folder, or one weights file in either key layout.

A file is a bare state dict, so the adapter's shape-determining config is inferred from its keys and shapes;
settings that change no shape (attention heads, norm groups) come from MotionAdapter's defaults or
`config_overrides`. Layouts:

- "diffusers": MotionAdapter's own keys (`down_blocks.0.motion_modules.0.proj_in.weight`), e.g.
  AnimateDiff-Lightning's `animatediff_lightning_8step_diffusers.safetensors`;
- "original": the AnimateDiff release / ComfyUI keys (`...motion_modules.0.temporal_transformer.proj_in.weight`,
  `...attention_blocks.0.to_q.weight`, `...attention_blocks.0.pos_encoder.pe`), e.g. the `_comfyui` file.

Loading is strict: any missing, unexpected or mis-shaped key is a WeightsError, never a partial load.
The original layout is renamed by diffusers' own converter (the one `MotionAdapter.from_single_file` uses); the file
is not loaded by `from_single_file`, which needs a config folder a bare file lacks (without one it fetches the config
of a Hub repository it guesses from the keys: an OSError offline) and loads non-strictly (unexpected keys are only
logged, missing ones fail as "Cannot copy out of meta tensor", naming no key).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from evs_framework.loaders.checkpoints import read_state_dict, refuse_pickled_folder
from evs_framework.errors import WeightsError

LAYOUTS = ("diffusers", "original")
# config keys a state dict cannot tell: they change no tensor shape
SHAPELESS_CONFIG = ("motion_num_attention_heads", "motion_norm_num_groups")

# (diffusers, original) key segments, for writing the original layout (reading uses diffusers' converter); the
# positional encoding is handled apart (one table in diffusers, one per attention block in the original)
_SEGMENTS = (
    (".attn1.", ".attention_blocks.0."),
    (".attn2.", ".attention_blocks.1."),
    (".norm1.", ".norms.0."),
    (".norm2.", ".norms.1."),
    (".norm3.", ".ff_norm."),
)
_ORIGINAL_PE = re.compile(r"\.attention_blocks\.[01]\.pos_encoder\.pe$")
_DIFFUSERS_PE = ".pos_embed.pe"


def load_motion_adapter(path: Path, dtype: torch.dtype, config_overrides: dict | None = None,
                        allow_pickle: bool = False):
    """A MotionAdapter from a diffusers folder or a single weights file (layout detected from its keys)."""
    from diffusers import MotionAdapter

    path = Path(path)
    if path.is_dir():
        refuse_pickled_folder(path, allow_pickle)
        try:
            return MotionAdapter.from_pretrained(path, local_files_only=True, torch_dtype=dtype,
                                                 use_safetensors=not allow_pickle or None, **(config_overrides or {}))
        except (OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"motion adapter folder {path} could not be loaded: {exc}") from exc
    state = read_state_dict(path, allow_pickle, "motion adapter weights")
    layout = detect_layout(state)
    source = f"{path} ({layout} layout)"
    if layout == "original":
        state, implied = original_to_diffusers(state, source)
        config_overrides = {**implied, **(config_overrides or {})}
    return motion_adapter_from_state_dict(state, dtype, config_overrides, source)


def detect_layout(state: dict) -> str:
    """'original' (AnimateDiff release / ComfyUI keys), 'diffusers', or 'unknown' (no motion-module keys)."""
    if any(".temporal_transformer." in k or ".attention_blocks." in k for k in state):
        return "original"
    if any(".motion_modules." in k for k in state):
        return "diffusers"
    return "unknown"


def original_to_diffusers(state: dict, source: str = "state dict") -> tuple[dict[str, torch.Tensor], dict]:
    """(diffusers-layout state, config it implies). diffusers' converter drops the positional tables (fixed
    sinusoids, recomputed on loading), so their length, the adapter's longest clip, is read here first."""
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

    lengths = {value.shape[1] for key, value in state.items() if _ORIGINAL_PE.search(key)}
    if len(lengths) > 1:
        raise WeightsError(f"{source}: positional tables of different lengths {sorted(lengths)}; a MotionAdapter has "
                           f"one length for all (motion_max_seq_length): is the file complete and unmodified?")
    implied = {"motion_max_seq_length": lengths.pop()} if lengths else {}
    return convert_animatediff_checkpoint_to_diffusers(state), implied


def diffusers_to_original(state: dict) -> dict[str, torch.Tensor]:
    converted = {}
    for key, value in state.items():
        key = re.sub(r"(\.motion_modules\.\d+)\.", r"\1.temporal_transformer.", key)
        if key.endswith(_DIFFUSERS_PE):
            stem = key[: -len(_DIFFUSERS_PE)]
            for block in (0, 1):
                converted[f"{stem}.attention_blocks.{block}.pos_encoder.pe"] = value
            continue
        for diffusers_segment, original_segment in _SEGMENTS:
            key = key.replace(diffusers_segment, original_segment)
        converted[key] = value
    return converted


def infer_motion_adapter_config(state: dict) -> dict:
    """MotionAdapter's shape-determining config, read from a diffusers-layout state dict (empty if it has none)."""
    proj_in = {int(m[1]): state[k].shape[0] for k in state if (m := re.match(r"down_blocks\.(\d+)\.motion_modules\.0\.proj_in\.weight$", k))}
    if not proj_in:
        return {}
    down = [_transformer_layers(state, f"down_blocks.{block}.") for block in range(max(proj_in) + 1)]
    config = {
        "block_out_channels": tuple(proj_in.get(block, 0) for block in range(len(down))),
        "motion_layers_per_block": _uniform(tuple(len(modules) for modules in down)),
        "motion_transformer_layers_per_block": _uniform(tuple(max(modules.values(), default=0) for modules in down)),
        "use_motion_mid_block": any(k.startswith("mid_block.") for k in state),
    }
    if mid := _transformer_layers(state, "mid_block."):
        config["motion_mid_block_layers_per_block"] = len(mid)
        config["motion_transformer_layers_per_mid_block"] = _uniform(tuple(mid.values()))
    pe = next((v for k, v in state.items() if k.endswith(_DIFFUSERS_PE)), None)
    if pe is not None:
        config["motion_max_seq_length"] = pe.shape[1]
    if "conv_in.weight" in state:
        config["conv_in_channels"] = state["conv_in.weight"].shape[1]
    return config


def motion_adapter_from_state_dict(state: dict, dtype: torch.dtype, config_overrides: dict | None = None,
                                   source: str = "state dict"):
    """A MotionAdapter holding exactly `state` (diffusers layout), its config inferred, then `config_overrides`."""
    from diffusers import MotionAdapter

    config = {**infer_motion_adapter_config(state), **(config_overrides or {})}
    try:
        with torch.device("meta"):  # no random init: every tensor comes from the state dict
            adapter = MotionAdapter(**config)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{source}: no MotionAdapter has config {config}: {exc}") from exc
    state = _with_positional_encodings(adapter, state)
    _check_keys(adapter.state_dict(), state, source, config)
    adapter.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return adapter.eval()


def write_motion_adapter_file(adapter, file: Path, layout: str) -> Path:
    """Write the adapter's state dict in the given key layout: .safetensors, or a pickle for the other suffixes."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown motion adapter layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    file = Path(file)
    state = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
    if layout == "original":
        state = diffusers_to_original(state)
    file.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    os.close(handle)
    try:
        if file.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            # the original layout repeats each positional table; safetensors refuses shared storage
            save_file({k: v.clone() for k, v in state.items()}, temporary)
        else:
            torch.save(state, temporary)
        os.replace(temporary, file)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return file


def _transformer_layers(state: dict, block_prefix: str) -> dict[int, int]:
    """motion module index -> number of transformer layers, for the modules under `block_prefix`."""
    pattern = re.compile(re.escape(block_prefix) + r"motion_modules\.(\d+)\.transformer_blocks\.(\d+)\.")
    layers: dict[int, int] = {}
    for key in state:
        if m := pattern.match(key):
            module, layer = int(m[1]), int(m[2])
            layers[module] = max(layers.get(module, 0), layer + 1)
    return layers


def _uniform(values: tuple):
    return values[0] if values and all(v == values[0] for v in values) else values


def _with_positional_encodings(adapter, state: dict) -> dict:
    """Fill in positional tables the file leaves out (they are fixed sinusoids, not learned; diffusers' own
    single-file converter drops them), computed on CPU as the adapter's constructor computes them."""
    from diffusers.models.embeddings import SinusoidalPositionalEmbedding

    expected = adapter.state_dict()
    missing = [k for k in expected if k.endswith(_DIFFUSERS_PE) and k not in state]
    if not missing:
        return state
    filled = dict(state)
    for key in missing:
        _, length, dim = expected[key].shape
        filled[key] = SinusoidalPositionalEmbedding(dim, length).pe
    return filled


def _check_keys(expected: dict, state: dict, source: str, config: dict) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and state[k].shape != v.shape]
    if not (missing or unexpected or mis_shaped):
        return
    problems = [f"{len(keys)} {what} (first 5: {', '.join(keys[:5])})"
                for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", mis_shaped))
                if keys]
    raise WeightsError(f"{source} does not match a MotionAdapter with config {config or '(defaults: no motion-module keys found)'}: "
                       f"{'; '.join(problems)}; is this an AnimateDiff motion adapter file, complete and unmodified?")
