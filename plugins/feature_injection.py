"""Selective Feature Injection (`using_attn`, the original's SFI.py), as a plugin on the video and step hooks.

Before a video's plan runs, its clean source latent (at the T2I model's working size, so upscaled as the plan
upscales it) is DDIM-inverted with the T2I model, unguided unless `inversion_guidance` says otherwise. On the way up,
the chosen self-attention layers' keys and values (or attention maps) are cached at the noise levels that the
chosen denoising steps will visit. During those steps the layers use the cached features instead of their own; a
T2V model receiving them (`models: [idm, vdm]`) takes those of the nearest captured level. The settings are
`injection:` in a native spec (evs_framework.spec.InjectionSettings); `using_attn: true` alone uses their defaults.
"""

from __future__ import annotations

import attrs
import torch

from evs_framework.errors import PlanError
from evs_framework.hookspecs import hookimpl
from evs_framework.plan import DenoiseOp, LatentOp, PlanExtra, calls_per_evaluation
from evs_framework.transfer import TransferContext
from evs_plugins.attention_features import GIB, FeatureCache, Injector, nearest_level, self_attention_layers
from evs_plugins.transfers import ddim_inversion

NAME = "feature_injection"
MIN_LATENT_SIDE = 8  # the SD1.5 UNet halves a latent three times


@attrs.frozen
class CapturePlan:
    """Which denoising steps inject, at which captured level, and the inversion levels walked to capture them."""

    inject_at: dict[tuple[int, int], float]  # (op index, step) -> the captured level (a T2I sigma) it uses
    inversion_levels: tuple[float, ...]  # ascending from clean (0.0) up to the highest captured level

    @property
    def captured(self) -> set[float]:
        return set(self.inject_at.values())


def capture_plan(spec, plan) -> CapturePlan:
    settings = spec.injection
    idm = plan.models["idm"].schedule
    positive = [level for level in idm.levels if level > 0]
    inject_at = {}
    for role in settings.models:
        steps = [(index, step, op.sigmas[step]) for index, op in enumerate(plan.ops)
                 if isinstance(op, DenoiseOp) and op.model == role for step in range(op.steps)]
        for k, (index, step, sigma) in enumerate(steps):
            if chosen(k, len(steps), settings):
                inject_at[index, step] = sigma if role == "idm" else nearest_level(sigma, positive)
    if not inject_at:
        return CapturePlan({}, ())
    top = max(inject_at.values())
    return CapturePlan(inject_at, tuple(level for level in reversed(idm.levels) if level <= top))


def chosen(k: int, total: int, settings) -> bool:
    if settings.steps is not None:
        return k in settings.steps
    start, end = settings.window
    return start * total <= k < end * total


def working_source(video) -> torch.Tensor:
    """The clean source as the T2I model first sees it: through the latent ops the plan applies before it."""
    latents = video.source
    for op in video.plan.ops:
        if isinstance(op, LatentOp) and op.model == "idm":
            latents = video.catalogue.get("latent_ops", op.name)(latents, **op.params)
        if isinstance(op, DenoiseOp) and op.model == "idm":
            break
    return latents


def capture(video, injector: Injector, plan: CapturePlan) -> None:
    """DDIM-invert the source with the T2I model, recording features at the captured levels."""
    denoiser = video.denoisers["idm"]

    def recording(x, sigma, *, timestep_sigma=None, guidance=None):
        level = sigma if timestep_sigma is None else timestep_sigma  # the level whose timestep the model sees
        injector.mode, injector.level = ("record", level) if level in plan.captured else (None, None)
        try:
            return denoiser(x, sigma, timestep_sigma=timestep_sigma, guidance=guidance)
        finally:
            injector.mode = injector.level = None

    source = working_source(video)
    ddim_inversion(TransferContext(source, None, 0.0, plan.inversion_levels[-1], plan.inversion_levels, recording,
                                   video.plan.inversion_guidance, video.generator))


@attrs.define
class Injection:
    injector: Injector
    plan: CapturePlan


def latent_size(spec, plan) -> tuple[int, int, int] | None:
    """(frames, height, width) of the largest input's latents as the T2I model works on them; None if unreadable."""
    from evs_framework.io import video_io
    from evs_framework.errors import VideoError
    from evs_framework.preflight import working_size

    sizes = []
    for item in spec.inputs:
        try:
            frames, height, width = working_size(spec, video_io.probe_video(item.video))
        except VideoError:
            return None
        factor = plan.models["idm"].choice.upscale
        sizes.append((frames, round(height // 8 * factor), round(width // 8 * factor)))
    return max(sizes, key=lambda size: size[0] * size[1] * size[2]) if sizes else None


def cache_bytes(spec, plan, context, levels: int) -> int | None:
    """What the cache will hold: one recording forward pass of the T2I UNet, built from its config on the meta
    device (no weights, no memory), times the captured levels. None when config or video cannot be read."""
    from diffusers import UNet2DConditionModel

    from evs_framework.errors import EVSError
    from evs_plugins.sd15 import unet_config_folder

    size = latent_size(spec, plan)
    if context is None or size is None or not levels:
        return None if levels else 0
    try:
        config = UNet2DConditionModel.load_config(unet_config_folder(plan.models["idm"].entry, context) / "unet")
    except (EVSError, OSError):
        return None
    frames, height, width = size
    if min(height, width) < MIN_LATENT_SIDE:
        return None  # the input is too small to run at all, which the input checks report
    batch = frames * calls_per_evaluation(plan.inversion_guidance)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).to(context.dtype)
        injector = Injector(spec.injection.features, FeatureCache(None, limit_bytes=2**62), mode="record", level=1.0)
        layers = self_attention_layers(unet, spec.injection.layers)
        if not layers:
            raise PlanError(f"$.injection.layers: {list(spec.injection.layers)} match no self-attention layer of the T2I "
                            f"UNet; use names such as up_blocks.1.attentions.0.attn1 (fnmatch patterns)")
        injector.install(layers)
        sample = torch.zeros(batch, unet.config.in_channels, height, width, dtype=context.dtype)
        text = torch.zeros(batch, 77, unet.config.cross_attention_dim, dtype=context.dtype)
        try:
            unet(sample, 500, encoder_hidden_states=text)
        except RuntimeError as exc:
            raise PlanError(f"the T2I UNet cannot run on {frames} frames of {height}x{width} latents "
                            f"({' '.join(str(exc).split())[:200]}); check video.size and the upscale factor") from None
    return injector.cache.bytes * levels


@hookimpl
def plan_extras(spec, plan, context):
    if not spec.using_attn:
        return None
    if "idm" not in plan.models:
        return PlanExtra(NAME, f"using_attn is off here: feature injection captures with the T2I (idm) model and "
                               f"composition {plan.composition} has none")
    missing = [role for role in spec.injection.models if role not in plan.models]
    if missing:
        raise PlanError(f"$.injection.models: {missing} not in composition {plan.composition}; inject into "
                        f"{', '.join(plan.models)}")
    space = plan.models["idm"].entry.preset.latent_space.name
    elsewhere = [role for role in spec.injection.models if plan.models[role].entry.preset.latent_space.name != space]
    if elsewhere:
        raise PlanError(f"$.injection.models: {elsewhere} work in another latent space than the T2I ({space}), so its "
                        f"attention features do not fit them; inject into idm only (injection.models: [idm]) or turn "
                        f"using_attn off")
    captured = capture_plan(spec, plan)
    if not captured.inject_at:
        chooser = f"steps: {list(spec.injection.steps)}" if spec.injection.steps is not None else \
            f"window: {list(spec.injection.window)}"
        raise PlanError(f"$.injection.{chooser} selects none of the denoising steps of {', '.join(spec.injection.models)}; "
                        f"widen it, or turn using_attn off")
    calls = (len(captured.inversion_levels) - 1) * calls_per_evaluation(plan.inversion_guidance)
    settings = spec.injection
    detail = (f"using_attn: DDIM inversion of the source with {plan.models['idm'].entry.name} capturing "
              f"{settings.features} of layers {', '.join(settings.layers)} at {len(captured.captured)} levels, "
              f"injected into {len(captured.inject_at)} steps of {', '.join(settings.models)}")
    memory = cache_bytes(spec, plan, context, len(captured.captured))
    limit = settings.max_cache_gib * GIB
    if memory is not None and memory > limit:
        raise PlanError(f"$.injection: the feature cache would hold {memory / GIB:.2f} GiB, over its limit of "
                        f"{settings.max_cache_gib:g} GiB (injection.max_cache_gib); choose fewer layers or steps, "
                        f"or raise the limit")
    if memory is None and captured.captured:
        detail += " (cache size known once the T2I model's config and the input videos can be read)"
    return PlanExtra(NAME, detail, {"idm": calls} if calls else {}, memory)


@hookimpl
def video_start(video):
    spec = video.spec
    if not spec.using_attn or "idm" not in video.plan.models:
        return
    settings = spec.injection
    windowed = sorted({op.model for op in video.plan.ops if getattr(op, "windows", 1) > 1} & set(settings.models))
    if windowed:
        frames = video.plan.models[windowed[0]].context.frames
        raise PlanError(f"$.injection.models: {windowed} run this {video.plan.frames}-frame clip in context windows, "
                        f"which the captured features do not follow; inject into idm only (injection.models: [idm]) "
                        f"or set video.max_frames to {frames}")
    device = torch.device("cpu") if settings.cache_device == "cpu" else None
    injector = Injector(settings.features, FeatureCache(device, int(settings.max_cache_gib * GIB)))
    plan = capture_plan(spec, video.plan)
    video.state[NAME] = Injection(injector, plan)
    layers = {}
    for role in {"idm", *settings.models}:
        layers |= self_attention_layers(video.backends[role].unet, settings.layers)
    if not layers:
        raise PlanError(f"$.injection.layers: {list(settings.layers)} match no self-attention layer of the models; use "
                        f"names such as up_blocks.1.attentions.0.attn1 (fnmatch patterns)")
    injector.install(layers)
    if plan.inject_at:
        capture(video, injector, plan)
    video.report[NAME] = {"layers": sorted(layers), "levels": len(injector.cache.levels),
                          "cache_bytes": injector.cache.bytes}


@hookimpl
def step_start(video, op, step, sigma):
    injection = video.state.get(NAME)
    if injection is None:
        return
    level = injection.plan.inject_at.get((video.plan.ops.index(op), step))
    injection.injector.mode, injection.injector.level = ("inject", level) if level is not None else (None, None)


@hookimpl
def step_end(video, op, step, sigma, latents):
    injection = video.state.get(NAME)
    if injection is not None:
        injection.injector.mode = injection.injector.level = None


@hookimpl
def video_end(video):
    injection = video.state.pop(NAME, None)
    if injection is not None:
        injection.injector.uninstall()
        injection.injector.cache.levels.clear()
