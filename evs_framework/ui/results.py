"""What a finished run leaves for the page, beside the runner's own outputs: its measures, a labelled view (input |
output, and the ground truth of a toy clip), a contact sheet and the spec that reproduces it; and the view that puts
several runs side by side."""

from __future__ import annotations

from pathlib import Path

from evs_framework.ui import framework
from evs_framework.ui.session import Form, RunRecord, spec_text


def record_run(bench: framework.Workbench, form: Form, prepared: framework.Prepared, written: framework.Written,
               toy: framework.ToyClip | None) -> RunRecord:
    folder, output = written.output.parent, written.output
    stem = output.name.removesuffix(".mp4")
    frames = prepared.frames
    panels = [("input", framework.read_frames(form.video, frames)), (f"output ({form.composition})",
                                                                       framework.read_frames(output))]
    if toy is not None:
        panels.append(("ground truth", toy.held_out.truth[:frames]))
    view = framework.write_view(folder / f"{stem}.view.mp4", panels, framework.probe(output).fps)
    sheet = framework.write_contact_sheet(folder / f"{stem}.contact_sheet.png", panels)
    scores = framework.toy_scores(toy, output, frames) if toy is not None else {}
    scores.update(framework.reference_free_scores(bench, output))
    spec = framework.write_text(folder / f"{folder.name}.yaml", spec_text(form))
    files = (output, output.with_name(f"{stem}.side_by_side.mp4"), written.sidecar, folder / "metrics.json",
             folder / "metrics.csv", view, sheet, spec)
    return RunRecord(folder.name, form.video.name, form.composition, {"idm": form.t2i, "vdm": form.t2v},
                     {**form.settings, "seed": form.seed, "frames": frames}, written.seconds, prepared.unet_calls,
                     scores, output, view, sheet, spec, tuple(path for path in files if path.is_file()))


def compare_view(runs: list[RunRecord], folder: Path) -> Path:
    """The chosen runs' outputs side by side, each labelled with its run and composition."""
    panels = [(f"{run.label} {run.composition}", framework.read_frames(run.output)) for run in runs]
    name = "_".join(run.label for run in runs)
    return framework.write_view(Path(folder) / f"{name}.mp4", panels, framework.probe(runs[0].output).fps)
