"""A whole job: check every input, load the models once, then process the videos one by one.

Each finished video is written at once (mp4, side-by-side mp4, sidecar JSON), atomically, so a failure
later in the batch never loses it. A video that fails with an EVS error is reported and the batch goes on;
rerunning the same spec skips videos whose outputs already match it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import attrs
import structlog
import torch
from tqdm import tqdm

from evs_framework import video_io
from evs_framework.denoiser import Denoiser
from evs_framework.errors import EVSError, NumericalError, VideoError
from evs_framework.executor import OpRecord, execute
from evs_framework.loading import LoadContext
from evs_framework.placement import Placement
from evs_framework.plan import DenoiseOp, Plan
from evs_framework.spec import InputVideo, Spec, spec_to_data
from evs_framework.vae import decode_latents, encode_frames

log = structlog.get_logger(__name__)
PACKAGES = ("evs-framework", "torch", "diffusers", "transformers", "pluggy", "imageio-ffmpeg")


@attrs.frozen
class VideoResult:
    source: Path
    prompt: str
    output: Path | None
    sidecar: Path | None
    seconds: float
    error: str | None = None
    skipped: bool = False
    unet_calls: dict = attrs.Factory(dict)


def output_stems(spec: Spec) -> list[str]:
    """`{video stem}.{composition}`, with -2, -3... where two inputs share a stem."""
    stems, seen = [], {}
    for item in spec.inputs:
        stem = f"{item.video.stem}.{spec.composition_name}"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{item.video.stem}-{seen[stem]}.{spec.composition_name}")
    return stems


def job_key(spec: Spec, item: InputVideo) -> str:
    """What an output depends on; a rerun skips a video whose sidecar holds the same key."""
    data = spec_to_data(attrs.evolve(spec, inputs=(item,)))
    data.pop("output")
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def check_inputs(spec: Spec) -> None:
    """Every input video exists and decodes, before any weight is loaded; all failures in one error."""
    problems = []
    for item in spec.inputs:
        try:
            video_io.probe_video(item.video)
        except VideoError as exc:
            problems.append(str(exc))
    if problems:
        raise VideoError(f"{len(problems)} input video(s) cannot be used:\n" + "\n".join(f"  - {p}" for p in problems))


def load_backends(plan: Plan, context: LoadContext) -> dict:
    return {role: context.load(model.entry) for role, model in plan.models.items()}


def make_denoisers(plan: Plan, backends: dict, prompt: str, negative_prompt: str,
                   placement: Placement | None = None) -> dict[str, Denoiser]:
    """One denoiser per role, conditioned on this video's prompt (and the negative prompt for guidance)."""
    placement = placement or Placement(torch.device("cpu"))
    denoisers = {}
    for role, backend in backends.items():
        placement.use(backend.text_encoder)
        text = backend.encode_prompts([negative_prompt, prompt]).float()
        denoisers[role] = Denoiser(backend, plan.models[role].schedule.train, text, plan.models[role].guidance,
                                   prepare=functools.partial(placement.use, backend.unet))
    return denoisers


def _stage_timings(records: list[OpRecord]) -> list[dict]:
    stages: dict[int, dict] = {}
    for r in records:
        stage = stages.setdefault(r.stage, {"stage": r.stage + 1, "model": r.model, "seconds": 0.0, "unet_calls": 0})
        stage["seconds"] += r.seconds
        stage["unet_calls"] += r.unet_calls
    return list(stages.values())


@attrs.define
class VideoRun:
    """One video's run as plugins see it (video_start / video_end hooks); `report` is theirs to fill, and lands in the
    sidecar under `plugins`."""

    spec: Spec
    plan: Plan
    backends: dict
    denoisers: dict[str, Denoiser]
    source: torch.Tensor  # clean latents, (frames, channels, h, w), before any latent op
    generator: torch.Generator
    catalogue: object
    device: torch.device
    report: dict = attrs.Factory(dict)
    state: dict = attrs.Factory(dict)  # plugins' own per-video state, by plugin name


class _StepBar:
    """Progress over all denoising steps of a video; also forwards each step to the step hooks."""

    def __init__(self, run: VideoRun, hook, enabled: bool, label: str):
        total = sum(op.steps for op in run.plan.ops if isinstance(op, DenoiseOp))
        self.bar = tqdm(total=total, desc=label, unit="step", leave=False, disable=None if enabled else True)
        self.run, self.hook = run, hook

    def step_start(self, op, step, sigma):
        self.hook.step_start(video=self.run, op=op, step=step, sigma=sigma)

    def step_end(self, op, step, sigma, latents):
        self.bar.update(1)
        self.bar.set_postfix(model=op.model, sigma=f"{sigma:.3f}")
        self.hook.step_end(video=self.run, op=op, step=step, sigma=sigma, latents=latents)


def run_plan(run: VideoRun, hook, progress: bool = False, label: str = "") -> tuple[torch.Tensor, list[OpRecord], float]:
    """The plugins' video_start, the plan's ops, then video_end (also on failure): (clean latents, op records,
    seconds spent in video_start)."""
    steps = _StepBar(run, hook, progress, label)
    started = time.perf_counter()
    try:
        hook.video_start(video=run)
        prepare_seconds = time.perf_counter() - started
        latents, records = execute(run.plan, run.denoisers, run.source, run.catalogue, run.generator, observer=steps)
    finally:
        steps.bar.close()
        hook.video_end(video=run)
    return latents, records, prepare_seconds


def process_video(spec: Spec, plan: Plan, backends: dict, context: LoadContext, item: InputVideo, stem: str,
                  progress: bool) -> VideoResult:
    started = time.perf_counter()
    clip = video_io.read_video(item.video, max_frames=spec.video.max_frames, stride=spec.video.stride, fit=spec.video.fit,
                               size=spec.video.size)
    codec = backends.get("idm", backends.get("vdm")).vae
    chunk = spec.output.decode_chunk
    placement = context.placement
    placement.use(codec)
    source = encode_frames(codec, clip.frames, chunk).to(context.device)
    denoisers = make_denoisers(plan, backends, item.prompt, spec.negative_prompt, placement)
    generator = torch.Generator("cpu").manual_seed(spec.seed)
    run = VideoRun(spec, plan, backends, denoisers, source, generator, context.plugins.catalogue, context.device)
    latents, records, prepare_seconds = run_plan(run, context.plugins.hook, progress, item.video.name)
    placement.use(codec)
    frames = decode_latents(codec, latents, chunk)
    if not torch.isfinite(frames).all():
        raise NumericalError(f"the VAE decoded NaN or infinite pixels for {item.video.name}; "
                             f"decode in float32 (--vae-dtype float32)")

    folder = spec.output.dir
    output = video_io.write_video(folder / f"{stem}.mp4", frames, clip.fps)
    if spec.output.side_by_side:
        video_io.write_video(folder / f"{stem}.side_by_side.mp4", video_io.side_by_side([clip.frames, frames]), clip.fps)
    calls = {role: d.calls for role, d in denoisers.items()}
    seconds = time.perf_counter() - started
    sidecar = video_io.write_json(folder / f"{stem}.json", {
        "job_key": job_key(spec, item),
        "source": str(item.video),
        "prompt": item.prompt,
        "seed": spec.seed,
        "composition": plan.composition,
        "models": {role: m.entry.name for role, m in plan.models.items()},
        "frames": int(frames.shape[0]),
        "size": [int(frames.shape[-1]), int(frames.shape[-2])],
        "fps": clip.fps,
        "input_notes": list(clip.notes),
        "plan_notes": list(plan.notes),
        "seconds": round(seconds, 3),
        "unet_calls": calls,
        "prepare_seconds": round(prepare_seconds, 3),  # plugins' video_start (a feature capture pass, say)
        "stages": _stage_timings(records),
        "plugins": run.report,
        "ops": [attrs.asdict(r) for r in records],
        "device": str(context.device),
        "offload": context.offload,
        "dtype": str(context.dtype).removeprefix("torch."),
        "versions": package_versions(),
        "spec": spec_to_data(attrs.evolve(spec, inputs=(item,))),
    })
    return VideoResult(item.video, item.prompt, output, sidecar, seconds, unet_calls=calls)


def _already_done(spec: Spec, item: InputVideo, stem: str) -> bool:
    sidecar = spec.output.dir / f"{stem}.json"
    if not (sidecar.is_file() and (spec.output.dir / f"{stem}.mp4").is_file()):
        return False
    try:
        return json.loads(sidecar.read_text()).get("job_key") == job_key(spec, item)
    except (OSError, json.JSONDecodeError):
        return False


def run_job(spec: Spec, plan: Plan, context: LoadContext, progress: bool = True, overwrite: bool = False
            ) -> list[VideoResult]:
    check_inputs(spec)
    work = list(zip(spec.inputs, output_stems(spec)))
    done = [] if overwrite else [(item, stem) for item, stem in work if _already_done(spec, item, stem)]
    results = [VideoResult(item.video, item.prompt, spec.output.dir / f"{stem}.mp4", spec.output.dir / f"{stem}.json",
                           0.0, skipped=True) for item, stem in done]
    for result in results:
        log.info("video_skipped", source=str(result.source), output=str(result.output), reason="outputs match this spec")
    todo = [pair for pair in work if pair not in done]
    if not todo:
        return results
    backends = load_backends(plan, context)
    hook = context.plugins.hook
    for item, stem in tqdm(todo, desc="videos", unit="video", disable=None if progress else True):
        hook.plan_ready(plan=plan, video=item.video)
        try:
            result = process_video(spec, plan, backends, context, item, stem, progress)
        except (EVSError, torch.OutOfMemoryError) as exc:
            result = VideoResult(item.video, item.prompt, None, None, 0.0, error=str(exc))
            log.error("video_failed", source=str(item.video), error=str(exc))
        else:
            log.info("video_done", source=str(item.video), output=str(result.output), seconds=round(result.seconds, 2),
                     unet_calls=result.unet_calls)
        hook.video_done(result=result)
        results.append(result)
    return results
