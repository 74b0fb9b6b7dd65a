"""The page's state: what the form holds, as a spec; the runs of each browser session; the run in flight, which runs
on a thread of its own and can be cancelled between denoising steps."""

from __future__ import annotations

import hashlib
import queue
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterator

import attrs
import yaml

from evs_framework.ui.framework import EVSError, RunCancelled, StepEvent, probe

MAX_UPLOAD_MIB = 500


@attrs.frozen
class Form:
    """The page's choices for one run."""

    video: Path | None  # the toy clip picked or the upload kept; None: none yet
    prompt: str
    t2i: str
    t2v: str
    composition: str
    settings: dict  # the composition's settings by their spec names, stable_steps as the text typed
    seed: int
    frames: int


def parse_steps(text: str) -> list:
    """`stable_steps` as typed ("8, 3"): whole numbers become ints, anything else stays as typed, so that the spec's
    check reports it with its path."""
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    return [int(item) if item.lstrip("-").isdigit() else item for item in items]


def spec_data(form: Form, output_dir: Path | None = None) -> dict:
    """The native spec the form asks for (README: Specs); `output_dir` None leaves `output.dir` out, as a spec to share
    does (`evs run` then writes to ./outputs/<spec name>)."""
    settings = {**form.settings, "stable_steps": parse_steps(form.settings["stable_steps"])}
    data = {"inputs": [{"video": str(form.video or ""), "prompt": form.prompt}],
            "models": {"idm": {"name": form.t2i}, "vdm": {"name": form.t2v}},
            "composition": form.composition, "settings": settings, "seed": form.seed,
            "video": {"max_frames": form.frames}}
    if output_dir is not None:
        data["output"] = {"dir": str(output_dir)}
    return data


def spec_text(form: Form) -> str:
    """The spec to download: what the run ran, for `evs run`."""
    return ("# made by `evs ui`; the same run: evs run THIS_FILE (outputs go to ./outputs/<this file's name>)\n"
            + yaml.safe_dump(spec_data(form), sort_keys=False, allow_unicode=True))


def upload_problem(upload: Path, max_mib: float = MAX_UPLOAD_MIB) -> str | None:
    """Why an uploaded file cannot be a run's input (the CLI's message for one that is not a readable video), or
    None."""
    size = Path(upload).stat().st_size
    if size > max_mib * 2**20:
        return (f"{Path(upload).name} is {size / 2**20:.0f} MiB, more than the {max_mib:g} MiB this page takes; cut "
                f"it shorter (a run reads only its first video.max_frames frames), or run it with `evs run`")
    try:
        probe(upload)
    except EVSError as exc:
        return str(exc)
    return None


def kept_upload(upload: Path, folder: Path) -> Path:
    """A copy of an upload under `folder`, named by its content (the page's own temporary copy goes away, the spec
    that reproduces a run needs the file to stay), keeping its file name (outputs are named after it)."""
    digest = hashlib.sha256()
    with open(upload, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    kept = Path(folder) / digest.hexdigest()[:16] / Path(upload).name
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(upload, kept)
    return kept


def new_run_folder(root: Path) -> Path:
    """The next free `run-NNN` folder under `root`, made."""
    Path(root).mkdir(parents=True, exist_ok=True)
    number = 1 + max((int(p.name[4:]) for p in Path(root).glob("run-*") if p.name[4:].isdigit()), default=0)
    while True:
        folder = Path(root) / f"run-{number:03d}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


@attrs.frozen
class RunRecord:
    """A finished run of the session, with what the page shows of it."""

    label: str  # the run folder's name
    clip: str
    composition: str
    models: dict[str, str]  # role -> registry name
    settings: dict  # what the form held, with seed and frames
    seconds: float
    unet_calls: dict[str, int]
    scores: dict[str, dict]
    output: Path
    view: Path
    contact_sheet: Path
    spec: Path
    files: tuple[Path, ...]  # everything to download


@attrs.define
class Session:
    runs: list[RunRecord] = attrs.Factory(list)
    cancel: threading.Event | None = None  # the run in flight's


class Sessions:
    """Each browser session's state, by gradio's session hash."""

    def __init__(self):
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Session:
        with self._lock:
            return self._sessions.setdefault(key, Session())


@attrs.frozen
class Finished:
    """How the work on the thread ended: its result, or the exception it raised (RunCancelled when cancelled)."""

    result: object = None
    error: BaseException | None = None


def follow(work: Callable[[Callable[[StepEvent], None]], object], cancel: threading.Event
           ) -> Iterator[StepEvent | Finished]:
    """Runs `work(listener)` on a thread and yields each StepEvent it tells the listener, then how it finished. The
    listener raises RunCancelled once `cancel` is set, which stops the work at its next denoising step."""
    events: queue.Queue = queue.Queue()

    def listener(event: StepEvent) -> None:
        if cancel.is_set():
            raise RunCancelled()
        events.put(event)

    def target() -> None:
        try:
            events.put(Finished(result=work(listener)))
        except BaseException as exc:  # noqa: BLE001 - handed to the page, which says what happened
            events.put(Finished(error=exc))

    threading.Thread(target=target, name="evs-ui-run", daemon=True).start()
    while True:
        item = events.get()
        yield item
        if isinstance(item, Finished):
            return
