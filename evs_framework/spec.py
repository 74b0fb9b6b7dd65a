"""The job spec: what to read, which models, which composition, with which settings.

Two formats load into the same frozen `Spec`:
- the original EVS JSON config (keys `mp4_files`, `prompts`, `pipeline_mode`, `idm_type` such as `EP_X2.0`, ...);
- the native YAML/JSON spec, whose `composition` is a name or an inline list of stages.
Relative video paths are read from the spec file's folder.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import attrs
import yaml

from evs_framework.composition import Composition, check_composition
from evs_framework.convert import CONVERTER, structure
from evs_framework.errors import SpecError

DEFAULT_NEGATIVE_PROMPT = "worst quality, low quality, blurry, distorted, deformed, watermark, text"
FITS = ("crop", "pad")
UPSCALE_MODES = ("bicubic", "bilinear", "nearest-exact")


@attrs.frozen
class InputVideo:
    video: Path
    prompt: str


@attrs.frozen
class ModelChoice:
    """A registry name for one role; `guidance` and `steps` override the registry preset when given."""

    name: str
    upscale: float = 1.0
    upscale_mode: str = "bicubic"
    guidance: float | None = None
    steps: int | None = None


@attrs.frozen
class Settings:
    """The composition's knobs (names as in the original EVS configs); `$name` in a composition reads them."""

    idm_invert_mode: str = "random"
    vdm_invert_mode: str = "random"
    idm_invert_mode_2: str = "ddim"
    idm_inverse_strength: float = 0.4
    vdm_inverse_strength: float = 0.4
    stable_steps: tuple[int, ...] = (8,)
    stable_num: int = 2
    # DDIM inversion with guidance > 1 drifts away from the source, so it runs unguided unless asked.
    inversion_guidance: float = 1.0


@attrs.frozen
class InjectionSettings:
    """Selective Feature Injection (`using_attn`), as evs_plugins.feature_injection reads it.

    The source is DDIM-inverted with the T2I model; on the way, the chosen self-attention layers' features are
    cached at each noise level that a later denoising step will visit; those steps then use the cached features
    in place of their own, which keeps the source's layout and motion while the prompt changes the content.
    """

    features: str = "kv"  # kv: the layers' keys and values; attention_maps: their softmax(QK^T) maps
    # fnmatch patterns on module names; the default: the self-attention of the decoder's two middle resolutions
    layers: tuple[str, ...] = ("up_blocks.1.attentions.*.attn1", "up_blocks.2.attentions.*.attn1")
    window: tuple[float, float] = (0.0, 0.5)  # the fraction of each injected model's denoising steps
    steps: tuple[int, ...] | None = None  # explicit step indices (0 = the model's first step), instead of window
    models: tuple[str, ...] = ("idm",)  # roles that receive the features; the vdm's spatial layers share the names
    cache_device: str = "model"  # model: beside the weights; cpu: host memory (slower, for small GPUs)
    max_cache_gib: float = 8.0


INJECTION_FEATURES = ("kv", "attention_maps")
CACHE_DEVICES = ("model", "cpu")


@attrs.frozen
class VideoOptions:
    max_frames: int | None = 16
    stride: int = 1
    fit: str = "crop"
    size: tuple[int, int] | None = None  # (width, height) to resize to before fitting; real footage is often 1080p


@attrs.frozen
class OutputOptions:
    dir: Path = Path("outputs")
    side_by_side: bool = True
    decode_chunk: int = 8


@attrs.frozen
class Spec:
    inputs: tuple[InputVideo, ...]
    models: dict[str, ModelChoice]
    composition: str | Composition = "IDM_VDM_IDM"
    settings: Settings = Settings()
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 23
    using_attn: bool = False
    injection: InjectionSettings = InjectionSettings()
    video: VideoOptions = VideoOptions()
    output: OutputOptions = OutputOptions()

    @property
    def composition_name(self) -> str:
        return self.composition if isinstance(self.composition, str) else self.composition.name


@attrs.frozen
class SeedConfig:
    """The original EVS config, key for key; defaults are the values of its example enhance config."""

    mp4_files: tuple[Path, ...]
    prompts: tuple[str, ...]
    vdm_type: str
    idm_type: str
    pipeline_mode: str = "IDM_VDM_IDM"
    using_attn: bool = False
    idm_invert_mode: str = "random"
    vdm_invert_mode: str = "random"
    idm_invert_mode_2: str = "ddim"
    idm_inverse_strength: float = 0.4
    vdm_inverse_strength: float = 0.4
    stable_num: int = 2
    stable_steps: tuple[int, ...] = (8,)
    seed: int = 23


CONVERTER.register_unstructure_hook(Path, str)

_IDM_TYPE = re.compile(r"^(?P<name>.+?)_X(?P<scale>\d+(?:\.\d+)?)$")


def parse_idm_type(idm_type: str) -> ModelChoice:
    """`EP_X2.0` -> model EP with latents upscaled x2.0; a plain name means no upscale."""
    match = _IDM_TYPE.match(idm_type)
    if match is None:
        return ModelChoice(name=idm_type)
    return ModelChoice(name=match["name"], upscale=float(match["scale"]))


def seed_to_spec(config: SeedConfig) -> Spec:
    if len(config.mp4_files) != len(config.prompts):
        raise SpecError([f"$: {len(config.mp4_files)} mp4_files but {len(config.prompts)} prompts; "
                         "give one prompt per video, in the same order"], "config")
    settings = Settings(**{f.name: getattr(config, f.name) for f in attrs.fields(Settings) if hasattr(config, f.name)})
    return Spec(
        inputs=tuple(InputVideo(v, p) for v, p in zip(config.mp4_files, config.prompts)),
        models={"idm": parse_idm_type(config.idm_type), "vdm": ModelChoice(name=config.vdm_type)},
        composition=config.pipeline_mode,
        settings=settings,
        seed=config.seed,
        using_attn=config.using_attn,
    )


def _native_data(data: dict) -> dict:
    """Accept `videos:` + `prompts:` lists as a shorthand for `inputs:`."""
    if "videos" not in data and "prompts" not in data:
        return data
    data = dict(data)
    videos, prompts = data.pop("videos", []), data.pop("prompts", [])
    if not isinstance(videos, list) or not isinstance(prompts, list) or len(videos) != len(prompts):
        raise SpecError([f"$: `videos` and `prompts` must be lists of equal length "
                         f"(got {len(videos) if isinstance(videos, list) else videos!r} videos and "
                         f"{len(prompts) if isinstance(prompts, list) else prompts!r} prompts); give one prompt per video"], "spec")
    if "inputs" in data:
        raise SpecError(["$: give either `inputs` or `videos` + `prompts`, not both"], "spec")
    data["inputs"] = [{"video": v, "prompt": p} for v, p in zip(videos, prompts)]
    return data


def check_spec(spec: Spec) -> list[str]:
    """Value problems that types alone do not catch, each with its path."""
    problems = []
    s = spec.settings
    for key in ("idm_inverse_strength", "vdm_inverse_strength"):
        value = getattr(s, key)
        if not (0 < value <= 1) or math.isnan(value):
            problems.append(f"$.settings.{key}: {value} is outside (0, 1]; it is the fraction of the schedule to run")
    for i, steps in enumerate(s.stable_steps):
        if steps < 0:
            problems.append(f"$.settings.stable_steps[{i}]: {steps} is negative; it counts T2I steps left at the switch")
    if s.stable_num < 1:
        problems.append(f"$.settings.stable_num: {s.stable_num}; the T2V model needs at least 1 step")
    if not spec.inputs:
        problems.append("$.inputs: no videos given")
    for role, choice in spec.models.items():
        if role not in ("idm", "vdm"):
            problems.append(f"$.models.{role}: unknown role; use idm (text-to-image) and vdm (text-to-video)")
        if not (choice.upscale > 0) or math.isinf(choice.upscale):
            problems.append(f"$.models.{role}.upscale: {choice.upscale} must be a positive factor")
        if choice.upscale_mode not in UPSCALE_MODES:
            problems.append(f"$.models.{role}.upscale_mode: {choice.upscale_mode!r}; use one of {', '.join(UPSCALE_MODES)}")
        if choice.guidance is not None and choice.guidance < 1:
            problems.append(f"$.models.{role}.guidance: {choice.guidance} < 1; use 1 for no guidance")
        if choice.steps is not None and choice.steps < 1:
            problems.append(f"$.models.{role}.steps: {choice.steps} must be at least 1")
    if spec.video.max_frames is not None and spec.video.max_frames < 1:
        problems.append(f"$.video.max_frames: {spec.video.max_frames} must be at least 1 (or null for all frames)")
    if spec.video.stride < 1:
        problems.append(f"$.video.stride: {spec.video.stride} must be at least 1")
    if spec.video.size is not None and min(spec.video.size) < 8:
        problems.append(f"$.video.size: {list(spec.video.size)} must be [width, height], each at least 8 pixels")
    if spec.video.fit not in FITS:
        problems.append(f"$.video.fit: {spec.video.fit!r}; use one of {', '.join(FITS)}")
    if spec.output.decode_chunk < 1:
        problems.append(f"$.output.decode_chunk: {spec.output.decode_chunk} must be at least 1")
    if isinstance(spec.composition, Composition):
        problems += check_composition(spec.composition, "$.composition")
    return problems + check_injection(spec.injection)


def check_injection(settings: InjectionSettings, path: str = "$.injection") -> list[str]:
    problems = []
    if settings.features not in INJECTION_FEATURES:
        problems.append(f"{path}.features: {settings.features!r}; use one of {', '.join(INJECTION_FEATURES)}")
    start, end = settings.window
    if not 0 <= start <= end <= 1:
        problems.append(f"{path}.window: {list(settings.window)} must be two fractions with 0 <= start <= end <= 1")
    if settings.steps is not None and any(step < 0 for step in settings.steps):
        problems.append(f"{path}.steps: {list(settings.steps)} has a negative index; steps count from 0")
    for i, role in enumerate(settings.models):
        if role not in ("idm", "vdm"):
            problems.append(f"{path}.models[{i}]: {role!r} is not a role; use idm and/or vdm")
    if settings.cache_device not in CACHE_DEVICES:
        problems.append(f"{path}.cache_device: {settings.cache_device!r}; use one of {', '.join(CACHE_DEVICES)}")
    if not settings.max_cache_gib > 0:
        problems.append(f"{path}.max_cache_gib: {settings.max_cache_gib} must be positive")
    return problems


def _resolve_paths(spec: Spec, folder: Path) -> Spec:
    inputs = tuple(attrs.evolve(i, video=(folder / i.video).resolve()) for i in spec.inputs)
    output = attrs.evolve(spec.output, dir=(folder / spec.output.dir).resolve())
    return attrs.evolve(spec, inputs=inputs, output=output)


def spec_from_data(data, source: str = "spec", folder: Path | None = None) -> Spec:
    if not isinstance(data, dict):
        raise SpecError(["$: the top level must be a mapping of keys to values"], source)
    if "mp4_files" in data:
        spec = seed_to_spec(structure(data, SeedConfig, source))
    else:
        spec = structure(_native_data(data), Spec, source)
    problems = check_spec(spec)
    if problems:
        raise SpecError(problems, source)
    return _resolve_paths(spec, folder or Path.cwd())


def load_spec(path) -> Spec:
    """Read an original EVS JSON config or a native YAML/JSON spec."""
    path = Path(path)
    if not path.is_file():
        raise SpecError([f"{path}: no such file; check the path to the config"], str(path))
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError([f"$: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"], str(path)) from None
    return spec_from_data(data, str(path), path.parent.resolve())


def spec_to_data(spec: Spec) -> dict:
    return CONVERTER.unstructure(spec)
