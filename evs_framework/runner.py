"""A whole job: check every input, load the models once, then process the videos one by one.

Each finished video is written at once (mp4, side-by-side mp4, sidecar JSON), atomically, so a failure
later in the batch never loses it. A video that fails with an EVS error is reported and the batch goes on;
rerunning the same spec skips videos whose outputs already match it.
"""

from __future__ import annotations

import functools
import json
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import attrs
import structlog
import torch
from tqdm import tqdm

from evs_framework import output_guard
from evs_framework.acceleration import compile_backends
from evs_framework.context_windows import framed
from evs_framework.denoiser import Denoiser
from evs_framework.errors import EVSError, LoadError, NumericalError, VideoError, WeightsError
from evs_framework.executor import OpRecord, execute, unplanned_calls
from evs_framework.failures import failure, format_traceback, out_of_memory
from evs_framework.identity import (RunIdentity, changed_parts, package_versions, run_identity, video_seed,
                                   weight_fingerprints)
from evs_framework.io import video_io
from evs_framework.io.vae import frames_per_call
from evs_framework.job_report import JobProgress, ProcessSummary, job_report, write_job_report
from evs_framework.latent_space import VAE_ROUND_TRIP, check_declared
from evs_framework.loading import LoadContext
from evs_framework.placement import Placement
from evs_framework.plan import ConvertOp, DenoiseOp, Plan
from evs_framework.planner import video_plans
from evs_framework.preflight import input_problems
from evs_framework.sharding import Shard, check_shared_folder
from evs_framework.spec import InputVideo, Spec, spec_to_data

log = structlog.get_logger(__name__)


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
    skip_reason: str | None = None  # set when another process holds the video's lock; None: outputs already match
    process: int | None = None  # the index of the process that took it; None: done by an earlier run


def output_stems(spec: Spec) -> list[str]:
    """`{video stem}.{composition}` per input; where stems repeat, -2, -3... picked so that no two inputs share a
    name, not even with an input whose own stem ends that way (`clip`, `clip`, `clip-2`)."""
    natural = [f"{item.video.stem}.{spec.composition_name}" for item in spec.inputs]
    reserved, taken, stems = set(natural), set(), []
    for item, stem in zip(spec.inputs, natural):
        candidate, counter = stem, 2
        while candidate in taken or (candidate != stem and candidate in reserved):
            candidate, counter = f"{item.video.stem}-{counter}.{spec.composition_name}", counter + 1
        taken.add(candidate)
        stems.append(candidate)
    return stems


def video_identity(spec: Spec, item: InputVideo, weights: dict, context: LoadContext):
    """What this video's output depends on (evs_framework.identity); a rerun skips a video whose sidecar has its key."""
    return run_identity(spec_to_data(attrs.evolve(spec, inputs=(item,))), item.video, weights, context)


def check_inputs(spec: Spec, plan: Plan | None = None) -> None:
    """Every input video exists, decodes and fits the plan's models, before any weight is loaded; all failures in one
    error."""
    problems = input_problems(spec, plan)
    if problems:
        raise VideoError(f"{len(problems)} input video(s) cannot be used:\n" + "\n".join(f"  - {p}" for p in problems))


def load_backends(plan: Plan, context: LoadContext) -> dict:
    """Each role's backend; its VAE must agree with the latent space its registry preset declares (plans rely on it)."""
    backends = {role: context.load(model.entry) for role, model in plan.models.items()}
    problems = [p for role, model in plan.models.items() if (p := check_declared(model.entry, backends[role].codec.space))]
    if problems:
        raise WeightsError("; ".join(problems))
    if context.compile:
        compile_backends(backends, context.compile)
    return backends


def negative_prompts(plan: Plan, negative_prompt: str | None) -> dict[str, str]:
    """Each role's negative prompt: the one given, or (None) its model's preset's."""
    return {role: model.entry.preset.negative_prompt if negative_prompt is None else negative_prompt
            for role, model in plan.models.items()}


def video_negative_prompt(spec: Spec, item: InputVideo) -> str | None:
    """The negative prompt a video asks for: its own (a manifest's), else the spec's; None: each model's preset's."""
    return spec.negative_prompt if item.negative_prompt is None else item.negative_prompt


def make_denoisers(plan: Plan, backends: dict, prompt: str, negative_prompt: str | None, catalogue,
                   placement: Placement | None = None) -> dict[str, Denoiser]:
    """One denoiser per role, conditioned on this video's prompt (and for guidance on the negative prompt given, or
    when None on its model's own)."""
    placement = placement or Placement(torch.device("cpu"))
    negatives = negative_prompts(plan, negative_prompt)
    denoisers = {}
    for role, backend in backends.items():
        model = plan.models[role]
        placement.use(backend.text_encoder)
        conditioning = backend.encode_prompts([negatives[role], prompt])
        denoisers[role] = Denoiser(backend, model.schedule.train, conditioning, model.guidance,
                                   catalogue.get("prediction_types", model.entry.preset.prediction),
                                   prepare=functools.partial(placement.use, backend.unet), context=model.context)
    return denoisers


def _stage_timings(records: list[OpRecord]) -> list[dict]:
    stages: dict[int, dict] = {}
    for r in records:
        stage = stages.setdefault(r.stage, {"stage": r.stage, "model": r.model, "seconds": 0.0, "unet_calls": 0})
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
    state: dict = attrs.Factory(dict)  # per-video state of plugins, samplers and transfers, by plugin name
    placement: Placement | None = None  # where weights wait (--offload); None: all on `device`


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


def encode(codec, frames: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """Frames (F, 3, H, W) to latents, `chunk` frames a VAE call (None: sized to memory, io.vae.frames_per_call)."""
    return codec.encode(frames, frames_per_call(chunk, codec.module, *frames.shape[-2:]))


def decode(codec, latents: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """Latents to frames, `chunk` frames a VAE call (None: sized to memory for the decoded size)."""
    height, width = (side * codec.space.spatial for side in latents.shape[-2:])
    return codec.decode(latents, frames_per_call(chunk, codec.module, height, width))


def convert_latents(run: VideoRun, op: ConvertOp, latents: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """A ConvertOp: the plan's converter, or the VAE round trip through the two models' codecs."""
    source, target = run.backends[op.source_model], run.backends[op.model]
    if op.converter != VAE_ROUND_TRIP:
        return run.catalogue.get("latent_converters", op.converter).convert(latents, source, target)
    placement = run.placement or Placement(run.device)
    placement.use(source.codec.module)
    frames = decode(source.codec, latents, chunk)
    placement.use(target.codec.module)
    return encode(target.codec, frames, chunk).to(latents.device)


def run_plan(run: VideoRun, hook, progress: bool = False, label: str = "") -> tuple[torch.Tensor, list[OpRecord], float]:
    """The plugins' video_start, the plan's ops, then video_end (also on failure): (clean latents, op records,
    seconds spent in video_start)."""
    steps = _StepBar(run, hook, progress, label)
    started = time.perf_counter()
    try:
        hook.video_start(video=run)
        prepare_seconds = time.perf_counter() - started
        convert = functools.partial(convert_latents, run, chunk=run.spec.output.decode_chunk)
        latents, records = execute(run.plan, run.denoisers, run.source, run.catalogue, run.generator, observer=steps,
                                   video_state=run.state, convert=convert)
    finally:
        steps.bar.close()
        hook.video_end(video=run)
    return latents, records, prepare_seconds


@attrs.frozen
class Synthesis:
    """What a composition made of one clip's frames."""

    frames: torch.Tensor  # (F, 3, H, W) float32 in [-1, 1], on the CPU
    plan: Plan  # the plan as run: counted for the clip's length (context_windows.framed)
    records: list[OpRecord]
    unet_calls: dict[str, int]
    prepare_seconds: float  # the plugins' video_start
    report: dict  # the plugins' report (VideoRun.report)
    seconds: float = 0.0  # encode, the plan's ops and decode


def synthesize(spec: Spec, plan: Plan, backends: dict, context: LoadContext, frames: torch.Tensor, prompt: str,
               negative_prompt: str | None, seed: int, progress: bool = False, video: Path | None = None) -> Synthesis:
    """Frames (F, 3, H, W) in [-1, 1] through the plan: encode, the plan's ops with the video's own noise, decode.
    `video` is the input file, if any (for the progress bar)."""
    started = time.perf_counter()
    chunk, placement, catalogue = spec.output.decode_chunk, context.placement, context.plugins.catalogue
    label = video.name if video else ""
    encoder = backends[plan.source_model].codec
    placement.use(encoder.module)
    source = encode(encoder, frames, chunk).to(context.device)
    plan = framed(plan, source.shape[0])
    denoisers = make_denoisers(plan, backends, prompt, negative_prompt, catalogue, placement)
    generator = torch.Generator("cpu").manual_seed(seed)
    run = VideoRun(spec, plan, backends, denoisers, source, generator, catalogue, context.device, placement=placement)
    latents, records, prepare_seconds = run_plan(run, context.plugins.hook, progress, label)
    decoder = backends[plan.output_model].codec
    placement.use(decoder.module)
    decoded = decode(decoder, latents, chunk)
    if not torch.isfinite(decoded).all():
        dtype = getattr(decoder.module, "dtype", context.vae_dtype)
        precision = str(dtype).removeprefix("torch.")
        fix = "decode in float32 (--vae-dtype float32)" if dtype in (torch.float16, torch.bfloat16) else \
            "the VAE's weights may be damaged: download them again"
        raise NumericalError(f"the VAE decoded NaN or infinite pixels for {label or 'the clip'} in {precision}; {fix}")
    return Synthesis(decoded, plan, records, {role: d.calls for role, d in denoisers.items()}, prepare_seconds,
                     run.report, time.perf_counter() - started)


def read_clip(spec: Spec, item: InputVideo) -> video_io.Clip:
    """The input video as the spec reads it (stride, frame cap, size, fit)."""
    return video_io.read_video(item.video, max_frames=spec.video.max_frames, stride=spec.video.stride,
                               fit=spec.video.fit, size=spec.video.size)


def compose_clip(spec: Spec, plan: Plan, backends: dict, context: LoadContext, item: InputVideo, clip,
                 progress: bool) -> Synthesis:
    """One input's clip through the plan, with the video's prompts and its own seed."""
    return synthesize(spec, plan, backends, context, clip.frames, item.prompt, video_negative_prompt(spec, item),
                      video_seed(spec.seed, item), progress, item.video)


def write_outputs(spec: Spec, context: LoadContext, item: InputVideo, stem: str, clip, made: Synthesis,
                  identity: RunIdentity, started: float) -> VideoResult:
    """The video's mp4 (and side by side), then its sidecar, each atomically; `started` is when the video was taken up
    (its clip read ahead, or waited for)."""
    plan, frames, records, calls = made.plan, made.frames, made.records, made.unet_calls
    folder = spec.output.dir
    output = video_io.write_video(folder / f"{stem}.mp4", frames, clip.fps)
    if spec.output.side_by_side:
        video_io.write_video(folder / f"{stem}.side_by_side.mp4", video_io.side_by_side([clip.frames, frames]), clip.fps)
    unplanned = unplanned_calls(records)
    if unplanned:
        log.warning("plan_not_kept", source=str(item.video), ops=unplanned)
    seconds = time.perf_counter() - started
    sidecar = video_io.write_json(folder / f"{stem}.json", {
        "job_key": identity.key,
        "source": str(item.video),
        "prompt": item.prompt,
        "negative_prompts": negative_prompts(plan, video_negative_prompt(spec, item)),  # by role, as conditioned
        "seed": spec.seed,
        "video_seed": video_seed(spec.seed, item),  # what this video's noise was drawn with
        "composition": plan.composition,
        "models": {role: m.entry.name for role, m in plan.models.items()},
        "frames": int(frames.shape[0]),
        "size": [int(frames.shape[-1]), int(frames.shape[-2])],
        "fps": clip.fps,
        "input_notes": list(clip.notes),
        "plan_notes": list(plan.notes),
        "seconds": round(seconds, 3),  # from taking the clip up (read ahead, or waited for) to its outputs written
        "compose_seconds": round(made.seconds, 3),  # encode, the plan's ops, decode
        "unet_calls": calls,
        "unplanned_calls": unplanned,  # ops whose calls differ from the plan's count (a plugin's miscount)
        "prepare_seconds": round(made.prepare_seconds, 3),  # plugins' video_start (a feature capture pass, say)
        "stages": _stage_timings(records),
        "plugins": made.report,
        "ops": [attrs.asdict(r) for r in records],
        "device": str(context.device),
        "offload": context.offload,
        "compiled": list(context.compile),
        "dtype": str(context.dtype).removeprefix("torch."),
        "versions": package_versions(),
        "identity": identity.parts,  # what job_key is made of: input hash, weight files, precision, device type
        "spec": spec_to_data(attrs.evolve(spec, inputs=(item,))),
    })
    return VideoResult(item.video, item.prompt, output, sidecar, seconds, unet_calls=calls)


def _finished_record(spec: Spec, stem: str) -> dict | None:
    """The sidecar of the video's finished outputs (an mp4 and, written last, its sidecar); {} for a finished output
    whose sidecar cannot be read; None when there is none (an mp4 alone is the unfinished work of a killed run)."""
    sidecar = spec.output.dir / f"{stem}.json"
    if not (sidecar.is_file() and (spec.output.dir / f"{stem}.mp4").is_file()):
        return None
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _earlier_outputs(spec: Spec, stem: str, identity: RunIdentity) -> tuple[bool, str | None]:
    """(whether the video's finished outputs match this run, why they are kept otherwise): outputs of another run
    (other settings, input, weights or versions) are replaced only by `--overwrite`; (False, None) when there are
    none."""
    record = _finished_record(spec, stem)
    if record is None or record.get("job_key") == identity.key:
        return record is not None, None
    earlier = record.get("identity")
    changes = changed_parts(earlier, identity.parts) if isinstance(earlier, dict) else []
    why = f"made by another run ({'; '.join(changes)})" if changes else f"of unknown origin ({stem}.json cannot be read)"
    return False, (f"{spec.output.dir / stem}.mp4 exists, {why}, and is kept; pass --overwrite to replace it, or give "
                   f"another output folder (output.dir, or --output-dir) to keep both")


def _skipped(spec: Spec, item: InputVideo, stem: str, busy_reason: str | None = None) -> VideoResult:
    """A video left alone: its outputs already match the spec, or another process works on it (`busy_reason`)."""
    if busy_reason:
        log.warning("video_skipped", source=str(item.video), reason=busy_reason)
        return VideoResult(item.video, item.prompt, None, None, 0.0, skipped=True, skip_reason=busy_reason)
    output, sidecar = spec.output.dir / f"{stem}.mp4", spec.output.dir / f"{stem}.json"
    log.info("video_skipped", source=str(item.video), output=str(output), reason="outputs match this spec")
    return VideoResult(item.video, item.prompt, output, sidecar, 0.0, skipped=True)


def run_job(spec: Spec, plan: Plan, context: LoadContext, progress: bool = True, overwrite: bool = False,
            shard: Shard = Shard(), config: str | None = None) -> list[VideoResult]:
    """Every input of `spec` not done yet, this process's share of them (`shard`: sharding.join_job), with the
    models loaded once; every process's results in input order, also written to the folder's job report."""
    started_at, started = time.time(), time.perf_counter()
    check_inputs(spec, plan)
    output_guard.prepare_output_folder(spec.output.dir)
    check_shared_folder(shard, spec.output.dir)
    weights = weight_fingerprints(plan, context)
    work = list(zip(spec.inputs, output_stems(spec)))
    identity = functools.cache(lambda item: video_identity(spec, item, weights, context))
    # outputs of another run are kept before any weight loads (and checked again under each video's lock)
    earlier = {i: (False, None) if overwrite else _earlier_outputs(spec, stem, identity(item))
               for i, (item, stem) in enumerate(work)} if shard.is_main else {}
    kept = {i: why for i, (_, why) in earlier.items() if why}
    pending = shard.from_main([i for i, (done, why) in earlier.items() if not done and not why] if shard.is_main else None)
    to_do = frozenset(pending)
    skipped = [(i, VideoResult(item.video, item.prompt, None, None, 0.0, error=kept[i]) if i in kept else
                _skipped(spec, item, stem)) for i, (item, stem) in enumerate(work) if i not in to_do]
    progress_bar = JobProgress([spec.output.dir / f"{stem}.json" for _, stem in (work[i] for i in pending)],
                               progress and shard.is_main, count_peers=shard.count > 1)
    share, not_loaded = [(i, *work[i]) for i in shard.take(pending)], None
    try:
        mine, load_seconds = _run_share(spec, plan, context, share, identity, overwrite, shard.index, progress_bar)
    except LoadError as exc:  # the models did not load: the share's videos fail with it, in the job report too
        not_loaded, load_seconds = exc, 0.0
        mine = [(index, VideoResult(item.video, item.prompt, None, None, 0.0, error=str(exc), process=shard.index))
                for index, item, _ in share]
    finally:
        progress_bar.close()
    summary = ProcessSummary.this_process(shard.index, context.device, len(mine), load_seconds,
                                          time.perf_counter() - started)
    gathered = shard.gathered([(summary, mine)])
    results = [result for _, result in sorted(skipped + [pair for _, share in gathered for pair in share],
                                              key=lambda pair: pair[0])]
    if shard.is_main:
        report = job_report(config, spec.composition_name, results, [s for s, _ in gathered], started_at,
                            time.perf_counter() - started)
        write_job_report(spec.output.dir, report)
    if not_loaded is not None:
        raise not_loaded
    return results


def _run_share(spec: Spec, plan: Plan, context: LoadContext, share: list, identity, overwrite: bool, process: int,
               progress_bar: JobProgress) -> tuple[list[tuple[int, VideoResult]], float]:
    """The videos of process `process` ((input index, item, stem) each): ([(input index, result)], seconds spent
    loading). Its step bars show where the job's bar does. While a video composes, the next one is read and the
    previous one written, each on a thread of its own; at most one video waits to be written."""
    if not share:
        return [], 0.0
    plans = video_plans(spec, plan, context.registry, context.plugins, context)  # before any weight loads
    modules = context.plugins.catalogue.modules
    loading = time.perf_counter()
    try:
        backends = load_backends(plan, context)
    except Exception as exc:  # noqa: BLE001 - run_job fails the share's videos with it and writes the report
        if out_of_memory(exc):
            raise
        log.debug("load_failed", traceback=format_traceback(exc))
        raise LoadError(str(exc if isinstance(exc, EVSError) else failure(exc, modules, "loading the models"))) from exc
    load_seconds = time.perf_counter() - loading
    results, writing = [], []  # writing: (input index, item, claim, future) of videos whose outputs are being written

    def finish(index: int, item: InputVideo, claim, result: VideoResult) -> None:
        claim.release()
        result = attrs.evolve(result, process=process)
        if result.error:
            log.error("video_failed", source=str(item.video), error=result.error)
        else:
            log.info("video_done", source=str(item.video), output=str(result.output),
                     seconds=round(result.seconds, 2), unet_calls=result.unet_calls)
        context.plugins.hook.video_done(result=result)
        results.append((index, result))
        progress_bar.advance()

    def failed(item: InputVideo, exc: Exception, doing: str) -> VideoResult:
        if not isinstance(exc, EVSError) and not out_of_memory(exc):
            log.debug("video_failed_traceback", source=str(item.video), traceback=format_traceback(exc))
            exc = failure(exc, modules, f"{doing} {item.video.name}")
        return VideoResult(item.video, item.prompt, None, None, 0.0, error=str(exc))

    def written(index, item, claim, future) -> None:
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - that video fails, the others go on
            result = failed(item, exc, "writing the outputs of")
        finish(index, item, claim, result)

    with ThreadPoolExecutor(1, "evs-read") as reader, ThreadPoolExecutor(1, "evs-write") as writer:
        reads = [reader.submit(read_clip, spec, item) for _, item, _ in share[:1]]
        try:
            for position, (index, item, stem) in enumerate(share):
                read = reads.pop()
                if position + 1 < len(share):
                    reads.append(reader.submit(read_clip, spec, share[position + 1][1]))
                claim = output_guard.claim_stem(spec.output.dir, stem)
                # checked again under the lock: another process may have finished the video since the run began
                done, kept = (False, None) if overwrite else _earlier_outputs(spec, stem, identity(item))
                if claim.busy_reason or done:
                    claim.release()
                    results.append((index, attrs.evolve(_skipped(spec, item, stem, claim.busy_reason), process=process)))
                    progress_bar.advance()
                    continue
                if kept:
                    finish(index, item, claim, VideoResult(item.video, item.prompt, None, None, 0.0, error=kept))
                    continue
                own_spec = spec if item.settings is None else attrs.evolve(spec, settings=item.settings)
                started = time.perf_counter()
                try:
                    clip = read.result()
                    made = compose_clip(own_spec, plans[item.settings], backends, context, item, clip, progress_bar.shown)
                except Exception as exc:  # noqa: BLE001 - that video fails, the others go on
                    finish(index, item, claim, failed(item, exc, "composing"))
                    continue
                except BaseException:  # interrupted while composing: the lock goes back
                    claim.release()
                    raise
                if writing:
                    written(*writing.pop())
                writing.append((index, item, claim, writer.submit(write_outputs, own_spec, context, item, stem, clip,
                                                                  made, identity(item), started)))
            while writing:
                written(*writing.pop())
        finally:
            for _, _, claim, future in writing:  # interrupted: the write ends (or never starts), then its lock goes back
                if not future.cancel():
                    wait([future])
                claim.release()
    return results, load_seconds
