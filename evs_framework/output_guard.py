"""Keeping an output folder safe to share: one lock per video, cleanup after killed runs, a write check up front.

A video's outputs (`{stem}.mp4`, `{stem}.side_by_side.mp4`, `{stem}.json`) are written while its process holds
`.{stem}.lock` in the output folder: a file created with O_CREAT|O_EXCL that holds the owner's pid and host, so two
EVS processes on one folder never work on the same video (stale locks are removed under a flock of the folder). A SIGKILLed process cannot clean up after itself: its lock
and its partial files (`.{name}.{pid}.partial{suffix}`, see `video_io.atomic_path`) stay behind, and the next run on
the folder removes those whose process is no longer alive on this host. On another host a process cannot be checked,
so its lock counts as held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import time
from pathlib import Path

import attrs
import structlog

from evs_framework.errors import VideoError
from evs_framework.paths import unreadable_reason

log = structlog.get_logger(__name__)

PARTIAL_NAME = re.compile(r"^\..+\.(?P<pid>\d+)\.partial(\.[^./]+)?$")
LOCK_NAME = re.compile(r"^\..+\.lock$")
# A lock is written just after it is created; one still empty after this long was left by a killed process.
UNWRITTEN_LOCK_SECONDS = 5.0
LOCK_ATTEMPTS = 100
FOLDER_FIX = "choose another folder (output.dir in the spec, or --output-dir)"


@attrs.frozen
class LockOwner:
    pid: int
    host: str

    @classmethod
    def this_process(cls) -> LockOwner:
        return cls(os.getpid(), socket.gethostname())

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        match = re.fullmatch(r"(\d+) (\S+)\n", text)
        return cls(int(match[1]), match[2]) if match else None

    def line(self) -> str:
        return f"{self.pid} {self.host}\n"

    def alive(self) -> bool:
        """Whether the owner may still be working; on another host that cannot be checked, so it may."""
        return self.host != socket.gethostname() or pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host; a zombie (killed, not yet reaped by its parent) does not."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc to tell a zombie apart
    return state != "Z"


def lock_path(folder: Path, stem: str) -> Path:
    return folder / f".{stem}.lock"


@attrs.define
class Claim:
    """The outcome of claiming one video's outputs: held by this process (`holder` None) until `release()`, or
    held by `holder`, another process."""

    path: Path
    holder: LockOwner | None = None

    @property
    def busy_reason(self) -> str | None:
        """Why this process must leave the video alone, or None when it holds the lock."""
        if self.holder is None:
            return None
        if self.holder.host == socket.gethostname():
            return f"another evs process (pid {self.holder.pid}) is working on it"
        return (f"another evs process (pid {self.holder.pid} on host {self.holder.host}) is working on it; "
                f"if none is, delete {self.path}")

    def release(self) -> None:
        if self.holder is None:
            self.path.unlink(missing_ok=True)


def claim_stem(folder: Path, stem: str) -> Claim:
    """Takes the lock on `stem`'s outputs in `folder`, taking over a lock whose process has died; a lock held by a
    live process is left alone and named in the returned claim."""
    path = lock_path(folder, stem)
    me = LockOwner.this_process()
    for _ in range(LOCK_ATTEMPTS):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _live_holder(path)
            if holder is not None:
                return Claim(path, holder)
            continue  # the lock was released or removed as stale: try again
        with os.fdopen(fd, "w") as lock:
            lock.write(me.line())
        return Claim(path)
    raise VideoError(f"cannot take the lock {path}: it keeps changing hands; delete it if no evs process is running")


def _live_holder(path: Path) -> LockOwner | None:
    """The live owner of the existing lock at `path`; None once a stale lock was removed or the lock went away."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    holder = LockOwner.parse(text)
    if holder is None and age < UNWRITTEN_LOCK_SECONDS:
        time.sleep(0.05)  # just created; its owner is writing its pid
        return None
    if holder is not None and holder.alive():
        return holder
    if _remove_if_unchanged(path, text):
        log.warning("stale_lock_taken_over", lock=str(path), dead_pid=holder.pid if holder else None)
    return None


def _remove_if_unchanged(path: Path, text: str) -> bool:
    """Removes the lock at `path` if it still holds `text`. Every removal of a stale lock happens under an exclusive
    flock of the output folder, with the lock read again under it: between that read and the removal no other
    process can remove the lock, nor create one in its place, so a lock just taken over is never removed."""
    with _folder_flock(path.parent):
        try:
            if path.read_text() != text:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
    return True


@contextlib.contextmanager
def _folder_flock(folder: Path):
    """An exclusive flock of `folder` (released by the kernel if this process dies holding it)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_output_folder(folder: Path) -> None:
    """Creates `folder` and writes and removes a file in it, so a folder that cannot take outputs is found before
    any model loads."""
    if folder.exists() and not folder.is_dir():
        raise VideoError(f"the output folder {folder} is a file; {FOLDER_FIX}")
    if folder.is_symlink() and not folder.exists():
        raise VideoError(f"the output folder {folder} {unreadable_reason(folder)}; {FOLDER_FIX}")
    probe = folder / f".evs-write-check.{os.getpid()}.partial"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"evs")
        probe.unlink()
    except OSError as error:
        raise VideoError(f"cannot write to the output folder {folder} ({error.strerror or error}); make it writable "
                         f"or {FOLDER_FIX}") from error


def remove_leftovers(folder: Path) -> None:
    """Removes the partial files and locks that processes killed on this host left in `folder`."""
    for path in sorted(folder.iterdir()):
        partial = PARTIAL_NAME.match(path.name)
        if partial and not pid_alive(int(partial["pid"])):
            path.unlink(missing_ok=True)
            log.info("partial_file_removed", path=str(path), dead_pid=int(partial["pid"]))
        elif LOCK_NAME.match(path.name):
            _live_holder(path)


def prepare_output_folder(folder: Path) -> None:
    """What a run does to its output folder before loading anything: check it can be written, clean up after
    killed runs."""
    check_output_folder(folder)
    remove_leftovers(folder)
