"""`evs ui`: the page. A clip (a toy clip, or an upload), a prompt, the models, a composition and its knobs on the
left; the plan, recomputed on every change, and the run with its progress on the right; below, the result (a
labelled side-by-side video, the measures, a contact sheet, the files and the spec that reproduces the run), the
session's runs side by side, and every registry model with what it needs to run here."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr

from evs_framework.ui import framework, tables
from evs_framework.ui.results import compare_view, record_run
from evs_framework.ui.session import (Finished, Form, Sessions, follow, kept_upload, new_run_folder, spec_data,
                                      upload_problem)

TOY_CLIPS = 4
MAX_FRAMES = 64  # the page's frames knob; a run of more is for `evs run`
SOURCES = ("toy clip", "upload")


class Page:
    """The app's state across sessions: the workbench, the toy clips, the output folder and the one run at a time
    the machine does."""

    def __init__(self, bench: framework.Workbench, root: Path, run_flags: str = ""):
        self.bench, self.root, self.run_flags = bench, Path(root), run_flags
        self.toys = {str(clip.video): clip for clip in framework.toy_clips(self.root / "toy_clips", TOY_CLIPS)}
        self.statuses = framework.model_statuses(bench)
        self.sessions = Sessions()
        self.busy = threading.Lock()

    @property
    def runs_folder(self) -> Path:
        return self.root / "runs"

    def form(self, source, toy, upload, prompt, t2i, t2v, composition, idm_mode, vdm_mode, idm_mode_2, idm_strength,
             vdm_strength, stable_steps, stable_num, seed, frames) -> Form:
        video = Path(toy) if source == SOURCES[0] and toy else Path(upload) if source == SOURCES[1] and upload else None
        settings = {"idm_invert_mode": idm_mode, "vdm_invert_mode": vdm_mode, "idm_invert_mode_2": idm_mode_2,
                    "idm_inverse_strength": idm_strength, "vdm_inverse_strength": vdm_strength,
                    "stable_steps": stable_steps, "stable_num": int(stable_num)}
        return Form(video, prompt, t2i, t2v, composition, settings, int(seed or 0), int(frames))

    def steps_of(self, name: str) -> int:
        return next((s.steps for s in self.statuses if s.name == name), 0)

    # handlers: each takes the form's values as the page sends them

    def show_plan(self, *values):
        form = self.form(*values)
        if form.video is None:
            return "", "Pick a toy clip or upload a video.", _message("")
        try:
            prepared = framework.prepare(self.bench, spec_data(form, self.runs_folder / "next"))
        except framework.EVSError as exc:
            return "", "", _message(str(exc))
        guess = tables.estimate(prepared.unet_calls, prepared.frames, prepared.size,
                                tables.read_sidecars(self.runs_folder))
        return prepared.plan_text, tables.plan_summary(prepared.unet_calls, prepared.frames, prepared.size, guess), \
            _message("")

    def knob_ranges(self, t2i, t2v, idm_strength):
        t2v_steps = self.steps_of(t2v)
        return (gr.update(info=tables.stable_steps_info(t2i, self.steps_of(t2i), idm_strength)),
                gr.update(maximum=max(1, t2v_steps), info=tables.stable_num_info(t2v, t2v_steps)))

    def pick_source(self, source, toy, upload):
        video = toy if source == SOURCES[0] else upload
        return (gr.update(visible=source == SOURCES[0]), gr.update(visible=source == SOURCES[1]), video,
                gr.update(value=self.toys[toy].prompt) if source == SOURCES[0] and toy else gr.update())

    def describe_clip(self, source, toy, upload, frames) -> str:
        video = toy if source == SOURCES[0] else upload
        return tables.clip_note(Path(video).name, framework.probe(Path(video)), int(frames)) if video else ""

    def uploaded(self, path):
        """The upload kept; a file that cannot be an input is dropped, with the CLI's message, for another try."""
        if not path:
            return gr.update(), None, None, _message("")
        problem = upload_problem(Path(path))
        if problem:
            return None, None, None, _message(problem)
        kept = kept_upload(Path(path), self.root / "uploads")
        return gr.update(), str(kept), str(kept), _message("")

    def run(self, request: gr.Request, *values):
        """Checks and plans, then runs on a thread, showing each denoising step; the result, or why there is none."""
        session = self.sessions.get(request.session_hash)
        form = self.form(*values)
        if form.video is None:
            yield {self.progress: "", self.message: _message("Pick a toy clip or upload a video first.")}
            return
        if not self.busy.acquire(blocking=False):
            yield {self.message: _message("Another run is in progress (one at a time on this machine); wait for it, "
                                          "or cancel it in its page.")}
            return
        started = False  # from then on the run's thread frees the machine when it ends
        try:
            prepared = self._prepared(form)
            session.cancel = threading.Event()
            yield {self.progress: "**Running**: loading the models and encoding the clip", self.message: _message("")}
            started = True
            for item in follow(lambda listener: self._run_then_free(prepared, listener), session.cancel):
                if isinstance(item, Finished):
                    finished = item
                else:
                    yield {self.progress: tables.progress_text(item)}
            if finished.error is not None:
                raise finished.error
            yield {self.progress: "**Measuring** the output and writing the views"}
            record = record_run(self.bench, form, prepared, finished.result, self.toys.get(str(form.video)))
            session.runs.append(record)
            yield self.shown(record, session)
        except framework.RunCancelled:
            yield {self.progress: f"**Cancelled**: nothing was written{_removed(prepared.output.parent)}"}
        except framework.EVSError as exc:
            yield {self.progress: "", self.message: _message(str(exc))}
        finally:
            if session.cancel is not None:
                session.cancel.set()  # the page went away mid-run: the thread stops at its next step
            session.cancel = None
            if not started:
                self.busy.release()

    def _prepared(self, form: Form) -> framework.Prepared:
        """The run checked and planned in a new run folder, which goes again when the run cannot be planned."""
        folder = new_run_folder(self.runs_folder)
        try:
            return framework.prepare(self.bench, spec_data(form, folder))
        except framework.EVSError:
            folder.rmdir()
            raise

    def _run_then_free(self, prepared: framework.Prepared, listener):
        """The run, on its thread; the machine takes the next run when it ends, even one whose page went away."""
        try:
            return framework.run(self.bench, prepared, listener)
        finally:
            self.busy.release()

    def shown(self, record, session) -> dict:
        headers, rows = tables.run_rows(session.runs)
        command = f"evs run {record.spec.name}{' ' + self.run_flags if self.run_flags else ''}"
        return {self.progress: f"**Done** in {record.seconds:.1f} s; its files are in {record.output.parent}",
                self.view: str(record.view), self.scores: {"headers": tables.SCORE_HEADERS,
                                                           "data": tables.score_rows(record.scores)},
                self.sheet: str(record.contact_sheet), self.files: [str(path) for path in record.files],
                self.spec_button: gr.update(value=str(record.spec), interactive=True),
                self.reproduce: f"The same run from a shell: `{command}` (with the spec downloaded)",
                self.runs: {"headers": headers, "data": rows},
                self.chosen: gr.update(choices=[run.label for run in session.runs])}

    def cancel(self, request: gr.Request):
        session = self.sessions.get(request.session_hash)
        if session.cancel is None:
            return "Nothing is running."
        session.cancel.set()
        return "**Cancelling**: the run stops at its next denoising step"

    def compare(self, labels, request: gr.Request):
        runs = [run for run in self.sessions.get(request.session_hash).runs if run.label in (labels or [])]
        if len(runs) < 2:
            return None, _message("Pick two runs or more to compare.")
        return str(compare_view(runs, self.root / "compare")), _message("")

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="EVS", analytics_enabled=False) as blocks:
            gr.Markdown("# EVS: a T2I and a T2V model in one denoising trajectory\nPick a clip, models and a "
                        "composition; the plan follows every change. The toy models ship with EVS and run on a CPU.")
            upload_kept = gr.State(None)
            with gr.Tab("Run"):
                with gr.Row():
                    source, toy, upload, preview, frames, clip_note, prompt = self._clip_column()
                    t2i, t2v, composition, idm_mode, vdm_mode, idm_mode_2, idm_strength, vdm_strength, stable_steps, \
                        stable_num, seed = self._knobs_column()
                    with gr.Column():
                        summary = gr.Markdown(elem_id="evs-plan-summary")
                        plan_problems = gr.Textbox(label="The plan's problems", visible=False, lines=4,
                                                   elem_id="evs-plan-problems")
                        self.message = gr.Textbox(label="Problems", visible=False, lines=4, elem_id="evs-message")
                        with gr.Row():
                            run = gr.Button("Run", variant="primary", elem_id="evs-run")
                            cancel = gr.Button("Cancel", variant="stop", elem_id="evs-cancel")
                        self.progress = gr.Markdown(elem_id="evs-progress")
                plan = gr.Code(label="Plan (as `evs plan` prints it)", interactive=False, elem_id="evs-plan")
                self._result_rows()
            with gr.Tab("Compare runs"):
                compare, compared = self._compare_tab()
            with gr.Tab("Models"):
                gr.Markdown(tables.models_markdown(self.statuses), elem_id="evs-models")

            form = [source, toy, upload_kept, prompt, t2i, t2v, composition, idm_mode, vdm_mode, idm_mode_2,
                    idm_strength, vdm_strength, stable_steps, stable_num, seed, frames]
            plan_outputs = [plan, summary, plan_problems]
            gr.on([c.change for c in form], self.show_plan, form, plan_outputs, trigger_mode="always_last",
                  show_progress="minimal")
            blocks.load(self.show_plan, form, plan_outputs)
            gr.on([t2i.change, t2v.change, idm_strength.change], self.knob_ranges, [t2i, t2v, idm_strength],
                  [stable_steps, stable_num])
            clip = [source, toy, upload_kept]
            gr.on([source.change, toy.change], self.pick_source, clip, [toy, upload, preview, prompt])
            gr.on([source.change, toy.change, upload_kept.change, frames.change], self.describe_clip, clip + [frames],
                  clip_note)
            upload.upload(self.uploaded, upload, [upload, upload_kept, preview, self.message])
            upload.clear(lambda: (None, None), None, [upload_kept, preview])
            run_outputs = [self.progress, self.message, self.view, self.scores, self.sheet, self.files,
                           self.spec_button, self.reproduce, self.runs, self.chosen]
            # the progress line says where the run is: no loading overlay (and its timer) over every output
            run.click(self.run, form, run_outputs, show_progress="hidden").then(self.show_plan, form, plan_outputs,
                                                                                show_progress="hidden")
            cancel.click(self.cancel, None, self.progress, concurrency_limit=None)
            compare.click(self.compare, self.chosen, [compared, self.message])
        return blocks

    def _clip_column(self) -> tuple:
        """(source, toy, upload, preview, frames, clip_note, prompt)"""
        first = next(iter(self.toys))
        with gr.Column():
            source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Clip", elem_id="evs-source")
            toy = gr.Dropdown([(f"{Path(path).stem}: {clip.prompt}", path) for path, clip in self.toys.items()],
                              value=first, label="Toy clip (held out, degraded; shown beside its ground truth)",
                              elem_id="evs-toy")
            upload = gr.File(label="Your video", visible=False, elem_id="evs-upload")
            preview = gr.Video(first, label="Input", interactive=False, height=256, elem_id="evs-input")
            frames = gr.Slider(1, MAX_FRAMES, value=16, step=1, label="frames (video.max_frames)",
                               info=f"frames read from the clip: 1 to {MAX_FRAMES}", elem_id="evs-frames")
            clip_note = gr.Markdown(tables.clip_note(Path(first).name, framework.probe(Path(first)), 16),
                                    elem_id="evs-clip-note")
            prompt = gr.Textbox(self.toys[first].prompt, label="Prompt", elem_id="evs-prompt")
        return source, toy, upload, preview, frames, clip_note, prompt

    def _knobs_column(self) -> tuple:
        """(t2i, t2v, composition, idm_mode, vdm_mode, idm_mode_2, idm_strength, vdm_strength, stable_steps,
        stable_num, seed)"""
        defaults, models = framework.TOY_SETTINGS, framework.TOY_MODELS
        t2i_steps, t2v_steps = self.steps_of(models["idm"]), self.steps_of(models["vdm"])
        modes = framework.invert_modes(self.bench)
        with gr.Column():
            t2i = gr.Dropdown(tables.model_choices(self.statuses, "t2i"), value=models["idm"], label="T2I model (idm)",
                              elem_id="evs-t2i")
            t2v = gr.Dropdown(tables.model_choices(self.statuses, "t2v"), value=models["vdm"], label="T2V model (vdm)",
                              elem_id="evs-t2v")
            composition = gr.Dropdown(framework.composition_names(self.bench), value="IDM_VDM_IDM",
                                      label="Composition", elem_id="evs-composition")
            idm_strength = gr.Slider(0.05, 1, value=defaults["idm_inverse_strength"], step=0.05,
                                     label="idm_inverse_strength", elem_id="evs-idm-strength",
                                     info="(0, 1]: the fraction of the T2I's schedule to run")
            vdm_strength = gr.Slider(0.05, 1, value=defaults["vdm_inverse_strength"], step=0.05,
                                     label="vdm_inverse_strength", elem_id="evs-vdm-strength",
                                     info="(0, 1]: where the T2V's window starts in its schedule")
            stable_steps = gr.Textbox(", ".join(map(str, defaults["stable_steps"])), label="stable_steps",
                                      elem_id="evs-stable-steps", info=tables.stable_steps_info(
                                          models["idm"], t2i_steps, defaults["idm_inverse_strength"]))
            stable_num = gr.Slider(1, t2v_steps, value=defaults["stable_num"], step=1, label="stable_num",
                                   info=tables.stable_num_info(models["vdm"], t2v_steps), elem_id="evs-stable-num")
            with gr.Accordion("Transfers and seed", open=False):
                idm_mode = gr.Dropdown(modes, value=defaults["idm_invert_mode"], label="idm_invert_mode")
                vdm_mode = gr.Dropdown(modes, value=defaults["vdm_invert_mode"], label="vdm_invert_mode")
                idm_mode_2 = gr.Dropdown(modes, value=defaults["idm_invert_mode_2"], label="idm_invert_mode_2")
                seed = gr.Number(23, label="seed", precision=0, minimum=0, elem_id="evs-seed")
        return (t2i, t2v, composition, idm_mode, vdm_mode, idm_mode_2, idm_strength, vdm_strength, stable_steps,
                stable_num, seed)

    def _result_rows(self) -> None:
        with gr.Row():
            self.view = gr.Video(label="input | output | ground truth", show_label=False, interactive=False,
                                 loop=True, elem_id="evs-view")
            self.sheet = gr.Image(label="Contact sheet (every second frame)", type="filepath", interactive=False,
                                  elem_id="evs-sheet")
        with gr.Row():
            self.scores = gr.Dataframe(headers=tables.SCORE_HEADERS, label="Measures (input and output)",
                                       interactive=False, max_height=800, scale=3, elem_id="evs-scores")
            with gr.Column(scale=2):
                self.files = gr.File(label="Outputs", file_count="multiple", interactive=False, elem_id="evs-files")
                self.spec_button = gr.DownloadButton("Download the spec", interactive=False, elem_id="evs-spec")
                self.reproduce = gr.Markdown(elem_id="evs-reproduce")

    def _compare_tab(self) -> tuple:
        """(the compare button, the video it fills)"""
        self.runs = gr.Dataframe(headers=tables.RUN_HEADERS, label="This session's runs", interactive=False,
                                 wrap=True, elem_id="evs-runs")
        self.chosen = gr.Dropdown([], multiselect=True, label="Runs to show side by side", elem_id="evs-chosen")
        compare = gr.Button("Show side by side", elem_id="evs-compare")
        compared = gr.Video(label="The runs' outputs", show_label=False, interactive=False, loop=True,
                            elem_id="evs-compared")
        return compare, compared


def _message(text: str):
    return gr.update(value=text, visible=bool(text))


def _removed(folder: Path | None) -> str:
    """Removes the run's folder when nothing was written in it; says so when something was."""
    if folder is None or not folder.is_dir():
        return ""
    left = sorted(p.name for p in folder.iterdir())
    if left:
        return f" (the run's folder {folder} holds {', '.join(left)})"
    folder.rmdir()
    return ""


def serve(bench: framework.Workbench, root: Path, host: str, port: int, run_flags: str = "") -> None:
    """Builds the page and serves it until interrupted."""
    page = Page(bench, root, run_flags)
    page.build().queue().launch(server_name=host, server_port=port, ssr_mode=False, allowed_paths=[str(page.root)],
                                footer_links=[], show_error=True)
