"""Speed and memory of the compositions at full SD1.5 / AnimateDiff size, with random weights.

Writes every model in the on-disk format its real download has (SD1.5 diffusers folder, EP as a civitai-style
single file, a kohya watercolor LoRA, the Lightning motion adapter as a bare state dict, an AnimateLCM folder with
its spatial LoRA) at the real sizes with random fp16 weights, loads them through the registry, then
- measures what sharing the spatial UNet saves (lightningEP next to EP, against UNetMotionModel.from_unet2d's copy);
- runs each composition on a synthetic 16-frame 512x320 clip with the seed's example settings (x2 upscale);
- runs the other model pairs (watercolor + lightningSD, EP + animatelcm) once each.
Writes one JSON line per measurement to $OUT/bench.jsonl (or bench/results/bench.jsonl) as it goes.

    python bench/full_size.py [--compositions IDM_VDM_IDM,basic,IDM,VDM] [--frames 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import attrs
import torch

from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.planner import make_plan
from evs_framework.plugins import load_plugins
from evs_framework.registry import load_registry
from evs_framework.runner import VideoRun, decode, encode, load_backends, make_denoisers, run_plan
from evs_framework.spec import InjectionSettings, InputVideo, ModelChoice, Spec
from evs_framework.testing.lora_write import write_kohya_lora
from evs_framework.loaders.motion_adapter import write_motion_adapter_file
from evs_framework.loaders.single_file import write_sd15_single_file
from evs_framework.testing.zoo import (
    ANIMATELCM_FOLDER, ANIMATELCM_LORA, LIGHTNING_FILE, SD_FOLDER, WATERCOLOR_LORA, make_scheduler, make_synthetic_clip,
    save_tokenizer,
)

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    scaling_factor=0.18215,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, vocab_size=49408, projection_dim=768)


def build_weights(root: Path) -> Path:
    from diffusers import AutoencoderKL, MotionAdapter, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if (root / "done").is_file():
        return root
    torch.manual_seed(0)
    source = root / "ep-diffusers"
    tokenizer = save_tokenizer(source / "tokenizer")
    pipeline = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD15_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L, bos_token_id=tokenizer.bos_token_id,
                                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)),
        tokenizer=tokenizer, scheduler=make_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(torch.float16)
    pipeline.save_pretrained(source, safe_serialization=True)
    write_sd15_single_file(source, root / "epiCRealism" / "epicrealism.safetensors")
    source.rename(root / SD_FOLDER)  # the same weights serve as SD, in its diffusers layout
    unet = UNet2DConditionModel.from_pretrained(root / SD_FOLDER, subfolder="unet")
    write_kohya_lora(root / WATERCOLOR_LORA, unet, rank=32, alpha=16.0, names="ldm")
    write_motion_adapter_file(MotionAdapter().to(torch.float16), root / LIGHTNING_FILE, "diffusers")
    MotionAdapter().to(torch.float16).save_pretrained(root / ANIMATELCM_FOLDER, safe_serialization=True)
    write_kohya_lora(root / ANIMATELCM_FOLDER / ANIMATELCM_LORA, unet, rank=64, alpha=64.0, names="diffusers")
    (root / "done").write_text("ok")
    return root


def sharing(context, registry, record) -> None:
    """Parameters and GPU memory of EP + lightningEP as loaded (spatial UNet shared) against the copy that
    UNetMotionModel.from_unet2d makes (its motion modules are random here: only their size matters)."""
    from diffusers import UNetMotionModel

    device = context.device
    idm, vdm = context.load(registry.get("EP")), context.load(registry.get("lightningEP"))
    _sync(device)
    shared_gib = _gib(torch.cuda.memory_allocated, device)
    copied = UNetMotionModel.from_unet2d(idm.parts.unet, None).to(device, context.dtype)
    _sync(device)
    record(event="sharing", parameters_shared=_resident(idm, vdm), parameters_copied=_resident(idm, copied),
           gpu_gib_shared=shared_gib, gpu_gib_copied=_gib(torch.cuda.memory_allocated, device))
    del copied


def _resident(*holders) -> int:
    """Parameters held by the torch modules inside `holders`, each storage counted once."""
    return sum({p.data_ptr(): p.numel() for holder in holders for m in _modules(holder) for p in m.parameters()}.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--compositions", default="IDM_VDM_IDM,basic,IDM,VDM,IDM_VDM")
    parser.add_argument("--pairs", default="watercolor:lightningSD,EP:animatelcm",
                        help="other idm:vdm model pairs, run with IDM_VDM_IDM")
    parser.add_argument("--injection", default="kv:up_blocks.1.attentions.*.attn1+up_blocks.2.attentions.*.attn1,"
                                                   "attention_maps:up_blocks.1.attentions.*.attn1",
                        help="using_attn runs of IDM_VDM_IDM, each features:layer+layer")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--weights", type=Path, default=Path("/tmp/evs-full-size"))
    parser.add_argument("--no-offload-run", dest="offload_run", action="store_false",
                        help="skip the last run, which measures --offload (weights in CPU memory)")
    args = parser.parse_args()
    out = Path(os.environ["OUT"]) / "bench.jsonl" if "OUT" in os.environ else Path(__file__).parent / "results" / "bench.jsonl"

    def record(**fields):
        print(json.dumps(fields), flush=True)
        with open(out, "a") as handle:
            handle.write(json.dumps(fields) + "\n")

    started = time.perf_counter()
    weights = build_weights(args.weights)
    record(event="weights_built", seconds=round(time.perf_counter() - started, 1))

    plugins, registry = load_plugins(), load_registry()
    device = torch.device(args.device)
    context = LoadContext(plugins, registry, WeightSettings([weights]), device, torch.float16)
    clip = make_synthetic_clip(args.frames, 512, 320)
    off = InjectionSettings()
    runs = [(name, "EP", "lightningEP", args.repeats, False, off) for name in args.compositions.split(",")]
    runs += [("IDM_VDM_IDM", *pair.split(":"), 1, False, off) for pair in args.pairs.split(",") if pair]
    for run in args.injection.split(",") if args.injection else []:
        features, layers = run.split(":")
        runs.append(("IDM_VDM_IDM", "EP", "lightningEP", args.repeats, True,
                     InjectionSettings(features=features, layers=tuple(layers.split("+")))))
    for index, (name, idm, vdm, repeats, using_attn, injection) in enumerate(runs):
        spec = Spec(inputs=(InputVideo(Path("synthetic.mp4"), "a red car on a coastal road"),), composition=name,
                    models={"idm": ModelChoice(idm, upscale=2.0), "vdm": ModelChoice(vdm)}, using_attn=using_attn,
                    injection=injection)
        plan = make_plan(spec, registry, plugins)
        started = time.perf_counter()
        needed = load_backends(plan, context)  # the context caches: each model loads once
        _sync(device)
        record(event="loaded", models=[idm, vdm], seconds=round(time.perf_counter() - started, 1),
               parameters_resident=_resident(*needed.values()), gpu_gib=_gib(torch.cuda.memory_allocated, device))
        if index == 0:
            sharing(context, registry, record)
        for repeat in range(repeats):
            record(event="run", composition=name, models=[idm, vdm], repeat=repeat,
                   injection=attrs.asdict(injection) if using_attn else None,
                   **timed_run(plan, needed, clip, spec, plugins, context))
    if args.offload_run and device.type == "cuda":
        del context, needed
        torch.cuda.empty_cache()
        offloading = LoadContext(plugins, registry, WeightSettings([weights]), device, torch.float16, offload=True)
        spec = Spec(inputs=(InputVideo(Path("synthetic.mp4"), "a red car on a coastal road"),),
                    models={"idm": ModelChoice("EP", upscale=2.0), "vdm": ModelChoice("lightningEP")})
        plan = make_plan(spec, registry, plugins)
        needed = load_backends(plan, offloading)
        record(event="loaded", models=["EP", "lightningEP"], offload=True, gpu_gib=_gib(torch.cuda.memory_allocated, device))
        for repeat in range(2):
            record(event="run", composition=plan.composition, models=["EP", "lightningEP"], offload=True, repeat=repeat,
                   **timed_run(plan, needed, clip, spec, plugins, offloading))


def timed_run(plan, backends, clip, spec, plugins, context, keep_outputs: bool = False) -> dict:
    """One clip through encode, the plan's ops and decode, as the runner does it, timed with a sync after each part;
    peak memory per part (and per op, in `ops`). `keep_outputs` adds the final latents and frames under `outputs`."""
    device, placement, chunk = context.device, context.placement, spec.output.decode_chunk
    vae = backends.get("idm", backends.get("vdm")).codec
    _reset_peak(device)
    t0 = time.perf_counter()
    placement.use(vae.module)
    source = encode(vae, clip, chunk).to(device)
    _sync(device)
    t1, encode_peak = time.perf_counter(), _gib(torch.cuda.max_memory_allocated, device)
    denoisers = make_denoisers(plan, backends, spec.inputs[0].prompt, spec.negative_prompt, plugins.catalogue, placement)
    video = VideoRun(spec, plan, backends, denoisers, source, torch.Generator().manual_seed(23), plugins.catalogue, device,
                     placement=placement)
    latents, ops, prepare_s = run_plan(video, plugins.hook)
    t2 = time.perf_counter()
    _reset_peak(device)
    placement.use(vae.module)
    frames = decode(vae, latents, chunk)
    _sync(device)
    t3, decode_peak = time.perf_counter(), _gib(torch.cuda.max_memory_allocated, device)
    op_peaks = [o.peak_memory_bytes / 2**30 for o in ops if o.peak_memory_bytes is not None]
    result = dict(frames=len(frames), output_size=list(frames.shape[-2:]), encode_s=round(t1 - t0, 3),
                  denoise_s=round(t2 - t1, 3), prepare_s=round(prepare_s, 3), decode_s=round(t3 - t2, 3),
                  total_s=round(t3 - t0, 3), plugins=video.report,
                  unet_calls={r: d.calls for r, d in denoisers.items()},
                  ops=[dict(op=o.op, model=o.model, seconds=round(o.seconds, 4), unet_calls=o.unet_calls, shape=list(o.shape),
                            peak_gib=None if o.peak_memory_bytes is None else round(o.peak_memory_bytes / 2**30, 2))
                       for o in ops],
                  finite=bool(torch.isfinite(frames).all()), encode_peak_gib=encode_peak, decode_peak_gib=decode_peak,
                  peak_gib=None if encode_peak is None else round(max([encode_peak, decode_peak, *op_peaks]), 2))
    if keep_outputs:
        result["outputs"] = (latents, frames)
    return result


def _reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gib(measure, device) -> float | None:
    return round(measure(device) / 2**30, 2) if device.type == "cuda" else None


def _modules(value):
    """The torch modules a backend holds, found through its attrs fields."""
    if isinstance(value, torch.nn.Module):
        yield value
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from _modules(getattr(value, field.name))


if __name__ == "__main__":
    main()
