"""The plugin surface of EVS. Each hook's docstring is its contract.

Catalogue hooks take a `register` callable: the host owns the names, refuses duplicates (naming both
plugins) and remembers which plugin provided what. Call hooks by keyword.

The objects hooks receive and return, in one place (each is defined in the module named):

Models
- `ModelEntry` (registry): `name`, `kind`, `type` ("t2i"/"t2v"), `weights` (a `WeightLocation`: `local`, `hub`,
  `file`, `patterns`, `url`), `preset`, `base` (another entry's name or None), `options` (kind-specific data),
  `source` (the registry file).
- `Preset` (registry): `steps`, `spacing`, `steps_offset`, `original_steps`, `guidance`, `sampler`; the noise schedule
  `schedule` (a kind of `register_noise_schedules`) with `schedule_params` and, for `betas`, `beta_schedule`,
  `beta_start`, `beta_end`, `train_steps`; `prediction` (a `register_prediction_types` name); `latent_space` (a
  `LatentSpaceDecl`: `name`, `channels`, `spatial`, `temporal`, `size_multiple`); `frame_window`, `context_frames`,
  `trained_timesteps`.
- `LoadContext` (loading): `registry`, `plugins`, `device`, `dtype`, `vae_dtype`, `allow_pickle`, `offload`,
  `compile` (the parts torch.compile'd once loaded), `placement` (`load_device`: where loaders put weights);
  `weights_path(entry)` finds an entry's files; `load(entry)` loads another entry's backend once per run;
  `shared(key, build)` keeps one instance per key.
- Backend (what a `register_backends` loader returns; `loading.Backend`): `encode_prompts(prompts)` returns the
  model's conditioning, one row per prompt (a tensor, or an `evs_framework.conditioning.Conditioning`);
  `predict(x, timestep, conditioning)` returns the model's raw output for x (batch, frames, channels, h, w), read by
  its preset's prediction type; `codec` (`encode(frames, chunk)`, `decode(latents, chunk)`, `space`: a
  `latent_space.LatentSpace`, `module`: the VAE); `unet` and `text_encoder` (what --offload moves, or None).
- `NoiseSchedule` (schedules) and prediction conversions (predictions): see `register_noise_schedules` and
  `register_prediction_types`. `Converter` (latent_space): see `register_latent_converters`.

Denoising
- `Denoiser` (denoiser): `denoise(x, sigma)` -> `Prediction` (`x0`, `eps`), in sigma space (x = x0 + sigma eps);
  `calls` counts UNet calls.
- `Sampler`, `StepContext` (sampler): see `register_samplers`. `Transfer`, `TransferContext` (transfer): see
  `register_transfers`.
- `Composition`, `Stage`, `Cycle` (composition) and `PlanBuilder` (planner): see `register_compositions`.

Runs
- `Plan` (plan): `composition`, `models` (role -> `PlannedModel`: `entry`, `schedule`, `guidance`, `sampler`,
  `sampler_params`), `ops` (`ConvertOp`, `LatentOp`, `TransferOp`, `DenoiseOp`, in order), `notes`, `extras`
  (`PlanExtra`), `totals()`.
- `VideoRun` (runner): `spec`, `plan`, `backends` and `denoisers` by role, `source` (clean latents), `generator`,
  `catalogue`, `device`, `placement`, `state` (per-video state, by plugin name), `report` (lands in the sidecar).
- `VideoResult` (runner): `source`, `prompt`, `output`, `sidecar`, `seconds`, `error`, `skipped`, `unet_calls`.
- `Metric`, `MetricResult` (evaluation.metrics): see `register_metrics`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("evs")
hookimpl = pluggy.HookimplMarker("evs")


@hookspec
def register_backends(register):
    """Provide model backend kinds: `register(kind, loader)`.

    `loader(entry, context) -> backend` loads the registry entry `entry` (a `ModelEntry`) with the
    `LoadContext` `context` (device, dtype, weight resolution, shared-component cache). The backend it
    returns satisfies `evs_framework.loading.Backend` (above): `encode_prompts`, `predict`, `codec`, and
    `unet` / `text_encoder`. Its codec's latent space must match what the entry's preset declares (a run
    checks channels and compression); the plan converts between spaces by their declared names.
    """


@hookspec
def register_transfers(register):
    """Provide transfer strategies that move a latent onto a model's noise level: `register(name, transfer)`.

    `transfer` is an `evs_framework.transfer.Transfer`: a name, the function that maps a `TransferContext` to the
    new latent, `evaluations(levels, sigma_from, params)`: how many model evaluations that will make (the plan
    counts with it; a run reports any op that differs), the `parameters` a stage may set (`transfer_params`) with
    their defaults, and whether it needs a noise prediction from an earlier step. The context carries the present
    latent `x`, the clean estimate and latest noise, the levels, the `TransferOp` being run, its parameters and
    `video_state`, a dict that lives for the whole video (key it by your plugin's name).
    """


@hookspec
def register_samplers(register):
    """Provide per-step samplers: `register(name, sampler)` with an `evs_framework.sampler.Sampler`.

    `sampler.step(denoise, x, ctx) -> (x_next, prediction)` takes one step from `ctx.sigma` to `ctx.sigma_next`,
    calling `denoise(x, sigma)` (which returns a `Prediction`) as often as it needs; the prediction it returns must
    agree with x_next, x_next = x0 + sigma_next * eps, as the trajectory carries both on. `ctx` is a `StepContext`:
    the step's index and the op's levels, the op, the sampler's parameters, `state` (new for each op: a multistep
    history) and `video_state` (for the whole video). `sampler.evaluations(sigma, sigma_next, params)` must say
    how many times the step calls `denoise` (or `sampler.step_evaluations(step, sigmas, params)`, where the count
    depends on the step's index in the op): plans count with it, and runs report any op that differs.
    `sampler.parameters` lists the parameters a spec may set (`models.<role>.sampler_params`) with defaults.
    """


@hookspec
def register_noise_schedules(register):
    """Provide noise schedule kinds that presets name (`schedule: <kind>`): `register(kind, make)`.

    `make(preset) -> schedule` builds the schedule from a registry `Preset` (its `schedule_params`, and its beta_*
    and train_steps fields where they apply); raise ValueError, naming the parameter, for settings it cannot use.
    The schedule has the shape of `evs_framework.schedules.NoiseSchedule`: `sigma_at(timestep)`,
    `timestep_at(sigma)`, `input_divisor(sigma)` (what the model's input is divided by) and
    `sampling_timesteps(steps, spacing, steps_offset, original_steps)`, all in the sigma space where
    `x = x0 + sigma * eps`. Keep sigmas finite: a pure-noise end stops at a large sigma.
    """


@hookspec
def register_prediction_types(register):
    """Provide what a model's output can mean (presets say `prediction: <name>`): `register(name, convert)`.

    `convert(output, x, sigma, scale) -> (x0, eps)` turns the model's raw output for latent `x` (sigma space) at
    `sigma`, whose input was `scale * x` (`scale` is 1 / the schedule's `input_divisor(sigma)`), into the clean estimate and
    the noise (evs_framework.predictions has the built-in four).
    """


@hookspec
def register_latent_converters(register):
    """Provide cheaper ways between two latent spaces than decoding and encoding: `register(name, converter)`.

    `converter` is an `evs_framework.latent_space.Converter`: the spaces it goes between (`source`, `target`, names
    as presets declare them), what one conversion costs (a few words for `evs plan`), and
    `convert(latents, source_backend, target_backend) -> latents` on clean (frames, channels, h, w) latents. The
    planner takes a registered converter for a pair before the default VAE round trip.
    """


@hookspec
def register_compositions(register):
    """Provide named compositions: `register(name, composition)` with an `evs_framework.composition.Composition`:
    stages as data, or a `planner` function of an `evs_framework.planner.PlanBuilder` that emits the stages."""


@hookspec
def register_settings(register):
    """Provide a namespace of settings for specs: `register(namespace, record)`, `record` a frozen attrs class whose
    fields all have defaults (any types the spec loader reads: numbers, strings, lists, mappings, nested records).
    A spec sets them under `plugin_settings: {namespace: {name: value}}`; they are structured into the record with
    `$.plugin_settings.namespace.name` in every error, and a record's `problems()` method, when it has one, returns
    its own value problems as "name: what is wrong; the fix". Compositions read them as `$namespace.name`,
    planners as `builder.setting("namespace.name")`. A dict of scalar defaults is short for a record of those
    fields. Unknown namespaces and names in a spec are errors."""


@hookspec
def register_latent_ops(register):
    """Provide operations on clean latents (e.g. `upscale`): `register(name, op)`.

    `op(latents, **params) -> latents` works on (frames, channels, height, width) clean latents.
    """


@hookspec
def register_metrics(register):
    """Provide metrics for `evs eval`: `register(name, metric)` with an `evs_framework.evaluation.metrics.Metric` of that name.

    A metric declares its family (`vbench_exact`, `vbench_port` or `proxy`; a proxy's name starts with `proxy.`),
    how a batch aggregates it, and `compute(frames, fps) -> MetricResult` over uint8 (T, H, W, 3) RGB frames.
    """


@hookspec
def register_weighted_metrics(register, weights):
    """Provide metrics that need weight files: `register(name, metric)` for those whose files are in `weights`
    (a dict from the keys of `evs_framework.evaluation.metrics.WEIGHT_FILES` to existing local paths). Never download."""


@hookspec(firstresult=True)
def resolve_weights(location, settings):
    """Find the local files for a registry weight location; the first non-None answer wins.

    `location` is a `WeightLocation` (local relative path and/or hub id); `settings` a `WeightSettings`
    (weights folders, offline flag). Return a `pathlib.Path` that exists, or None to let the next plugin try.
    A plugin that searched should append the places it looked to `settings.searched`.
    """


@hookspec
def registry_files():
    """Registry files this plugin ships (YAML laid out as registry.yaml, its presets and models): return a list of
    paths, or None. Reach files inside your package with `importlib.resources.files(__package__)`.

    Each model is named `<plugin>:<name>`, and `<name>` as well unless EVS's own registry has that name or another
    plugin gives it too. A file may use the presets of EVS's registry and of the files read before it; a `base`
    naming a model of the same file means that model.
    """


@hookspec
def required_models(entry, context):
    """Other registry entries whose weight files loading `entry` reads (a base model, a folder of configs): return a
    list of `ModelEntry`, or None for kinds you do not provide.

    Called before any model loads, so that every missing weight file of a job is reported at once. `context` is a
    `LoadContext`; use it to look at where files are (`context.weights_path`), never to load them.
    """


@hookspec
def entry_problems(entry, names):
    """Check a registry entry of a backend kind you provide when the registry loads: return a list of problems, each
    beginning with the entry's field it is about (`options.scale: expected a number...`; the host adds the file, line
    and entry), an empty list when it is fine, or None for kinds you do not provide. `names` are every model name of
    the registry, for options that name another entry. `evs_framework.registry_checks.option_problems` checks options
    against an attrs class.
    """


@hookspec
def plan_extras(spec, plan, context):
    """Add work to a plan that its ops do not show (a pass over the source, say): return an
    `evs_framework.plan.PlanExtra` (its UNet calls count in the totals, its memory is shown), or None.

    `context` is a `LoadContext` for finding weights folders and configs (never for loading weights), or None when
    the plan is made without one. Raise `PlanError` for settings that cannot run (a cache over its limit, say).
    """


@hookspec
def video_start(video):
    """Prepare one video: called after its models are loaded and its prompts encoded, before its plan runs.

    `video` is an `evs_framework.runner.VideoRun` (spec, plan, backends, denoisers, clean source latents, generator,
    catalogue). Whatever a plugin changes here (attention processors, say) it undoes in `video_end`.
    """


@hookspec
def video_end(video):
    """Undo `video_start` for `video`; called whether its plan finished or failed."""


@hookspec
def step_start(video, op, step, sigma):
    """Before each denoising step of op `op` (`step` counts from 0 within the op) at noise level `sigma`."""


@hookspec
def step_end(video, op, step, sigma, latents):
    """Observe the latent after each denoising step of op `op` (`step` counts from 0 within the op), now at `sigma`."""


@hookspec
def video_done(result):
    """Observe a finished video (`result` is an `evs_framework.runner.VideoResult`)."""
