"""Errors that reach the user. Each message names the problem and the fix in one sentence."""

from __future__ import annotations


class EVSError(Exception):
    """Base of every error EVS reports to the user (the CLI prints it without a traceback)."""


class SpecError(EVSError):
    """A spec or config is malformed. Holds every problem found, each with its path (e.g. `$.stable_steps[0]`), and
    a `hint` on what to do next, printed after them."""

    def __init__(self, problems: list[str], source: str = "spec", hint: str = ""):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}" + (f"\n{hint}" if hint else ""))


class PlanError(EVSError):
    """The schedule a spec asks for cannot be run (found before any weight is loaded); holds every problem."""

    def __init__(self, problems: list[str] | str):
        if isinstance(problems, str):
            self.problems = [problems]
            super().__init__(problems)
        else:
            self.problems = list(problems)
            super().__init__(f"the schedule cannot run ({len(self.problems)} problem(s)):\n" +
                             "\n".join(f"  - {p}" for p in self.problems))


class RegistryError(EVSError):
    """A model name or registry entry is unknown or malformed."""


class RegistryFileError(SpecError, RegistryError):
    """Registry files hold values of the wrong type or range; every problem with its file, line and path."""


class PluginError(EVSError):
    """Plugins conflict (duplicate names) or a plugin is missing something it must provide."""


class WeightsError(EVSError):
    """Weights for a model could not be found or loaded."""


class LoadError(WeightsError):
    """A job's models did not load (damaged weights, a backend's failure): every video of the process fails with it."""


class VideoError(EVSError):
    """An input video is missing, unreadable or unusable, or an output could not be written."""


class NumericalError(EVSError):
    """Latents became NaN or infinite; the message names the op and the noise level."""


def did_you_mean(name: str, choices, list_all: bool = True) -> str:
    """' (did you mean X?)' for the closest choices, or the full list when nothing is close (nothing without
    `list_all`)."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if close:
        return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    return f" (known: {', '.join(choices) if choices else 'none'})" if list_all else ""


def short_repr(value, limit: int = 80, quote: bool = True) -> str:
    """repr(value) (str(value) without `quote`) cut to `limit` characters, so an error never echoes a huge input."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else f"{text[:limit - 15]}... ({len(text)} chars)"


def written(value) -> str:
    """`value` as a spec's author wrote it, named by its JSON/YAML type: `null`, `true`, `number 2.5`,
    `string '0.4'`, `a list of 3 items`, `a mapping`; Python's own names (NoneType, bool, dict) mean nothing to them."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"number {short_repr(value, quote=False)}"
    if isinstance(value, str):
        return f"string {short_repr(value)}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "a mapping"
    return f"{short_repr(value, quote=False)} (a YAML {type(value).__name__}; quote it to make it a string)"


def unknown_parameters(what: str, known, given, where: str) -> list[str]:
    """A problem for each key of `given` that `what` (e.g. "sampler 'ddim'") does not take."""
    return [f"{where}.{key}: {what} has no parameter {key!r}{did_you_mean(str(key), known)}" for key in given
            if key not in known]
