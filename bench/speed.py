"""The seed's example enhance config against what the GPU can do: per op, wall time, FLOPs, share of the measured
matrix-product ceiling and peak memory, for eager and compiled runs, the other compositions beside EVS, a
low-memory setting and a batch of clips.

Full-size SD1.5 + AnimateDiff-Lightning architectures with random fp16 weights in the real file formats
(bench/full_size.py builds them), a synthetic 16-frame 512x320 clip, EP_X2.0 + lightningEP, the seed's settings.
FLOPs are counted once per (model, latent shape) with torch.utils.flop_counter on the eager model and multiplied by
the calls each op made. Every measurement is one JSON line in $OUT/speed.jsonl (or bench/results/speed.jsonl) as it
is taken.

    python bench/speed.py --phases ceiling,levers,pipeline      # one process: eager, compiled, compositions, low memory
    python bench/speed.py --phases restart,batch                # a new process: compiled start from the disk cache, a batch

Phases:
- ceiling: a float16 8192^3 matrix product (median of 10 after 3 warm-ups): the TFLOP/s everything is shared against.
- levers: one guided T2I UNet call (batch 32, 80x128), the motion UNet, one VAE decode chunk, eager, with one change
  at a time (cudnn.benchmark, each SDPA kernel, fused QKV projections, VAE precision).
- pipeline: the example config end to end (first run, then --repeats warm runs) as the variants in VARIANTS.
- restart: the compiled variant in this (new) process, whose first run reads the kernels the pipeline phase left in
  the compile cache; its first run against its warm one is what a new process pays.
- batch: `run_job` over --clips mp4 files with the models loaded once (and compiled when --batch-compile): time to
  first output and clips per hour, outputs written as a user's are; then one clip read, composed and written one
  after the other, against which the batch's overlap of reading and writing with composing shows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import attrs
import torch

from evs_framework.loading import LoadContext, WeightSettings
from evs_framework.planner import make_plan
from evs_framework.plugins import load_plugins
from evs_framework.registry import load_registry
from evs_framework.runner import load_backends
from evs_framework.spec import InputVideo, ModelChoice, OutputOptions, Settings, Spec, StepCacheChoice
from evs_framework.testing.zoo import build_tiny_zoo, make_synthetic_clip

sys.path.insert(0, str(Path(__file__).parent))
from full_size import _gib, _sync, build_weights, timed_run  # noqa: E402

PROMPT = "a red car on a coastal road"


@attrs.frozen
class Variant:
    name: str
    description: str = ""
    composition: str = "IDM_VDM_IDM"
    compile: tuple[str, ...] = ()
    vae_dtype: torch.dtype = torch.float16
    decode_chunk: int | None = None
    offload: bool = False
    cudnn_benchmark: bool = False
    vdm_source_size: bool = False
    step_cache: int | None = None  # the interval of step caching on both UNets (depth 1); None: exact
    settings: dict = attrs.field(factory=dict)


VARIANTS = {
    v.name: v for v in (
        Variant("eager", "eager, float16 VAE, chunks sized to memory (the new defaults)"),
        Variant("before", "eager, float32 VAE, chunks of 8 (the old defaults)", vae_dtype=torch.float32, decode_chunk=8),
        Variant("eager-cudnn", "eager with cudnn.benchmark", cudnn_benchmark=True),
        Variant("basic", "basic composition, eager", composition="basic"),
        Variant("videoelevator", "videoelevator composition, eager", composition="videoelevator"),
        Variant("IDM", "the T2I alone, eager", composition="IDM"),
        Variant("compiled", "torch.compile of both UNets and the VAE, cudnn.benchmark", compile=("idm", "vdm", "vae"),
                cudnn_benchmark=True),
        Variant("low-memory", "--offload, chunks of 1", offload=True, decode_chunk=1),
        Variant("vdm-source-size", "the T2V window at the source size (512x320), ddim re-entry (an inversion)",
                vdm_source_size=True),
        Variant("vdm-source-size-random", "the T2V window at the source size, random re-entry", vdm_source_size=True,
                settings={"idm_invert_mode_2": "random"}),
        Variant("compiled-source-size-random", "compiled, the T2V window at the source size, random re-entry",
                compile=("idm", "vdm", "vae"), cudnn_benchmark=True, vdm_source_size=True,
                settings={"idm_invert_mode_2": "random"}),
        Variant("step-cache-2", "eager, step caching every 2nd step in full (depth 1) on both UNets", step_cache=2),
        Variant("step-cache-3", "eager, step caching every 3rd step in full (depth 1) on both UNets", step_cache=3),
    )
}
PIPELINE_VARIANTS = ",".join(VARIANTS)


class Recorder:
    def __init__(self, out: Path):
        self.out = out

    def __call__(self, **fields):
        line = json.dumps(fields)
        print(line, flush=True)
        with open(self.out, "a") as handle:
            handle.write(line + "\n")


def cuda_ms(fn, warmup: int = 2, repeats: int = 5) -> float:
    """Median wall time of fn() in ms, timed with CUDA events after warm-ups."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def counted_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def ceiling(record) -> float:
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.float16) for _ in range(2))
    ms = cuda_ms(lambda: a @ b, warmup=3, repeats=10)
    tflops = 2 * 8192**3 / ms / 1e9
    record(event="ceiling", matmul="float16 8192^3", ms=round(ms, 3), tflop_per_s=round(tflops, 1))
    return tflops


class FlopTable:
    """FLOPs of one evaluation (one row of a guided batch) of a role's model at a latent shape, counted once on the
    eager model; the VAE's encode and decode of a clip under "encode" and "decode"."""

    def __init__(self, record):
        self.record, self.table = record, {}

    def evaluation(self, backends: dict, role: str, shape) -> int | None:
        key = (role, tuple(shape))
        if key not in self.table:
            backend = self.backends_model(backends, role)
            if backend is None:
                return None  # counted under the eager variants, which run first
            text = backend.encode_prompts([PROMPT])
            x = torch.randn((1, *shape), device=backend.unet.device)
            self.table[key] = counted_flops(lambda: backend.predict(x, 500.0, text))
            self.record(event="flops", role=role, shape=list(shape), tflop=round(self.table[key] / 1e12, 3))
        return self.table[key]

    @staticmethod
    def backends_model(backends, role):
        backend = backends[role]
        eager = getattr(backend.unet, "_compiled_call_impl", None) is None
        return backend if eager and backend.unet.device.type == "cuda" else None


def op_rows(result: dict, backends: dict, flops: FlopTable, peak_tflops: float) -> list[dict]:
    rows = []
    for op in result["ops"]:
        per = flops.evaluation(backends, op["model"], op["shape"]) if op["unet_calls"] else 0
        work = None if per is None else per * op["unet_calls"]
        rows.append({**op, "tflop": None if work is None else round(work / 1e12, 2),
                     "share": None if work is None or not op["seconds"] else round(work / 1e12 / op["seconds"] / peak_tflops, 3)})
    return rows


def codec_flops(backends, clip, chunk, latents_shape) -> tuple[int, int]:
    from evs_framework.runner import decode, encode

    codec = backends["idm"].codec
    encoded = counted_flops(lambda: encode(codec, clip, chunk))
    decoded = counted_flops(lambda: decode(codec, torch.randn(latents_shape, device=codec.module.device), chunk))
    return encoded, decoded


def context_for(variant: Variant, plugins, registry, weights, device) -> LoadContext:
    return LoadContext(plugins, registry, WeightSettings([weights]), device, torch.float16, variant.vae_dtype,
                       offload=variant.offload, compile=variant.compile)


def spec_for(variant: Variant) -> Spec:
    cache = None if variant.step_cache is None else StepCacheChoice(variant.step_cache)
    return Spec(inputs=(InputVideo(Path("synthetic.mp4"), PROMPT),), composition=variant.composition,
                models={"idm": ModelChoice("EP", upscale=2.0, cache=cache),
                        "vdm": ModelChoice("lightningEP", source_size=variant.vdm_source_size, cache=cache)},
                settings=Settings(**variant.settings), output=OutputOptions(decode_chunk=variant.decode_chunk))


def compare(reference, outputs) -> dict:
    """How far a variant's final latents and frames are from the eager run's (same seed)."""
    (ref_latents, ref_frames), (latents, frames) = reference, outputs
    diff = (latents.float() - ref_latents.float()).flatten()
    mse = float(((frames - ref_frames) ** 2).mean())
    return dict(latents_relative_l2=float(diff.norm() / ref_latents.float().norm()),
                latents_max_abs=float(diff.abs().max()),
                frames_max_abs=float((frames - ref_frames).abs().max()),
                frames_psnr_db=float("inf") if mse == 0 else round(10 * torch.log10(torch.tensor(4.0 / mse)).item(), 2))


def pipeline(names, args, plugins, registry, weights, clip, record, peak_tflops) -> None:
    """Each variant: load (compiling in place when asked), a first run, then warm runs; IDM_VDM_IDM variants are
    compared with the eager run's outputs."""
    flops, reference, loaded, backends = FlopTable(record), None, None, None
    for name in names:
        variant = VARIANTS[name]
        torch.backends.cudnn.benchmark = variant.cudnn_benchmark
        key = (variant.vae_dtype, variant.offload, variant.compile)
        if key != loaded:  # models load once per precision and placement, as a batch holds them
            backends = context = None
            torch.cuda.empty_cache()
            context, loaded = context_for(variant, plugins, registry, weights, args.device_obj), key
        spec = spec_for(variant)
        plan = make_plan(spec, registry, plugins)
        started = time.perf_counter()
        backends = load_backends(plan, context)
        _sync(context.device)
        record(event="loaded", variant=name, seconds=round(time.perf_counter() - started, 2),
               resident_gib=_gib(torch.cuda.memory_allocated, context.device))
        for repeat in range(1 + args.repeats):
            result = timed_run(plan, backends, clip, spec, plugins, context, keep_outputs=True)
            latents, frames = result.pop("outputs")
            latents = latents.cpu()
            result["ops"] = op_rows(result, backends, flops, peak_tflops)
            if "decode" not in flops.table and not variant.compile and not variant.offload:
                flops.table["encode"], flops.table["decode"] = codec_flops(backends, clip, spec.output.decode_chunk,
                                                                           latents.shape)
                record(event="flops", part="vae", encode_tflop=round(flops.table["encode"] / 1e12, 2),
                       decode_tflop=round(flops.table["decode"] / 1e12, 2))
            work = sum(op["tflop"] or 0 for op in result["ops"]) * 1e12
            work += flops.table.get("encode", 0) + flops.table.get("decode", 0)
            guard = None
            if variant.composition == "IDM_VDM_IDM":
                if reference is None:
                    reference = (latents, frames)
                elif name != "eager":
                    guard = compare(reference, (latents, frames))
            record(event="pipeline", variant=name, description=variant.description, composition=variant.composition, repeat=repeat,
                   first=repeat == 0, tflop=round(work / 1e12, 1),
                   share=round(work / 1e12 / result["total_s"] / peak_tflops, 3), against_eager=guard, **result)
    torch.backends.cudnn.benchmark = False


def levers(args, plugins, registry, weights, record, peak_tflops) -> None:
    """One change at a time on single calls, eager."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    context = context_for(Variant("eager"), plugins, registry, weights, args.device_obj)
    spec = spec_for(Variant("eager"))
    backends = load_backends(make_plan(spec, registry, plugins), context)
    idm, vdm = backends["idm"], backends["vdm"]
    text = idm.encode_prompts(["", PROMPT])
    calls = {
        "idm guided 16x4x80x128": (lambda: idm.predict(torch.randn(2, 16, 4, 80, 128, device="cuda"), 500.0, text)),
        "vdm 16x4x80x128": (lambda: vdm.predict(torch.randn(1, 16, 4, 80, 128, device="cuda"), 500.0, text[1:])),
        "vdm 16x4x40x64": (lambda: vdm.predict(torch.randn(1, 16, 4, 40, 64, device="cuda"), 500.0, text[1:])),
    }
    work = {name: counted_flops(fn) for name, fn in calls.items()}

    def measure(lever, name, fn, flop):
        torch.cuda.reset_peak_memory_stats()
        ms = cuda_ms(fn)
        record(event="lever", lever=lever, call=name, ms=round(ms, 2), tflop=round(flop / 1e12, 2),
               share=round(flop / 1e9 / ms / peak_tflops, 3), peak_gib=_gib(torch.cuda.max_memory_allocated, args.device_obj))

    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        for name, fn in calls.items():
            measure(f"eager, cudnn.benchmark={benchmark}", name, fn, work[name])
    for kernel in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with sdpa_kernel([kernel]):
                measure(f"sdpa {kernel.name}", "idm guided 16x4x80x128", calls["idm guided 16x4x80x128"],
                        work["idm guided 16x4x80x128"])
        except RuntimeError as exc:
            record(event="lever", lever=f"sdpa {kernel.name}", error=str(exc)[:200])
    idm.unet.fuse_qkv_projections()
    measure("fused qkv projections", "idm guided 16x4x80x128", calls["idm guided 16x4x80x128"], work["idm guided 16x4x80x128"])
    idm.unet.unfuse_qkv_projections()
    vae = idm.codec.module
    latents = torch.randn(4, 4, 80, 128, device="cuda") / vae.config.scaling_factor
    decoded = {}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        vae.to(dtype)
        decode = lambda: vae.decode(latents.to(dtype)).sample  # noqa: E731
        measure(f"vae {str(dtype).removeprefix('torch.')}", "decode 4 frames 1024x640", decode, counted_flops(decode))
        decoded[dtype] = decode().float()
    for dtype in (torch.float16, torch.bfloat16):
        error = decoded[dtype] - decoded[torch.float32]
        record(event="vae_precision", dtype=str(dtype).removeprefix("torch."), max_abs=float(error.abs().max()),
               relative_l2=float(error.norm() / decoded[torch.float32].norm()), finite=bool(torch.isfinite(decoded[dtype]).all()))
    vae.to(torch.float16)
    torch.backends.cudnn.benchmark = False


KERNEL_KINDS = (  # kernel-name fragments, checked in this order
    ("attention", ("sdpa", "fmha", "flash", "attention")),
    ("convolution", ("fprop", "conv", "dgrad")),
    ("matrix product", ("gemm", "nvjet", "xmma", "cutlass", "wgmma")),
)
FLOP_KINDS = {"attention": "attention", "convolution": "convolution", "mm": "matrix product", "addmm": "matrix product",
              "bmm": "matrix product", "baddbmm": "matrix product"}


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, fragments in KERNEL_KINDS if any(f in lowered for f in fragments)), "other")


def profile(args, plugins, registry, weights, record, peak_tflops) -> None:
    """Where one guided T2I UNet call (eager) spends its GPU time and FLOPs, by kind of kernel; and what replaying the
    eager kernels as a CUDA graph (no launch gaps) gains over launching them."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from torch.utils.flop_counter import FlopCounterMode

    context = context_for(Variant("eager"), plugins, registry, weights, args.device_obj)
    backends = load_backends(make_plan(spec_for(Variant("eager")), registry, plugins), context)
    idm, vdm = backends["idm"], backends["vdm"]
    text = idm.encode_prompts(["", PROMPT])
    calls = {"idm guided 16x4x80x128": (idm, torch.randn(2, 16, 4, 80, 128, device="cuda"), text),
             "vdm 16x4x40x64": (vdm, torch.randn(1, 16, 4, 40, 64, device="cuda"), text[1:])}
    for name, (backend, x, conditioning) in calls.items():
        def call():
            return backend.predict(x, 500.0, conditioning)

        call()
        with FlopCounterMode(display=False) as counter:
            call()
        flops = {}
        for op, count in counter.get_flop_counts()["Global"].items():
            kind = next((k for fragment, k in FLOP_KINDS.items() if fragment in str(op)), "other")
            flops[kind] = flops.get(kind, 0) + count
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        times = {}
        for event in prof.key_averages():
            spent = getattr(event, "self_device_time_total", 0) or 0
            if spent and getattr(event, "device_type", DeviceType.CUDA) == DeviceType.CUDA:
                times[kernel_kind(event.key)] = times.get(kernel_kind(event.key), 0) + spent / 1000
        record(event="profile", call=name, kernel_ms={k: round(v, 1) for k, v in times.items()},
               tflop={k: round(v / 1e12, 2) for k, v in flops.items()},
               share={k: round(flops.get(k, 0) / 1e9 / times[k] / peak_tflops, 3) for k in times if flops.get(k)})
        eager_ms = cuda_ms(call)
        graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                call()
        torch.cuda.current_stream().wait_stream(stream)
        try:
            with torch.cuda.graph(graph):
                call()
        except RuntimeError as exc:
            record(event="lever", lever="cuda graph of the eager kernels", call=name, error=str(exc)[:300])
            continue
        record(event="lever", lever="cuda graph of the eager kernels", call=name, ms=round(cuda_ms(graph.replay), 2),
               eager_ms=round(eager_ms, 2))


def ffmpeg_found() -> bool:
    import imageio_ffmpeg

    try:
        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError:
        return False


def batch(args, registry, weights, record) -> None:
    """--clips clips with the models loaded once (and compiled with --batch-compile), timed from the phase's start,
    so the first output's time includes loading (and compiling). Through run_job, reading and writing mp4 files as a
    user's run does, where ffmpeg is found; else the same clips in memory (encode, plan, decode), which `io` says."""
    from evs_framework.hookspecs import hookimpl
    from evs_framework.io.video_io import write_video
    from evs_framework.runner import run_job

    started, done = time.perf_counter(), []

    def finished(error=None):
        done.append(time.perf_counter() - started)
        record(event="batch_video", index=len(done), since_start_s=round(done[-1], 2), error=error)

    class Timing:
        @hookimpl
        def video_done(self, result):
            finished(result.error)

    plugins = load_plugins(extra=[Timing()])
    parts = ("idm", "vdm", "vae") if args.batch_compile else ()
    torch.backends.cudnn.benchmark = args.batch_compile
    context = LoadContext(plugins, registry, WeightSettings([weights]), args.device_obj, torch.float16, torch.float16,
                          compile=parts)
    clips = [make_synthetic_clip(args.frames, *args.clip_size, seed=index) for index in range(args.clips)]
    spec = spec_for(Variant("eager"))
    with_files = ffmpeg_found()
    if with_files:
        folder = Path(args.batch_dir)
        inputs = tuple(InputVideo(write_video(folder / "inputs" / f"clip{i:03d}.mp4", clip, 8), PROMPT)
                       for i, clip in enumerate(clips))
        spec = attrs.evolve(spec, inputs=inputs, output=OutputOptions(dir=folder / "outputs", side_by_side=False))
        started = time.perf_counter()
        results = run_job(spec, make_plan(spec, registry, plugins), context, progress=False, overwrite=True)
        failed = sum(bool(r.error) for r in results)
    else:
        started = time.perf_counter()
        plan = make_plan(spec, registry, plugins)
        backends = load_backends(plan, context)
        for clip in clips:
            result = timed_run(plan, backends, clip, spec, plugins, context)
            finished(None if result["finite"] else "not finite")
        failed = 0
    wall = time.perf_counter() - started
    steady = statistics.median(b - a for a, b in zip(done[1:], done[2:])) if len(done) > 2 else None
    record(event="batch", clips=len(clips), failed=failed, compiled=list(parts), io=with_files,
           wall_s=round(wall, 1), first_output_s=round(done[0], 2), clips_per_hour=round(3600 * len(clips) / wall, 1),
           steady_clip_s=None if steady is None else round(steady, 2),
           steady_clips_per_hour=None if steady is None else round(3600 / steady, 1))
    if with_files:
        serial_parts(spec, registry, plugins, context, record)
    torch.backends.cudnn.benchmark = False


def serial_parts(spec, registry, plugins, context, record, repeats: int = 3) -> None:
    """One clip's reading, composing and writing, one after the other, with the models the batch loaded: what a clip
    costs when nothing overlaps (the batch reads the next clip and writes the last while one composes)."""
    from evs_framework.identity import weight_fingerprints
    from evs_framework.runner import compose_clip, read_clip, video_identity, write_outputs

    plan = make_plan(spec, registry, plugins)
    backends = load_backends(plan, context)  # already loaded: the context keeps them
    item = spec.inputs[0]
    identity = video_identity(spec, item, weight_fingerprints(plan, context), context)
    parts = {"read": [], "compose": [], "write": []}
    for _ in range(repeats):
        began = time.perf_counter()
        clip = read_clip(spec, item)
        read_at = time.perf_counter()
        made = compose_clip(spec, plan, backends, context, item, clip, False)
        _sync(context.device)
        composed_at = time.perf_counter()
        write_outputs(spec, context, item, "serial-timing", clip, made, identity, began)
        written_at = time.perf_counter()
        parts["read"].append(read_at - began)
        parts["compose"].append(composed_at - read_at)
        parts["write"].append(written_at - composed_at)
    medians = {name: round(statistics.median(times), 3) for name, times in parts.items()}
    record(event="batch_serial_parts", **{f"{name}_s": value for name, value in medians.items()},
           serial_clip_s=round(sum(medians.values()), 3))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phases", default="ceiling,levers,pipeline")
    parser.add_argument("--variants", default=PIPELINE_VARIANTS, help=f"comma-separated, of: {PIPELINE_VARIANTS}")
    parser.add_argument("--repeats", type=int, default=2, help="warm runs after the first")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--clips", type=int, default=8, help="clips in the batch phase")
    parser.add_argument("--batch-compile", action="store_true")
    parser.add_argument("--batch-dir", default="/tmp/evs-batch")
    parser.add_argument("--weights", type=Path, default=Path("/tmp/evs-full-size"))
    parser.add_argument("--ceiling", type=float, default=None, help="TFLOP/s, when the ceiling phase is not run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="the tests' tiny random models and a 64x48 clip instead (a smoke test of this script, on CPU)")
    args = parser.parse_args()
    args.device_obj = torch.device(args.device)
    out = Path(os.environ["OUT"]) / "speed.jsonl" if "OUT" in os.environ else Path(__file__).parent / "results" / "speed.jsonl"
    record = Recorder(out)
    phases = args.phases.split(",")
    cuda = args.device_obj.type == "cuda"
    record(event="environment", gpu=torch.cuda.get_device_name() if cuda else None, torch=torch.__version__,
           diffusers=__import__("diffusers").__version__, phases=phases, date=time.strftime("%Y-%m-%d"))
    started = time.perf_counter()
    weights = build_tiny_zoo(args.weights) if args.tiny else build_weights(args.weights)
    record(event="weights_built", seconds=round(time.perf_counter() - started, 1))
    plugins, registry = load_plugins(), load_registry()
    peak = ceiling(record) if "ceiling" in phases else args.ceiling or 790.0
    args.clip_size = (64, 48) if args.tiny else (512, 320)
    clip = make_synthetic_clip(args.frames, *args.clip_size)
    if "levers" in phases:
        levers(args, plugins, registry, weights, record, peak)
    if "profile" in phases:
        profile(args, plugins, registry, weights, record, peak)
    if "pipeline" in phases:
        pipeline(args.variants.split(","), args, plugins, registry, weights, clip, record, peak)
    if "restart" in phases:
        pipeline(["compiled"], args, plugins, registry, weights, clip, record, peak)
    if "batch" in phases:
        batch(args, registry, weights, record)


if __name__ == "__main__":
    main()
