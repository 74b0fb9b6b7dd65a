"""Paths a user gives: made absolute without failing on a link that loops, and why one is no readable file."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def resolved(path) -> Path:
    """`path` made absolute with its links followed; one whose links loop or cannot be followed is only made
    absolute, so that the check that reads it says why it cannot be read."""
    path = Path(path)
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # Python before 3.13 raises RuntimeError for a link loop
        return Path(os.path.abspath(path))


def unreadable_reason(path) -> str | None:
    """Why `path` is not a file that can be read, in words ("does not exist", "is a symbolic link that loops", ...);
    None when it is one."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link that loops back on itself (directly or through other links)"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        if exc.errno == errno.ENOENT:
            return "does not exist"
        if exc.errno == errno.EACCES:
            return "cannot be reached (permission denied on a folder on its way)"
        return f"cannot be opened ({exc.strerror})"
    if path.is_dir():
        return "is a folder, not a file"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None if path.is_file() else "is not a regular file"
