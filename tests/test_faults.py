"""Faults around the output folder, with real processes: a second EVS process, SIGKILL, Ctrl-C and SIGTERM, a disk
that fills up under ffmpeg, and an output folder that cannot be written."""

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
from structlog.testing import capture_logs

from evs_framework import output_guard, runner
from evs_framework.cli import INTERRUPTED, main
from evs_framework.errors import VideoError
from evs_framework.io.video_io import write_video
from evs_framework.output_guard import LockOwner, claim_stem, lock_path, prepare_output_folder
from evs_framework.planner import make_plan
from evs_framework.runner import output_stems, run_job
from evs_framework.spec import load_spec
from evs_framework.testing.zoo import make_synthetic_clip

HOLD_LOCK = """
import sys, time
from pathlib import Path
import structlog
from evs_framework.output_guard import claim_stem
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout carries the answer
folder, stem, start_at = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
while time.time() < start_at:  # several holders race for the lock at one moment
    pass
claim = claim_stem(folder, stem)
print(claim.busy_reason or "holding", flush=True)
time.sleep(60)
"""

# Holds the lock and writes a video through imageio's ffmpeg, as process_video does, until it is SIGKILLed.
KILLED_WRITER = """
import sys, time
from pathlib import Path
import imageio.v2 as imageio
import numpy as np
from evs_framework.output_guard import claim_stem
from evs_framework.io.video_io import WRITER_SETTINGS, atomic_path
folder, stem = Path(sys.argv[1]), sys.argv[2]
claim_stem(folder, stem)
with atomic_path(folder / f"{stem}.mp4", ".mp4") as partial:
    writer = imageio.get_writer(partial, fps=8, **WRITER_SETTINGS)
    writer.append_data(np.zeros((48, 64, 3), np.uint8))
    print("writing", flush=True)
    time.sleep(60)
"""


def python(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True)


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    return result


def wait_until(condition, seconds: float) -> bool:
    """Whether `condition` holds within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def hidden_files(folder: Path) -> list[str]:
    """Locks, partial files and write probes all start with a dot."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def ffmpeg_children_after_a_moment(seconds: float = 3.0) -> list[int]:
    """The live ffmpeg children once they have had `seconds` to die (a killed process takes a moment on a busy
    machine)."""
    deadline = time.monotonic() + seconds
    while live_ffmpeg_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return live_ffmpeg_children()


def live_ffmpeg_children() -> list[int]:
    children = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat_file.read_text().rsplit(")", 1)
        except OSError:
            continue
        state, parent = rest.split()[:2]
        if int(parent) == os.getpid() and state != "Z" and "ffmpeg" in name:
            children.append(int(stat_file.parent.name))
    return children


def prepared(seed_config, folder, plugins, registry, **changes):
    spec = load_spec(seed_config(**changes))
    spec = attrs.evolve(spec, output=attrs.evolve(spec.output, dir=folder))
    return spec, make_plan(spec, registry, plugins)


def noise_frames(count: int, height: int = 96, width: int = 128) -> np.ndarray:
    """Frames that do not compress, so the file grows by tens of kilobytes a frame."""
    return np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


# --- two processes on one output folder


def test_a_second_process_skips_the_video_another_is_working_on(seed_config, zoo, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    stem = "ball.VDM"
    holder = python(HOLD_LOCK, folder, stem, 0)
    try:
        assert holder.stdout.readline().strip() == "holding"
        config = seed_config(pipeline_mode="VDM")
        code = main(["run", str(config), "--weights-dir", str(zoo), "--output-dir", str(folder), "-q"])
        out = capsys.readouterr().out
        assert code == 0
        assert f"ball.mp4: skipped (another evs process (pid {holder.pid}) is working on it)" in out
        assert "0 of 1 video(s) done" in out and "1 left to other evs processes" in out
        assert not list(folder.glob("*.mp4"))
        assert lock_path(folder, stem).read_text() == LockOwner(holder.pid, socket.gethostname()).line()
    finally:
        holder.kill()
        holder.wait()


def test_processes_racing_for_a_stale_lock_never_both_take_it(tmp_path):
    stem = "clip.IDM"
    lock = lock_path(tmp_path, stem)
    lock.write_text(LockOwner(dead_pid(), socket.gethostname()).line())
    start_at = time.time() + 1.5  # once every racer has imported what it needs
    racers = [python(HOLD_LOCK, tmp_path, stem, start_at) for _ in range(4)]
    try:
        answers = [racer.stdout.readline().strip() for racer in racers]
        assert answers.count("holding") == 1, answers
        winner = racers[answers.index("holding")]
        assert all(a == f"another evs process (pid {winner.pid}) is working on it" for a in answers if a != "holding")
        assert lock.read_text() == LockOwner(winner.pid, socket.gethostname()).line()
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()


def test_a_stale_lock_retaken_meanwhile_by_another_process_is_left_alone(tmp_path):
    """What a process that read a stale lock does when, before it removes that lock, another process has already
    taken it over: read again under the folder's flock, the lock is not the stale one it read, so it stays."""
    lock = lock_path(tmp_path, "clip.IDM")
    stale, fresh = "1 host\n", f"{os.getpid()} {socket.gethostname()}\n"
    lock.write_text(fresh)

    assert not output_guard._remove_if_unchanged(lock, stale)
    assert lock.read_text() == fresh and [p.name for p in tmp_path.iterdir()] == [lock.name]

    lock.write_text(stale)
    assert output_guard._remove_if_unchanged(lock, stale)
    assert list(tmp_path.iterdir()) == []


def test_a_lock_from_another_host_is_respected_and_named(tmp_path):
    lock = lock_path(tmp_path, "clip.IDM")
    lock.write_text("4242 render-node-7\n")

    claim = claim_stem(tmp_path, "clip.IDM")

    assert claim.holder == LockOwner(4242, "render-node-7")
    assert claim.busy_reason == (f"another evs process (pid 4242 on host render-node-7) is working on it; "
                                 f"if none is, delete {lock}")
    claim.release()
    assert lock.read_text() == "4242 render-node-7\n"  # releasing a claim that is not ours leaves the lock


# --- SIGKILL, SIGINT and SIGTERM


def test_files_a_sigkilled_writer_leaves_are_cleaned_by_the_next_run(seed_config, plugins, registry, context, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    spec, plan = prepared(seed_config, folder, plugins, registry, pipeline_mode="VDM")
    [stem] = output_stems(spec)
    writer = python(KILLED_WRITER, folder, stem)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    partial = folder / f".{stem}.mp4.{writer.pid}.partial.mp4"
    # imageio starts ffmpeg in its own process group: orphaned, it finishes the partial file on its own
    wait_for(lambda: partial.is_file() and partial.stat().st_size > 0, what="the orphaned ffmpeg to write")
    assert hidden_files(folder) == sorted([partial.name, f".{stem}.lock"])

    with capture_logs() as logs:
        [result] = run_job(spec, plan, context, progress=False)

    assert result.error is None and len(imageio.mimread(result.output)) == 8
    assert hidden_files(folder) == []
    events = {entry["event"]: entry for entry in logs}
    assert events["partial_file_removed"]["dead_pid"] == writer.pid
    assert events["stale_lock_taken_over"]["dead_pid"] == writer.pid


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_a_stopped_run_says_so_in_one_line_and_leaves_no_partial_files(seed_config, zoo, tmp_path, stop):
    # 96x72: long enough that a loaded machine does not finish the video before a signal that is not lost comes
    clip = write_video(tmp_path / "long.mp4", make_synthetic_clip(16, 96, 72), 8.0)
    folder = tmp_path / "out"
    command = [sys.executable, "-m", "evs_framework.cli", "run", str(seed_config(videos=(clip,))), "--weights-dir",
               str(zoo), "--output-dir", str(folder), "-q"]
    # a shell that starts the tests in the background hands SIGINT down ignored; a user's terminal does not
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    threading.Thread(target=lambda: lines.extend(run.stderr), daemon=True).start()
    try:
        wait_for(lambda: folder.is_dir() and any(folder.glob(".*.lock")), what="the run to start its video")
        time.sleep(0.5)
        # a signal that lands while Python forks ffmpeg (imageio's preexec_fn makes subprocess run the at-fork hooks)
        # is lost in CPython; a user presses Ctrl-C again, and so does this test, until the run says it stops (its
        # interpreter may then take seconds to free the models, and a signal then would kill it)
        for _ in range(10):
            run.send_signal(stop)
            if wait_until(lambda: INTERRUPTED + "\n" in lines or run.poll() is not None, seconds=3):
                break
        run.wait(timeout=60)
    finally:
        run.kill()
    err = "".join(lines)
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert "Traceback" not in err and err.count(INTERRUPTED) == 1
    assert hidden_files(folder) == [] and not list(folder.glob("*.mp4"))


def test_an_interrupted_write_kills_ffmpeg_and_removes_the_partial_file(tmp_path, monkeypatch):
    real_get_writer = imageio.get_writer
    killed = []
    real_kill = subprocess.Popen.kill
    monkeypatch.setattr(subprocess.Popen, "kill", lambda self: (killed.append(self.pid), real_kill(self)))

    def interrupted_on_third_frame(*args, **kwargs):
        writer = real_get_writer(*args, **kwargs)
        real_append, appended = writer.append_data, []

        def append(frame, *rest):
            if len(appended) == 2:
                raise KeyboardInterrupt
            appended.append(frame)
            real_append(frame, *rest)

        writer.append_data = append
        return writer

    monkeypatch.setattr(imageio, "get_writer", interrupted_on_third_frame)

    with pytest.raises(KeyboardInterrupt):
        write_video(tmp_path / "clip.mp4", noise_frames(6), fps=8)

    assert len(killed) == 1  # killed, not left to encode a file that is about to be deleted
    assert ffmpeg_children_after_a_moment() == []
    assert list(tmp_path.iterdir()) == []


# --- a disk that fills up under ffmpeg


def test_a_disk_that_fills_up_while_ffmpeg_writes_leaves_no_output(tmp_path, monkeypatch, capfd):
    """ffmpeg under a 20 KiB file-size limit (ulimit -f, with SIGXFSZ ignored so that writes fail with EFBIG the way
    they fail with ENOSPC on a full disk): it gets the header and some frames out, then fails writing the trailer.
    imageio does not check ffmpeg's exit status; the frame count check must catch it."""
    wrapper = tmp_path / "ffmpeg_on_full_disk.sh"
    wrapper.write_text(f"#!/bin/sh\ntrap '' XFSZ\nulimit -f 40\nexec '{imageio_ffmpeg.get_ffmpeg_exe()}' \"$@\"\n")
    wrapper.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(wrapper))
    folder = tmp_path / "out"
    path = folder / "clip.mp4"

    with pytest.raises(VideoError) as caught:
        write_video(path, noise_frames(8), fps=8)

    assert "Error writing trailer" in capfd.readouterr().err  # what ffmpeg says on a full disk
    assert str(caught.value).startswith(f"cannot write video {path}: ffmpeg cannot read back the file it wrote (")
    assert str(caught.value).endswith("; check the folder is writable and has space")
    assert list(folder.iterdir()) == []


def test_a_write_that_fails_before_any_frame_is_not_moved_into_place(tmp_path):
    """The partial file's name points at /dev/full: every write fails, ffmpeg exits early, and nothing must end up
    under the final name (before, the link itself was moved there)."""
    path = tmp_path / "clip.mp4"
    (tmp_path / f".clip.mp4.{os.getpid()}.partial.mp4").symlink_to("/dev/full")

    with pytest.raises(VideoError, match="ffmpeg wrote nothing; check the folder is writable and has space"):
        write_video(path, noise_frames(2, 32, 32), fps=8)

    assert not path.exists() and not path.is_symlink()
    assert list(tmp_path.iterdir()) == []


# --- an output folder that cannot be written, found before any model loads


@pytest.fixture
def unwritable_folder(tmp_path, request):
    """An output path that is an existing file, or a read-only folder; chmod does not stop root, so as root the
    read-only case is skipped and the file case (which fails for root too) covers the check."""
    if request.param == "a_file":
        path = tmp_path / "outputs"
        path.write_text("not a folder")
        yield path
        return
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        (folder / "probe").touch()
        writable = True
    except PermissionError:
        writable = False
    try:
        if writable:
            pytest.skip("chmod does not stop this user (root) writing; the a_file case covers the check")
        yield folder
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("unwritable_folder", ["a_file", "read_only"], indirect=True)
def test_an_unwritable_output_folder_fails_before_any_model_loads(seed_config, zoo, unwritable_folder, monkeypatch,
                                                                   capsys):
    folder = unwritable_folder
    monkeypatch.setattr(runner, "load_backends", lambda *args: pytest.fail("a model loaded"))

    code = main(["run", str(seed_config()), "--weights-dir", str(zoo), "--output-dir", str(folder), "-q"])

    err = capsys.readouterr().err
    assert code == 2
    assert str(folder) in err and "choose another folder (output.dir in the spec, or --output-dir)" in err
    assert ("is a file" if folder.is_file() else "Permission denied") in err


# --- leftovers


def test_leftovers_of_dead_processes_go_and_those_of_live_ones_stay(tmp_path):
    gone, here, host = dead_pid(), os.getpid(), socket.gethostname()
    files = {
        f".a.IDM.mp4.{gone}.partial.mp4": "x",
        f".a.IDM.json.{gone}.partial.json": "x",
        f".a.IDM.lock.{gone}.partial": "x",  # an earlier version's lock moved aside
        ".a.IDM.lock": LockOwner(gone, host).line(),
        f".b.IDM.mp4.{here}.partial.mp4": "x",
        ".b.IDM.lock": LockOwner(here, host).line(),
        ".c.IDM.lock": LockOwner(gone, "render-node-7").line(),  # another host: cannot tell, so it stays
        "a.IDM.mp4": "x",
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)

    prepare_output_folder(tmp_path)

    assert {p.name for p in tmp_path.iterdir()} == {f".b.IDM.mp4.{here}.partial.mp4", ".b.IDM.lock", ".c.IDM.lock",
                                                    "a.IDM.mp4"}
