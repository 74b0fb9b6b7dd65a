"""LoRA files (kohya/civitai, diffusers, peft) read from .safetensors and fused into a UNet and CLIP text encoder.

Fusing writes W += scale * alpha / rank * up @ down into the base weights, so no peft and no runtime adapter.
Not diffusers' `load_lora_weights` + `fuse_lora`: they need peft, read pickles unasked and load non-strictly (a layer
that matches no module is only logged); nor its kohya converter (`lora_conversion_utils`), which maps SD1.5 LDM names
by string matching: `input_blocks_1` also catches `input_blocks_10`/`_11` (a KeyError) and `output_blocks_2_1_conv`,
up block 0's upsampler, becomes `up_blocks.0.attentions.2.conv`. Names here resolve against the model's own modules.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from evs_framework.errors import WeightsError

# key ending -> the part of a LoRA layer it holds; the rest of the key names the layer
PART_SUFFIXES = {
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha",  # kohya
    ".lora_A.weight": "down", ".lora_B.weight": "up",  # peft, diffusers save_lora_weights
    ".lora.down.weight": "down", ".lora.up.weight": "up",  # old diffusers
    ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",  # old diffusers text encoder
    "_lora.down.weight": "down", "_lora.up.weight": "up",  # old diffusers attention processors (to_q_lora)
}
RESNET_LAYERS = {"in_layers_2": "conv1", "out_layers_3": "conv2", "emb_layers_1": "time_emb_proj",
                 "skip_connection": "conv_shortcut"}
LDM_TOP_LEVEL = {"time_embed_0": "time_embedding_linear_1", "time_embed_2": "time_embedding_linear_2",
                 "input_blocks_0_0": "conv_in", "out_2": "conv_out"}
LDM_BLOCK_NAME = re.compile(r"^(input_blocks_\d+_\d+|middle_block_\d+|output_blocks_\d+_\d+)_(.+)$")
FIX_HINT = ("is this LoRA for SD1.5? SDXL and SD2 LoRAs, LyCORIS LoHa/LoKr/DoRA files and motion LoRAs do not fit "
            "an SD1.5 UNet; use a LoRA made for SD1.5-family models")


@attrs.frozen
class LoraDelta:
    module: str  # dotted module path inside the target model
    target: str  # "unet" or "text_encoder"
    up: torch.Tensor  # (out, rank) or conv (out, rank, 1, 1)
    down: torch.Tensor  # (rank, in) or conv (rank, in, kh, kw)
    alpha: float | None  # None: alpha = rank (scale 1)


@attrs.frozen
class LoraFile:
    path: Path
    format: str  # "kohya-diffusers-names", "kohya-ldm-names", "diffusers", "peft"
    deltas: tuple[LoraDelta, ...]


def read_lora(path, unet, text_encoder=None) -> LoraFile:
    """Reads a LoRA .safetensors file and maps each of its layers to a Linear/Conv2d module of unet or text_encoder."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise WeightsError(f"LoRA files must be .safetensors; {path.name} is not (pickled checkpoints can run code "
                           f"when opened): get the .safetensors version of this LoRA or convert it")
    if not path.is_file():
        raise WeightsError(f"LoRA file {path} does not exist; check the path")
    try:
        state_dict = load_file(path)
    except Exception as exc:  # safetensors raises its own error types for truncated or corrupt files
        raise WeightsError(f"LoRA file {path} could not be read ({exc}); download it again") from exc
    layers, keys_of, unmatched = _group_layers(state_dict)
    if not layers and not unmatched:
        raise WeightsError(f"LoRA file {path} holds no tensors; download it again")
    file_format = _detect_format(layers)
    indexes = {"unet": _module_index(unet), "text_encoder": _module_index(text_encoder, "text_model.")}
    ldm_blocks = _ldm_blocks(unet)
    configured_alphas = _configured_alphas(path, file_format)
    models = {"unet": unet, "text_encoder": text_encoder}
    deltas, used = [], {}
    for layer, parts in layers.items():
        if file_format.startswith("kohya"):
            found = _kohya_module(layer, indexes, ldm_blocks)
        elif file_format == "diffusers":
            found = _diffusers_module(layer, indexes)
        else:
            found = _peft_module(layer, indexes)
        if found is None:
            unmatched += keys_of[layer]
            continue
        target, module = found
        missing = [part for part in ("down", "up") if part not in parts]
        if missing:
            raise WeightsError(f"{path.name}: LoRA layer {layer!r} has no {' and no '.join(missing)} weight; "
                               f"the file is incomplete: download it again")
        if (target, module) in used:
            raise WeightsError(f"{path.name}: LoRA layers {used[target, module]!r} and {layer!r} both map to "
                               f"{target} module {module!r}; the file mixes two naming schemes: keep one")
        used[target, module] = layer
        _check_fits(models[target].get_submodule(module), f"{target} module {module!r}", parts["up"], parts["down"])
        alpha = float(parts["alpha"]) if "alpha" in parts else _configured_alpha(layer, configured_alphas.get(target))
        deltas.append(LoraDelta(module, target, parts["up"], parts["down"], alpha))
    if unmatched:
        unmatched = sorted(unmatched)
        more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
        no_text_encoder = (" It has text-encoder layers: pass the text encoder too."
                           if text_encoder is None and any(_is_text_encoder_key(k) for k in unmatched) else "")
        raise WeightsError(f"LoRA file {path.name} ({file_format} format): {len(unmatched)} key(s) match no layer of "
                           f"the {'UNet' if text_encoder is None else 'UNet or text encoder'}: "
                           f"{', '.join(unmatched[:5])}{more}.{no_text_encoder} Fix: {FIX_HINT}")
    return LoraFile(path, file_format, tuple(deltas))


def fuse_lora(lora: LoraFile, unet, text_encoder=None, scale: float = 1.0) -> int:
    """Adds scale * alpha / rank * up @ down to each target weight in place; returns how many modules changed."""
    models = {"unet": unet, "text_encoder": text_encoder}
    modules = []
    for delta in lora.deltas:  # check everything first, so a bad delta never leaves the model half-fused
        if models[delta.target] is None:
            raise WeightsError(f"LoRA {lora.path.name} has {delta.target} layers; pass the {delta.target} to fuse it")
        try:
            module = models[delta.target].get_submodule(delta.module)
        except AttributeError:
            raise WeightsError(f"LoRA {lora.path.name}: {delta.target} has no module {delta.module!r}; "
                               f"fuse it into the models it was read for") from None
        _check_fits(module, f"{delta.target} module {delta.module!r}", delta.up, delta.down)
        modules.append(module)
    if scale == 0:
        return 0
    with torch.no_grad():
        for delta, module in zip(lora.deltas, modules):
            weight = module.weight
            rank = delta.down.shape[0]
            factor = scale * (rank if delta.alpha is None else delta.alpha) / rank
            up = delta.up.flatten(1).to(weight.device, torch.float32)
            down = delta.down.flatten(1).to(weight.device, torch.float32)
            weight.copy_((weight.float() + factor * (up @ down).reshape(weight.shape)).to(weight.dtype))
    return len({id(module) for module in modules})


def _group_layers(state_dict):
    """({layer name: {"down"|"up"|"alpha": tensor}}, {layer name: its keys}, keys that are no LoRA part)."""
    layers, keys_of, strays = {}, {}, []
    for key, tensor in state_dict.items():
        suffix = next((s for s in PART_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            strays.append(key)
            continue
        layer = key[: -len(suffix)]
        layers.setdefault(layer, {})[PART_SUFFIXES[suffix]] = tensor
        keys_of.setdefault(layer, []).append(key)
    return layers, keys_of, strays


def _detect_format(layers) -> str:
    if any(name.startswith(("lora_unet_", "lora_te_")) for name in layers):
        ldm = any(_is_ldm_name(name.removeprefix("lora_unet_")) for name in layers if name.startswith("lora_unet_"))
        return "kohya-ldm-names" if ldm else "kohya-diffusers-names"
    if any(name.startswith(("unet.", "text_encoder.")) for name in layers):
        return "diffusers"
    return "peft"


def _is_ldm_name(name: str) -> bool:
    return name in LDM_TOP_LEVEL or name.startswith(("input_blocks_", "middle_block_", "output_blocks_"))


def _is_text_encoder_key(key: str) -> bool:
    return key.startswith(("lora_te_", "text_encoder.")) or ".text_model." in f".{key}"


def _module_index(model, legacy_prefix: str = "") -> dict[str, str]:
    """Module names by their dotted and underscore-joined spellings. transformers 5 dropped CLIPTextModel's
    `text_model.` level, which LoRA files still name: legacy_prefix spells it back when the model lacks it."""
    if model is None:
        return {}
    names = [name for name, _ in model.named_modules() if name]
    prefixes = [""]
    if legacy_prefix and legacy_prefix.rstrip(".") not in names:
        prefixes.append(legacy_prefix)
    return {spelling: name for name in names for prefix in prefixes
            for spelling in (prefix + name, (prefix + name).replace(".", "_"))}


def _resolve(indexes, target: str, name: str):
    """(target, dotted module name) for a dotted or underscore-joined name, or None."""
    module = indexes[target].get(name)
    return None if module is None else (target, module)


def _kohya_module(layer: str, indexes, ldm_blocks):
    if layer.startswith("lora_te_"):
        return _resolve(indexes, "text_encoder", layer.removeprefix("lora_te_"))
    if layer.startswith("lora_unet_"):
        name = layer.removeprefix("lora_unet_")
        return _resolve(indexes, "unet", _ldm_to_diffusers(name, ldm_blocks) or name)
    return None


def _diffusers_module(layer: str, indexes):
    target, _, name = layer.partition(".")
    if target not in indexes:
        return None
    return _resolve(indexes, target, _processor_to_module(name))


def _peft_module(layer: str, indexes):
    name = _processor_to_module(layer.removeprefix("base_model.model."))
    return _resolve(indexes, "unet", name) or _resolve(indexes, "text_encoder", name)


def _processor_to_module(name: str) -> str:
    """Old diffusers attention-processor LoRAs name `attn1.processor.to_out_lora`: the layers are attn1.to_out.0 etc."""
    return re.sub(r"\.processor\.to_out$", ".to_out.0", name).replace(".processor.", ".")


def _ldm_blocks(unet) -> dict[str, tuple[str, dict | None]]:
    """LDM block name (input_blocks_4_1) -> (diffusers module path, sub-layer renames or None to keep the names),
    counted from the UNet's own blocks so any layers_per_block and block layout map."""
    table = {}
    index = 1  # input_blocks_0 is conv_in
    for b, block in enumerate(unet.down_blocks):
        for layer in range(len(block.resnets)):
            table[f"input_blocks_{index}_0"] = (f"down_blocks.{b}.resnets.{layer}", RESNET_LAYERS)
            if getattr(block, "attentions", None):
                table[f"input_blocks_{index}_1"] = (f"down_blocks.{b}.attentions.{layer}", None)
            index += 1
        if block.downsamplers:
            table[f"input_blocks_{index}_0"] = (f"down_blocks.{b}.downsamplers.0", {"op": "conv"})
            index += 1
    if unet.mid_block is not None:  # resnet, attention, resnet, ...
        for k in range(len(unet.mid_block.resnets)):
            table[f"middle_block_{2 * k}"] = (f"mid_block.resnets.{k}", RESNET_LAYERS)
        for k in range(len(getattr(unet.mid_block, "attentions", None) or ())):
            table[f"middle_block_{2 * k + 1}"] = (f"mid_block.attentions.{k}", None)
    index = 0
    for b, block in enumerate(unet.up_blocks):
        has_attention = bool(getattr(block, "attentions", None))
        for layer in range(len(block.resnets)):
            table[f"output_blocks_{index}_0"] = (f"up_blocks.{b}.resnets.{layer}", RESNET_LAYERS)
            if has_attention:
                table[f"output_blocks_{index}_1"] = (f"up_blocks.{b}.attentions.{layer}", None)
            index += 1
        if block.upsamplers:  # rides on the block's last LDM layer, after its resnet (and attention)
            table[f"output_blocks_{index - 1}_{1 + has_attention}"] = (f"up_blocks.{b}.upsamplers.0", {"conv": "conv"})
    return table


def _ldm_to_diffusers(name: str, ldm_blocks) -> str | None:
    """The underscore-joined diffusers name of an LDM-named UNet layer, or None."""
    if name in LDM_TOP_LEVEL:
        return LDM_TOP_LEVEL[name]
    match = LDM_BLOCK_NAME.match(name)
    if not match or match[1] not in ldm_blocks:
        return None
    path, renames = ldm_blocks[match[1]]
    rest = match[2] if renames is None else renames.get(match[2])
    return None if rest is None else f"{path}.{rest}".replace(".", "_")


def _configured_alphas(path: Path, file_format: str) -> dict[str, dict]:
    """Per target, the peft config holding lora_alpha/alpha_pattern: diffusers keeps it in the file's metadata
    (`unet.lora_alpha`, ...), peft in an adapter_config.json beside the weights. Their keys carry no alpha."""
    if file_format == "diffusers":
        with safe_open(path, "pt") as handle:
            raw = (handle.metadata() or {}).get("lora_adapter_metadata")
        configs = {}
        for key, value in (json.loads(raw) if raw else {}).items():
            target, _, field = key.partition(".")
            configs.setdefault(target, {})[field] = value
        return configs
    if file_format == "peft" and (path.parent / "adapter_config.json").is_file():
        config = json.loads((path.parent / "adapter_config.json").read_text())
        return {"unet": config, "text_encoder": config}
    return {}


def _configured_alpha(layer: str, config: dict | None) -> float | None:
    if not config:
        return None
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if layer == pattern or layer.endswith(f".{pattern}"):
            return float(alpha)
    return None if config.get("lora_alpha") is None else float(config["lora_alpha"])


def _check_fits(module, what: str, up: torch.Tensor, down: torch.Tensor) -> None:
    if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
        raise WeightsError(f"LoRA layer for {what} targets a {type(module).__name__}; only Linear and Conv2d "
                           f"layers take a LoRA. Fix: {FIX_HINT}")
    shape = tuple(module.weight.shape)
    fits = (up.dim() in (2, 4) and down.dim() == up.dim() and up.shape[0] == shape[0]
            and up.shape[1] == down.shape[0] and all(s == 1 for s in up.shape[2:])
            and (tuple(down.shape[1:]) == shape[1:]
                 # a 1x1 conv LoRA on a Linear, or the reverse (proj_in/proj_out differ between SD1.5 and SD2)
                 or (down.shape[1] == shape[1] and all(s == 1 for s in (*down.shape[2:], *shape[2:])))))
    if not fits:
        raise WeightsError(f"LoRA layer for {what} does not fit: the module's weight is {shape}, the LoRA has up "
                           f"{tuple(up.shape)} and down {tuple(down.shape)} (expected up ({shape[0]}, rank"
                           f"{', 1, 1' if len(shape) == 4 else ''}) and down (rank, {', '.join(map(str, shape[1:]))})). "
                           f"Fix: {FIX_HINT}")
