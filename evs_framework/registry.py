"""The model registry: names used in configs (`EP`, `lightningEP`, ...) mapped to a backend kind, weight
locations and a sampling preset. It is data (registry.yaml); adding an SD1.5 fine-tune is a YAML edit.

Files are read in order: the project's registry.yaml, the files plugins ship (`registry_files` hook), each
path in `EVS_REGISTRY`, then `--registry`. A plugin's names can always be written `<plugin>:<name>`; the bare
name works too unless EVS's own registry has it or two plugins give it. A name in a user's file (`EVS_REGISTRY`,
`--registry`) replaces an earlier entry of that name. A preset named in a file may be defined in any file before it.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

import attrs
import structlog

from evs_framework.convert import structure_fields
from evs_framework.datafile import read_data_file
from evs_framework.errors import RegistryError, RegistryFileError, did_you_mean
from evs_framework.paths import unreadable_reason
from evs_framework.registry_checks import located, non_finite, preset_problems
from evs_framework.schedules import ModelSchedule, NoiseSchedule

# registry.yaml and compositions/ sit at the repository's top level; the package reaches them through
# evs_framework/data (links in a checkout, copies in a wheel), so an installed EVS finds them too.
PACKAGE_DATA = files("evs_framework") / "data"
DEFAULT_REGISTRY = Path(str(PACKAGE_DATA / "registry.yaml"))
REGISTRY_ENV = "EVS_REGISTRY"
MODEL_TYPES = ("t2i", "t2v")

log = structlog.get_logger(__name__)


@attrs.frozen
class LatentSpaceDecl:
    """The latent space a model works in, as the registry declares it (before any weights load): `name` is its
    identity (models with the same name exchange latents as they are; others need a conversion), `channels`,
    `spatial` and `temporal` its compression. Scaling and shift come from the VAE's config when it loads."""

    name: str = "sd1"
    channels: int = 4
    spatial: int = 8
    temporal: int = 1  # a 3D VAE's frames per latent frame, after the first: frames = 1 + temporal * (latent - 1)
    size_multiple: int = 8  # what frame sides must be multiples of (the VAE's factor times a transformer's patch)

    def fit_problems(self, model: str, frames: int, height: int, width: int) -> list[str]:
        """What a clip of this size cannot do in this latent space, each with its fix."""
        problems = []
        if self.temporal > 1 and (frames - 1) % self.temporal:
            fits = frames - (frames - 1) % self.temporal
            problems.append(f"{frames} frames, but {model}'s VAE ({self.name}) takes 1 + {self.temporal}k frames; set "
                            f"video.max_frames to {fits}")
        if height % self.size_multiple or width % self.size_multiple:
            problems.append(f"{width}x{height} pixels, but {model} ({self.name}) needs sides that are multiples of "
                            f"{self.size_multiple}; set video.size to {width - width % self.size_multiple}x"
                            f"{height - height % self.size_multiple} or another multiple")
        return problems


@attrs.frozen
class Preset:
    """How a model samples: its training noise schedule (kind `schedule`, a plugin's, with `schedule_params`; for
    `betas` the beta_* fields), prediction type, default step count and spacing, guidance, and its latent space."""

    steps: int
    beta_schedule: str | None = None
    schedule: str = "betas"
    schedule_params: dict[str, float | int | bool | str] = attrs.Factory(dict)
    prediction: str = "epsilon"
    latent_space: LatentSpaceDecl = LatentSpaceDecl()
    spacing: str = "leading"
    steps_offset: int = 0
    beta_start: float = 0.00085
    beta_end: float = 0.012
    train_steps: int = 1000
    guidance: float = 7.5
    sampler: str = "euler"
    original_steps: int = 50  # "lcm" spacing only: LCMScheduler's original_inference_steps
    # timesteps the model was distilled on (AnimateDiff-Lightning); the plan says which steps land on them
    trained_timesteps: tuple[int, ...] = ()
    # the most frames one call can see (a motion module's positional encoding); None: frames are independent
    frame_window: int | None = None
    # the frames the model was trained to see at once; longer clips run in windows of this length (context_windows)
    context_frames: int | None = None
    # what guidance steers the model away from, unless the spec gives a negative prompt: the words its community
    # uses with it (the toy models were trained with none)
    negative_prompt: str = ""

    def sampling(self, train: NoiseSchedule, steps: int | None = None) -> ModelSchedule:
        """A run of `steps` (default: the preset's) over the noise schedule `train` this preset's kind made."""
        return ModelSchedule(train, steps or self.steps, self.spacing, self.steps_offset, self.original_steps)


@attrs.frozen
class WeightLocation:
    """Where a model's files live: `local` under a weights folder (or absolute); `hub` a Hugging Face repo id,
    with `file` naming one file in it (None: the repo is the model folder, of which `evs fetch` downloads the files
    matching `patterns`, or all); `url` a page to download from."""

    local: str | None = None
    hub: str | None = None
    file: str | None = None
    patterns: tuple[str, ...] = ()
    url: str | None = None


@attrs.frozen
class EntryData:
    kind: str
    type: str
    weights: WeightLocation
    preset: str | Preset
    base: str | None = None
    description: str = ""
    options: dict[str, str | float | int | bool] = attrs.Factory(dict)


@attrs.frozen
class ModelEntry:
    name: str
    kind: str
    type: str
    weights: WeightLocation
    preset: Preset
    base: str | None
    description: str
    source: str
    options: dict = attrs.Factory(dict)  # kind-specific settings, read by the backend


@attrs.frozen
class Registry:
    entries: dict[str, ModelEntry]
    ambiguous: dict[str, list[str]] = attrs.Factory(dict)  # bare names two plugins give -> those plugins

    def get(self, name: str) -> ModelEntry:
        if name in self.ambiguous:
            plugins = sorted(self.ambiguous[name])
            raise RegistryError(f"model name {name!r} is given by plugins {' and '.join(map(repr, plugins))}; say which: "
                                f"{' or '.join(f'{p}:{name}' for p in plugins)}")
        if name not in self.entries:
            raise RegistryError(f"unknown model name {name!r}{did_you_mean(name, self.entries)}; "
                                f"add it to registry.yaml or fix the name (`evs models` lists them)")
        return self.entries[name]


def _record(value, cls, path: str, problems: list[str]):
    """`value` as a `cls`, each field structured on its own so one bad field does not hide another's range problems
    (a field that fails keeps its default); None when a required field is missing or malformed."""
    inline = value.get("preset") if cls is EntryData and isinstance(value, dict) else None
    if isinstance(inline, dict):  # an entry's own preset, field by field too
        preset = _record(inline, Preset, f"{path}.preset", problems)
        if preset is None:
            return None
        value = {**value, "preset": "(inline)"}
    values, found = structure_fields(value, cls, path)
    problems += found
    try:
        record = cls(**values)
    except TypeError:  # a required field is missing or malformed: its problem is listed
        return None
    return attrs.evolve(record, preset=preset) if isinstance(inline, dict) else record


def _structured(data: dict, key: str, cls, problems: list[str]) -> dict:
    """Each item of the mapping `data[key]` as a `cls` (items that fail are left out; their problems added)."""
    found = data.get(key, {})
    if not isinstance(found, dict):
        problems.append(f"$.{key}: expected a mapping of names to entries, got {type(found).__name__}")
        return {}
    items = {}
    for name, value in found.items():
        if not isinstance(name, str):
            problems.append(f"$.{key}.{name}: the name {name!r} is not text; quote it")
        elif (item := _record(value, cls, f"$.{key}.{name}", problems)) is not None:
            items[name] = item
    return items


def _entries_of(file: Path, known_presets: dict[str, Preset]) -> tuple[dict[str, ModelEntry], dict[str, Preset], list[str]]:
    """The file's entries, the presets known after it (a preset name may refer to one of an earlier file) and every
    problem of the file, each with its line."""
    reason = unreadable_reason(file)
    if reason:
        raise RegistryError(f"registry file {file} {reason}; check {REGISTRY_ENV} or --registry")
    data = read_data_file(file, "registry file")
    if not isinstance(data, dict):
        return {}, known_presets, located([f"$: expected a mapping with `models` (and `presets`)"], file)
    problems = [f"$: unknown key(s) {', '.join(map(repr, sorted(set(map(str, data)) - {'models', 'presets'})))}; "
                f"known keys: models, presets"] if set(data) - {"models", "presets"} else []
    if "models" not in data:
        problems.append("$.models: required key is missing")
    own_presets = _structured(data, "presets", Preset, problems)
    for name, preset in own_presets.items():
        problems += preset_problems(preset, f"$.presets.{name}")
    presets = {**known_presets, **own_presets}
    entries = {}
    for name, entry in _structured(data, "models", EntryData, problems).items():
        where = f"$.models.{name}"
        preset = entry.preset
        if isinstance(preset, str):
            if preset not in presets:
                problems.append(f"{where}.preset: no preset {preset!r} in this file or the registry files before it"
                                f"{did_you_mean(preset, presets)}")
                continue
            preset = presets[preset]
        else:
            problems += preset_problems(preset, f"{where}.preset")
        if entry.type not in MODEL_TYPES:
            problems.append(f"{where}.type: {entry.type!r}; use t2i (text-to-image) or t2v (text-to-video)")
        problems += non_finite(entry.options, f"{where}.options")
        entries[name] = ModelEntry(name, entry.kind, entry.type, entry.weights, preset, entry.base, entry.description,
                                   str(file), dict(entry.options))
    return entries, presets, located(problems, file)


def _entry_problems(entries: dict[str, ModelEntry], plugins) -> list[str]:
    """Each entry's unknown base, and what the plugin of its kind finds wrong with it (`entry_problems`), once per
    entry (a plugin's entries are there under two names), with file and line."""
    problems = []
    for name, entry in entries.items():
        if name != entry.name:
            continue
        found = [] if entry.base is None or entry.base in entries else \
            [f"base: builds on unknown model {entry.base!r}{did_you_mean(entry.base, entries)}; fix its `base`"]
        if plugins is not None:
            for answer in plugins.hook.entry_problems(entry=entry, names=frozenset(entries)):
                found += answer or []
        name_in_file = entry.name.split(":", 1)[-1]  # a plugin's entries are named `<plugin>:<name>` here
        problems += located([f"$.models.{name_in_file}.{problem}" for problem in found], Path(entry.source))
    return problems


def registry_files(extra=()) -> list[Path]:
    """The user's registry files, after EVS's own and the plugins': `EVS_REGISTRY`'s, then `extra` (--registry)."""
    from_env = [Path(p) for p in os.environ.get(REGISTRY_ENV, "").split(os.pathsep) if p]
    return [*from_env, *map(Path, extra)]


def plugin_registry_files(plugins) -> list[tuple[str, Path]]:
    """(plugin name, file) for each registry file a loaded plugin ships."""
    return [(impl.plugin_name, Path(path)) for impl in plugins.manager.hook.registry_files.get_hookimpls()
            for path in impl.function() or ()]


def _namespaced(entry: ModelEntry, plugin: str, own_names) -> ModelEntry:
    """A plugin's entry under `plugin:name`; a `base` that names another entry of the same plugin follows it."""
    base = f"{plugin}:{entry.base}" if entry.base in own_names else entry.base
    return attrs.evolve(entry, name=f"{plugin}:{entry.name}", base=base)


def load_registry(extra=(), plugins=None) -> Registry:
    """EVS's registry, the files of `plugins` (an evs_framework.plugins.Plugins) and the user's files."""
    entries, presets, problems = _entries_of(DEFAULT_REGISTRY, {})
    core = set(entries)
    givers: dict[str, list[str]] = {}  # bare names plugins give -> the plugins giving them
    for plugin, file in plugin_registry_files(plugins) if plugins is not None else ():
        file_entries, presets, file_problems = _entries_of(file, presets)
        problems += file_problems
        for name, entry in file_entries.items():
            entry = _namespaced(entry, plugin, file_entries)
            entries[entry.name] = entry
            if name in core:
                log.warning("plugin_model_name_taken", name=name, plugin=plugin, use=entry.name)
                continue
            givers.setdefault(name, []).append(plugin)
            entries[name] = entry
    ambiguous = {name: plugins_ for name, plugins_ in givers.items() if len(plugins_) > 1}
    for name in ambiguous:
        del entries[name]
    for file in registry_files(extra):
        file_entries, presets, file_problems = _entries_of(file, presets)
        problems += file_problems
        for name, entry in file_entries.items():
            if name in entries:
                log.info("registry_override", name=name, was=entries[name].source, now=entry.source)
            entries[name] = entry
            ambiguous.pop(name, None)
    problems += _entry_problems(entries, plugins)
    if problems:
        raise RegistryFileError(problems, "the registry")
    return Registry(entries, ambiguous)
