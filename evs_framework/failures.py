"""An exception that is not one of EVS's own errors, told as one: where it was raised (which plugin, file, line and
function) and what EVS was doing, so that one video fails with a message instead of the job with a traceback.

Plugins' hooks are wrapped when they load (evs_framework.plugins), a backend's loader where it loads
(evs_framework.loading), the runner contains what is left per video, and the CLI whatever reaches it.
"""

from __future__ import annotations

import sys
import traceback

from evs_framework.errors import EVSError, PluginError

LEAVE_OUT = "fix or update the plugin, or leave it out with EVS_PLUGINS"


def raised_in(exc: BaseException, modules: dict[str, str]) -> tuple[str | None, str]:
    """(the plugin whose code raised `exc`, or None for EVS's own code or a library's; where: `file:line in
    function`) from its traceback's innermost frame in a plugin module (`modules`: plugin name -> module name)."""
    frames = traceback.extract_tb(exc.__traceback__)
    plugin_frames = [(plugin, frame) for frame, module in zip(frames, _frame_modules(exc)) for plugin, root in
                     modules.items() if module == root or module.startswith(root + ".")]
    plugin, frame = plugin_frames[-1] if plugin_frames else (None, frames[-1] if frames else None)
    where = f"{frame.filename}:{frame.lineno} in {frame.name}" if frame else "unknown place"
    return plugin, where


def _frame_modules(exc: BaseException) -> list[str]:
    modules, tb = [], exc.__traceback__
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    return modules


def told(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def failure(exc: BaseException, modules: dict[str, str], doing: str) -> EVSError:
    """`exc`, raised while `doing`, as an error that names where it came from and what to do."""
    plugin, where = raised_in(exc, modules)
    if plugin is not None:
        return PluginError(f"plugin {plugin!r} failed while {doing}: {told(exc)} ({where}); {LEAVE_OUT}")
    return EVSError(f"EVS failed while {doing}: {told(exc)} ({where}); this is a bug: please report it with the output "
                    f"of the same command run with -v")


def contained(function, plugin: str, hook: str):
    """`function` (a plugin's implementation of `hook`) raising a PluginError that names both in place of an
    exception of its own; EVS's errors, interrupts and out-of-memory errors pass as they are."""

    def call(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except EVSError:
            raise
        except Exception as exc:
            if out_of_memory(exc):
                raise
            _, where = raised_in(exc, {})
            raise PluginError(f"plugin {plugin!r} failed in its {hook} hook: {told(exc)} ({where}); {LEAVE_OUT}") from exc

    return call


def format_traceback(exc: BaseException) -> str:
    """The traceback as plain text, for the debug log (a renderer's rich traceback takes seconds on torch's stack)."""
    return "".join(traceback.format_exception(exc))


def out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(exc, MemoryError) or (torch is not None and isinstance(exc, torch.OutOfMemoryError))
