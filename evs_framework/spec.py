"""The job spec: what to read, which models, which composition, with which settings.

Two formats load into the same frozen `Spec`:
- the original EVS JSON config (keys `mp4_files`, `prompts`, `pipeline_mode`, `idm_type` such as `EP_X2.0`, ...);
- the native YAML/JSON spec, whose `composition` is a name or an inline list of stages.
Relative video paths are read from the spec file's folder.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import attrs
from evs_framework.composition import ROLE_NAME, Composition, check_composition
from evs_framework.convert import CONVERTER, structure_fields
from evs_framework.datafile import read_data_file
from evs_framework.errors import SpecError, written
from evs_framework.inputs import expand_inputs
from evs_framework.paths import resolved

FITS = ("crop", "pad")
UPSCALE_MODES = ("bicubic", "bilinear", "nearest-exact")
MIN_UPSCALE, MAX_UPSCALE = 0.25, 8.0
MAX_SIDE = 8192  # pixels, before upscaling
MAX_FRAMES = 4096
EVERY_ROLE = frozenset({"*"})  # the roles that cannot be planned when a spec's `models` could not be read at all
NO_INPUTS = "$.inputs: no videos given"


@attrs.frozen
class InputVideo:
    """One video and its prompt; `seed`, `negative_prompt` and `settings`, when given (a manifest's columns), replace
    the spec's for this video (`settings` holds the spec's settings with the video's overrides applied)."""

    video: Path
    prompt: str
    seed: int | None = None
    negative_prompt: str | None = None
    settings: Settings | None = None


@attrs.frozen
class ContextChoice:
    """How a motion model meets a clip longer than it sees at once (evs_framework.context_windows): windows of
    `frames` (default: the preset's context_frames, else its frame_window) sharing `overlap` frames with the next
    (default: a quarter of them)."""

    frames: int | None = None
    overlap: int | None = None


@attrs.frozen
class StepCacheChoice:
    """Step caching (evs_plugins.step_cache), an approximation that trades accuracy for speed: in each op, every
    `interval`-th step (the op's first among them) runs the whole UNet and keeps the features its deep path hands to
    the outer up-blocks; the steps between run only the outer `depth` down- and up-blocks on those kept features."""

    interval: int = 3
    depth: int = 1


@attrs.frozen
class ModelChoice:
    """A registry name for one role; `guidance`, `steps` and `sampler` override the registry preset when given,
    `sampler_params` the sampler's own defaults (DDIM's eta, say). `upscale` resizes the latents when the role first
    runs; `source_size` runs the role at the source clip's size instead of the size the trajectory has reached (the
    clean estimate is resized to it when the role takes over, and back when the next role does); `context` the
    windows a motion model runs a long clip in; `cache` turns step caching on (None, the default: every step exact)."""

    name: str
    upscale: float = 1.0
    upscale_mode: str = "bicubic"
    source_size: bool = False
    guidance: float | None = None
    steps: int | None = None
    sampler: str | None = None
    sampler_params: dict[str, float] = attrs.field(factory=dict)
    context: ContextChoice = ContextChoice()
    cache: StepCacheChoice | None = None


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
    dir: Path | None = None  # None: ./outputs/<spec file name>
    side_by_side: bool = True
    decode_chunk: int | None = None  # frames per VAE call; None: as many as fit evs_framework.io.vae's memory budget


@attrs.frozen
class Spec:
    inputs: tuple[InputVideo, ...]
    models: dict[str, ModelChoice]
    composition: str | Composition = "IDM_VDM_IDM"
    settings: Settings = Settings()
    negative_prompt: str | None = None  # None: each model's preset's (registry.yaml); a text: every model's
    seed: int = 23
    using_attn: bool = False
    injection: InjectionSettings = InjectionSettings()
    video: VideoOptions = VideoOptions()
    output: OutputOptions = OutputOptions()
    # a plugin's own settings, by the namespace it registers (`register_settings`): `$namespace.key` in compositions
    plugin_settings: dict[str, dict[str, Any]] = attrs.field(factory=dict)  # checked by the plugins' records

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


SEED_ROLE_KEYS = {"idm": "idm_type", "vdm": "vdm_type"}


# where the original config's keys live in a Spec
SEED_SECTIONS = {"mp4_files": "inputs", "prompts": "inputs", "idm_type": "models.idm", "vdm_type": "models.vdm",
                 "pipeline_mode": "composition", **{name: "settings" for name in attrs.fields_dict(Settings)}}
_PROBLEM_PLACE = re.compile(r"^\$\.(?P<key>\w+)(?:\.(?P<sub>\w+)|\[(?P<index>\d+)\])?")


def problem_section(problem: str) -> str:
    """The part of a Spec a problem was found in, from its path: `settings`, `models.idm`, `inputs[2]`, `video`...
    A problem without a `$.key` path is about which videos there are (a manifest's line, videos against prompts)."""
    match = _PROBLEM_PLACE.match(problem)
    if match is None:
        return "inputs"
    key = SEED_SECTIONS.get(match["key"], match["key"])
    if key == "models" and match["sub"]:
        return f"models.{match['sub']}"
    if key == "inputs" and match["index"]:
        return f"inputs[{match['index']}]"
    return key


# The original config's key for each path of the native spec, so that a problem names the key its author wrote
_LEGACY_PATHS = ((re.compile(r"^\$\.models\.(idm|vdm)\b(\.\w+)*"), r"$.\1_type"),
                 (re.compile(r"^\$\.composition\b"), "$.pipeline_mode"),
                 (re.compile(r"^\$\.inputs\[(\d+)\]\.prompt\b"), r"$.prompts[\1]"),
                 (re.compile(r"^\$\.inputs\b(\[\d+\])?(\.video\b)?"), r"$.mp4_files\1"),
                 (re.compile(r"^\$\.settings\."), "$."))


@attrs.frozen
class ParsedSpec:
    """A spec read as far as it could be, every problem found on the way, the model roles whose key could not
    be read (the planner leaves those alone instead of reporting them a second time) and whether it is an
    original EVS config (`legacy`: its problems name the original keys).

    A value found bad is kept out of every later computation: `tainted` names the parts of the spec that had a
    problem, and the preparation (api.prepare_job) skips whatever reads them."""

    spec: Spec
    problems: tuple[str, ...]
    broken_roles: frozenset[str] = frozenset()
    legacy: bool = False

    def as_written(self, problems) -> list[str]:
        """`problems` with each leading native path (`$.models.idm.name`) named by the key the author wrote
        (`$.idm_type` in an original config)."""
        if not self.legacy:
            return list(problems)
        renamed = []
        for problem in problems:
            for pattern, key in _LEGACY_PATHS:
                problem, found = pattern.subn(key, problem, count=1)
                if found:
                    break
            renamed.append(problem)
        return renamed

    @property
    def tainted(self) -> frozenset[str]:
        return frozenset(problem_section(p) for p in self.problems)

    @property
    def unplannable_roles(self) -> frozenset[str]:
        """Roles whose model cannot be planned: unreadable, or with a bad value (`models` as a whole: every role)."""
        tainted = self.tainted
        if "models" in tainted:
            return EVERY_ROLE | frozenset(self.spec.models)
        return self.broken_roles | {section.split(".", 1)[1] for section in tainted if section.startswith("models.")}


def _seed_spec(data: dict) -> ParsedSpec:
    values, problems = structure_fields(data, SeedConfig)
    videos, prompts = values.get("mp4_files"), values.get("prompts")
    if videos is not None and prompts is not None and len(videos) != len(prompts):
        problems.append(f"$: {len(videos)} mp4_files but {len(prompts)} prompts; give one prompt per video, in the same order")
    if videos == ():
        problems.append("$.mp4_files: no videos given")
    models = {}
    if "idm_type" in values:
        models["idm"] = parse_idm_type(values["idm_type"])
    if "vdm_type" in values:
        models["vdm"] = ModelChoice(name=values["vdm_type"])
    settings = Settings(**{name: values[name] for name in attrs.fields_dict(Settings) if name in values})
    spec = Spec(inputs=tuple(InputVideo(v, p) for v, p in zip(videos or (), prompts or ())), models=models,
                composition=values.get("pipeline_mode", "IDM_VDM_IDM"), settings=settings, seed=values.get("seed", 23),
                using_attn=values.get("using_attn", False))
    return ParsedSpec(spec, tuple(problems), frozenset(role for role, key in SEED_ROLE_KEYS.items() if key not in values),
                      legacy=True)


def _native_data(data: dict) -> tuple[dict, list[str]]:
    """Accept `videos:` + `prompts:` lists as a shorthand for `inputs:`."""
    if "videos" not in data and "prompts" not in data:
        return data, []
    data = dict(data)
    videos, prompts = data.pop("videos", []), data.pop("prompts", [])
    if not isinstance(videos, list) or not isinstance(prompts, list) or len(videos) != len(prompts):
        return data, [f"$: `videos` and `prompts` must be lists of equal length (got "
                      f"{len(videos) if isinstance(videos, list) else written(videos)} videos and "
                      f"{len(prompts) if isinstance(prompts, list) else written(prompts)} prompts); give one prompt per video"]
    if "inputs" in data:
        return data, ["$: give either `inputs` or `videos` + `prompts`, not both"]
    data["inputs"] = [{"video": v, "prompt": p} for v, p in zip(videos, prompts)]
    return data, []


def _native_spec(data: dict, origins: list[str] | None = None) -> ParsedSpec:
    data, problems = _native_data(data)
    data, overrides = _settings_overrides(data)
    values, structure_problems = structure_fields(data, Spec)
    problems += structure_problems
    if values.get("inputs") == ():
        problems.append(NO_INPUTS)
    spec = Spec(**{"inputs": (), "models": {}, **values})
    inputs = list(spec.inputs)
    for i, raw in overrides.items():
        where = f"$.inputs[{i}]" + (f" ({origins[i]})" if origins and i < len(origins) else "") + ".settings"
        merged, found = overridden_settings(spec.settings, raw, where)
        problems += found
        if merged is not None and i < len(inputs):
            inputs[i] = attrs.evolve(inputs[i], settings=merged)
    spec = attrs.evolve(spec, inputs=tuple(inputs))
    return ParsedSpec(spec, tuple(problems), frozenset() if "models" in values else EVERY_ROLE)


def overridden_settings(base: Settings, overrides: dict, path: str) -> tuple[Settings | None, list[str]]:
    """`base` with `overrides` (raw data) applied, structured and checked as a spec's own; None when it has problems.
    Value problems are checked with the spec (check_spec) where the result is stored in an input."""
    if not isinstance(overrides, dict):
        return None, [f"{path}: expected a mapping of settings to values, got {written(overrides)}"]
    merged, problems = structure_fields({**CONVERTER.unstructure(base), **overrides}, Settings, path)
    return (None, problems) if problems else (Settings(**merged), [])


def _settings_overrides(data: dict) -> tuple[dict, dict[int, dict]]:
    """`data` without the `settings` of each input, and those overrides by input index."""
    inputs = data.get("inputs")
    if not isinstance(inputs, list):
        return data, {}
    overrides = {i: item["settings"] for i, item in enumerate(inputs) if isinstance(item, dict) and "settings" in item}
    if not overrides:
        return data, {}
    stripped = [{k: v for k, v in item.items() if k != "settings"} if i in overrides else item
                for i, item in enumerate(inputs)]
    return {**data, "inputs": stripped}, overrides


def settings_problems(s: Settings, path: str) -> list[str]:
    """Value problems of composition settings that types alone do not catch."""
    problems = []
    for key in ("idm_inverse_strength", "vdm_inverse_strength"):
        value = getattr(s, key)
        if not (0 < value <= 1) or math.isnan(value):
            problems.append(f"{path}.{key}: {value} is outside (0, 1]; it is the fraction of the schedule to run")
    for i, steps in enumerate(s.stable_steps):
        if steps < 0:
            problems.append(f"{path}.stable_steps[{i}]: {steps} is negative; it counts T2I steps left at the switch")
    if s.stable_num < 1:
        problems.append(f"{path}.stable_num: {s.stable_num}; the T2V model needs at least 1 step")
    if not (s.inversion_guidance >= 1) or math.isinf(s.inversion_guidance):
        problems.append(f"{path}.inversion_guidance: {s.inversion_guidance}; use a number of at least 1 "
                        f"(1 inverts without guidance)")
    return problems


def check_spec(spec: Spec) -> list[str]:
    """Value problems that types alone do not catch, each with its path."""
    problems = settings_problems(spec.settings, "$.settings")
    for i, item in enumerate(spec.inputs):
        if item.settings is not None:
            problems += settings_problems(item.settings, f"$.inputs[{i}].settings")
    if not 0 <= spec.seed < 2**64:
        problems.append(f"$.seed: {spec.seed} is outside 0..2**64-1; use a smaller non-negative integer")
    problems += [f"$.inputs[{i}].seed: {item.seed} is outside 0..2**64-1; use a smaller non-negative integer"
                 for i, item in enumerate(spec.inputs) if item.seed is not None and not 0 <= item.seed < 2**64]
    for role, choice in spec.models.items():
        if not ROLE_NAME.fullmatch(role):
            problems.append(f"$.models.{role}: a role is a name of letters, digits and _, one that the "
                            f"composition declares")
        if not MIN_UPSCALE <= choice.upscale <= MAX_UPSCALE:
            problems.append(f"$.models.{role}.upscale: {choice.upscale} is outside {MIN_UPSCALE}..{MAX_UPSCALE}; "
                            f"latents are resized by this factor (2.0 doubles each side)")
        if choice.source_size and choice.upscale != 1.0:
            problems.append(f"$.models.{role}.source_size: a model at the source size cannot also upscale "
                            f"(upscale {choice.upscale}); drop one of the two")
        frames, overlap = choice.context.frames, choice.context.overlap
        if frames is not None and frames < 2:
            problems.append(f"$.models.{role}.context.frames: {frames}; a window needs at least 2 frames")
        if overlap is not None and (overlap < 0 or (frames is not None and overlap >= frames)):
            problems.append(f"$.models.{role}.context.overlap: {overlap}; give 0 up to one less than the window's "
                            f"frames")
        if choice.upscale_mode not in UPSCALE_MODES:
            problems.append(f"$.models.{role}.upscale_mode: {choice.upscale_mode!r}; use one of {', '.join(UPSCALE_MODES)}")
        if choice.guidance is not None and not (1 <= choice.guidance < math.inf):
            problems.append(f"$.models.{role}.guidance: {choice.guidance}; use a number of at least 1 (1: no guidance)")
        if choice.steps is not None and choice.steps < 1:
            problems.append(f"$.models.{role}.steps: {choice.steps} must be at least 1")
        if choice.cache is not None:
            problems += step_cache_problems(choice.cache, f"$.models.{role}.cache")
    if spec.video.max_frames is not None and not 1 <= spec.video.max_frames <= MAX_FRAMES:
        problems.append(f"$.video.max_frames: {spec.video.max_frames} must be in 1..{MAX_FRAMES} (or null for all frames)")
    if not 1 <= spec.video.stride <= MAX_FRAMES:
        problems.append(f"$.video.stride: {spec.video.stride} must be in 1..{MAX_FRAMES}")
    if spec.video.size is not None and not all(8 <= side <= MAX_SIDE for side in spec.video.size):
        problems.append(f"$.video.size: {list(spec.video.size)} must be [width, height], each 8..{MAX_SIDE} pixels")
    if spec.video.fit not in FITS:
        problems.append(f"$.video.fit: {spec.video.fit!r}; use one of {', '.join(FITS)}")
    if spec.output.decode_chunk is not None and spec.output.decode_chunk < 1:
        problems.append(f"$.output.decode_chunk: {spec.output.decode_chunk} must be at least 1 (or null: sized to memory)")
    if isinstance(spec.composition, Composition):
        problems += check_composition(spec.composition, "$.composition")
    return problems + check_injection(spec.injection)


def step_cache_problems(cache: StepCacheChoice, path: str) -> list[str]:
    """The values a step cache cannot have whatever the model (how deep its UNet goes is checked against the UNet)."""
    problems = []
    if cache.interval < 1:
        problems.append(f"{path}.interval: {cache.interval}; give at least 1 (1 runs every step in full, 3 every third)")
    if cache.depth < 1:
        problems.append(f"{path}.depth: {cache.depth}; give at least 1, the outer down- and up-blocks that run on "
                        f"every step")
    return problems


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
    if not 0 < settings.max_cache_gib < math.inf:
        problems.append(f"{path}.max_cache_gib: {settings.max_cache_gib} must be positive")
    return problems


def _resolve_paths(spec: Spec, folder: Path, stem: str | None) -> Spec:
    """Inputs and an explicit output folder are read from the spec's folder; without one, outputs go to
    ./outputs/<spec file name> (the current folder), so the task configs do not overwrite each other."""
    inputs = tuple(attrs.evolve(i, video=resolved(folder / i.video)) for i in spec.inputs)
    if spec.output.dir is None:
        out_dir = Path.cwd() / "outputs" / stem if stem else Path.cwd() / "outputs"
    else:
        out_dir = folder / spec.output.dir
    return attrs.evolve(spec, inputs=inputs, output=attrs.evolve(spec.output, dir=resolved(out_dir)))


def parse_spec(data, source: str = "spec", folder: Path | None = None, stem: str | None = None) -> ParsedSpec:
    """The spec in `data` (an original EVS config or a native spec) with every structural and value problem."""
    if not isinstance(data, dict):
        return ParsedSpec(Spec(inputs=(), models={}), (f"$: the top level must be a mapping of keys to values, got "
                                                       f"{written(data)}",), EVERY_ROLE)
    if "mp4_files" in data:
        parsed = _seed_spec(data)
    else:
        data, input_problems, origins = expand_inputs(data, folder or Path.cwd())
        parsed = _native_spec(data, origins)
        # rows with problems are left out; that none is left says nothing more
        kept = tuple(p for p in parsed.problems if not (input_problems and p == NO_INPUTS))
        parsed = attrs.evolve(parsed, problems=tuple(input_problems) + kept)
    spec = _resolve_paths(parsed.spec, folder or Path.cwd(), stem)
    return attrs.evolve(parsed, spec=spec, problems=parsed.problems + tuple(parsed.as_written(check_spec(spec))))


def spec_from_data(data, source: str = "spec", folder: Path | None = None, stem: str | None = None) -> Spec:
    parsed = parse_spec(data, source, folder, stem)
    if parsed.problems:
        raise SpecError(list(parsed.problems), source)
    return parsed.spec


def read_spec(path) -> ParsedSpec:
    """Read an original EVS JSON config or a native YAML/JSON spec, collecting its problems."""
    path = Path(path)
    return parse_spec(read_data_file(path, "config"), str(path), resolved(path.parent), path.stem)


def load_spec(path) -> Spec:
    """Read an original EVS JSON config or a native YAML/JSON spec; SpecError lists every problem."""
    parsed = read_spec(path)
    if parsed.problems:
        raise SpecError(list(parsed.problems), str(path))
    return parsed.spec


def spec_to_data(spec: Spec) -> dict:
    return CONVERTER.unstructure(spec)
