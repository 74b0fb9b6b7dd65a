"""`evs demo`: EVS enhancing a video, on the toy world's models that ship with EVS; no download, a CPU is enough.

As in the paper's enhance task, the input is a clip the VideoCrafter-2 analogue (toyVC) draws from a held-out
prompt: it moves as asked, but flickers, jitters and is soft. IDM_VDM_IDM runs on it with the toy T2I and T2V models
through the same code as `evs run`, and so do the T2I alone, the T2V alone and the basic composition, for
comparison. The demo writes the EVS output, a labelled side-by-side video (input | EVS), a contact sheet of every
composition, and prints each one's measures, which need no ground truth (the drawn clip has none).
"""

from __future__ import annotations

from pathlib import Path

from evs_framework.io import video_io
from evs_framework.evaluation.contact_sheet import contact_sheet, labelled, save_png
from evs_framework.toyworld import experiment

DEMO_COMPOSITIONS = ("IDM", "VDM", "basic", "IDM_VDM_IDM")
SEED = 23


def run_demo(out_dir: Path, registry, plugins, context, progress: bool = False) -> dict:
    """Every file the demo writes, and the table it prints (as text)."""
    [clip] = experiment.drawn_clips(out_dir / "input", 1, context)
    rows = experiment.source_rows([clip]) + experiment.run_compositions(
        [clip], DEMO_COMPOSITIONS, [SEED], out_dir / "runs", registry, plugins, context, progress=progress)
    outputs = {name: out_dir / "runs" / name / f"seed{SEED}" / f"{clip.video.stem}.{name}.mp4" for name in DEMO_COMPOSITIONS}
    evs_output = video_io.write_video(out_dir / "demo.IDM_VDM_IDM.mp4", experiment.read_clip(outputs["IDM_VDM_IDM"]),
                                      experiment.FPS)
    drawn = experiment.read_clip(clip.video)
    panels = [labelled(video_io.scale_to_height(frames, 256), label) for label, frames in
              (("VC2-analogue input", drawn), ("EVS (IDM_VDM_IDM)", experiment.read_clip(evs_output)))]
    side = video_io.write_video(out_dir / "demo.side_by_side.mp4", video_io.side_by_side(panels), experiment.FPS)
    sheet_rows = [("VC2-analogue input", video_io.frames_to_uint8(drawn)),
                  *((name, video_io.frames_to_uint8(experiment.read_clip(path))) for name, path in outputs.items())]
    sheet = save_png(contact_sheet(sheet_rows, every=3), out_dir / "demo.contact_sheet.png")
    summary = experiment.summarise(rows)
    return {"input": clip.video, "prompt": clip.spec.prompt, "output": evs_output, "side_by_side": side,
            "contact_sheet": sheet, "summary": summary, "table": experiment.format_table(summary, intervals=False)}
