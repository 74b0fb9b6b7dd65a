"""The plan as text, for `evs plan` and the logs."""

from __future__ import annotations

from evs_framework.plan import ConvertOp, DenoiseOp, ForkOp, LatentOp, Plan, TransferOp, untrained_timesteps


def _sigma(value: float | None) -> str:
    return "clean" if not value else f"{value:.4f}"


def _noise(preset) -> str:
    """The model's noise schedule and prediction type in words."""
    params = "".join(f", {k} {v}" for k, v in preset.schedule_params.items())
    schedule = f"{preset.beta_schedule} betas{params}" if preset.schedule == "betas" else f"{preset.schedule}{params}"
    return schedule if preset.prediction == "epsilon" else f"{schedule}, {preset.prediction} prediction"


def _calls(op) -> str:
    return f"{op.unet_calls} ({op.windows} windows)" if op.windows > 1 and op.unet_calls else str(op.unet_calls)


def format_plan(plan: Plan, title: str = "") -> str:
    heading = ", ".join(part for part in (title, f"counted for {plan.frames}-frame clips" if plan.frames else "") if part)
    lines = [f"plan: composition {plan.composition}" + (f"  ({heading})" if heading else ""), "models:"]
    converts = any(isinstance(op, ConvertOp) for op in plan.ops)
    for role, m in plan.models.items():
        s = m.schedule
        upscale = f", latents x{m.choice.upscale:g} ({m.choice.upscale_mode})" if m.choice.upscale != 1.0 else \
            ", at the source size" if m.choice.source_size else ""
        params = f" ({', '.join(f'{k} {v:g}' for k, v in m.sampler_params.items())})" if m.sampler_params else ""
        space = m.entry.preset.latent_space
        latents = (f", latent space {space.name} ({space.channels} channels, /{space.spatial}"
                   + (f", frames /{space.temporal}" if space.temporal > 1 else "") + ")") if converts else ""
        context = f", context windows of {m.context.frames} frames (overlap {m.context.overlap})" if m.context else ""
        lines.append(f"  {role}: {m.entry.name} [{m.entry.kind}] {_noise(m.entry.preset)}, {s.steps} steps "
                     f"({s.spacing} spacing), sampler {m.sampler}{params}, guidance {m.guidance:g}{upscale}{latents}"
                     f"{context}")
    rows = [("#", "stage", "op", "model", "detail", "sigma", "timesteps (model's scale)", "steps", "unet calls")]
    for i, op in enumerate(plan.ops, 1):
        name = plan.models[op.model].entry.name
        if isinstance(op, ConvertOp):
            rows.append((i, op.stage + 1, "convert", name, f"{op.source_space} -> {op.target_space}: {op.cost}", "clean",
                         "-", "-", 0))
        elif isinstance(op, LatentOp):
            detail = " ".join(f"{k}={v}" for k, v in op.params.items())
            rows.append((i, op.stage + 1, op.name, name, detail, "clean", "-", "-", 0))
        elif isinstance(op, TransferOp):
            schedule = plan.models[op.model].schedule
            timestep = schedule.timestep_of_level(op.level)
            if op.sigma_to != schedule.levels[op.level]:  # an off-grid entry, above the level
                where = f"off grid (t={schedule.train.timestep_at(op.sigma_to):g})"
            else:
                where = f"level {op.level}" + (f" (t={timestep:g})" if timestep is not None else "")
            rows.append((i, op.stage + 1, "transfer", name, op.strategy,
                         f"{_sigma(op.sigma_from)} -> {_sigma(op.sigma_to)}", where, op.evaluations or "-",
                         _calls(op)))
        elif isinstance(op, DenoiseOp):
            preset = plan.models[op.model].entry.preset
            trained = ""
            if preset.trained_timesteps:
                off = untrained_timesteps(preset, op.timesteps)
                trained = f", off trained t={' '.join(map(str, off))}" if off else ", on trained levels"
            levels = f"levels {op.first_level}..{op.stop_level}"
            if op.off_grid:
                levels = "off grid" + (f", then {levels}" if op.stop_level > op.first_level else f" -> level {op.first_level}")
            rows.append((i, op.stage + 1, "denoise", name, f"{levels}{trained}",
                         f"{_sigma(op.sigmas[0])} -> {_sigma(op.sigmas[-1])}",
                         " ".join(f"{t:g}" for t in op.timesteps), op.steps, _calls(op)))
        elif isinstance(op, ForkOp):
            rows.append((i, op.stage + 1, "fork", name, f"{op.latent} -> {', '.join(op.copies)}", _sigma(op.sigma), "-",
                         "-", 0))
        else:
            mix = "mean" if len(set(op.weights)) == 1 else "weights " + " ".join(f"{w:g}" for w in op.weights)
            rows.append((i, op.stage + 1, "merge", name, f"{', '.join(op.merged)} -> {op.latent} ({mix})",
                         _sigma(op.sigma), "-", "-", 0))
    if plan.branches:  # a column naming the latent each op works on
        rows = [rows[0][:3] + ("latent",) + rows[0][3:]] + [row[:3] + (op.latent,) + row[3:]
                                                             for row, op in zip(rows[1:], plan.ops)]
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(rows[0]) - 1)]
    for row in rows:
        lines.append("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)) + f"  {row[-1]}")
    for extra in plan.extras:
        calls = ", ".join(f"{n} {role} unet calls" for role, n in extra.unet_calls.items()) or "no unet calls"
        memory = "" if extra.memory_bytes is None else f", holds {extra.memory_bytes / 2**20:.1f} MiB"
        lines.append(f"  + {extra.name}: {extra.detail} ({calls}{memory})")
    lines.append("totals (unet calls count both halves of classifier-free guidance):")
    total_calls = 0
    for role, t in plan.totals().items():
        inversion = f", {t['inversion_steps']} inversion steps" if t["inversion_steps"] else ""
        lines.append(f"  {role} {plan.models[role].entry.name}: {t['steps']} denoising steps{inversion}, {t['unet_calls']} unet calls")
        total_calls += t["unet_calls"]
    lines.append(f"  all models: {total_calls} unet calls")
    if plan.branches:
        by_latent: dict[str, int] = {}
        for op in plan.ops:
            by_latent[op.latent] = by_latent.get(op.latent, 0) + getattr(op, "unet_calls", 0)
        lines.append("  by latent: " + ", ".join(f"{name} {calls}" for name, calls in by_latent.items()))
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)
