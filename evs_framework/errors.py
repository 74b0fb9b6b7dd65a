"""Errors that reach the user. Each message names the problem and the fix in one sentence."""

from __future__ import annotations


class EVSError(Exception):
    """Base of every error EVS reports to the user (the CLI prints it without a traceback)."""


class SpecError(EVSError):
    """A spec or config is malformed. Holds every problem found, each with its path (e.g. `$.stable_steps[0]`)."""

    def __init__(self, problems: list[str], source: str = "spec"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


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


class LoadError(EVSError):
    """A job's models did not load (damaged weights, a backend's failure): every video of the process fails with it."""


class VideoError(EVSError):
    """An input video is missing, unreadable or unusable, or an output could not be written."""


class NumericalError(EVSError):
    """Latents became NaN or infinite; the message names the op and the noise level."""


def did_you_mean(name: str, choices) -> str:
    """' (did you mean X?)' for the closest choices, or the full list when nothing is close."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if close:
        return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    return f" (known: {', '.join(choices) if choices else 'none'})"


def short_repr(value, limit: int = 80, quote: bool = True) -> str:
    """repr(value) (str(value) without `quote`) cut to `limit` characters, so an error never echoes a huge input."""
    text = repr(value) if quote else str(value)
    return text if len(text) <= limit else f"{text[:limit - 15]}... ({len(text)} chars)"


def unknown_parameters(what: str, known, given, where: str) -> list[str]:
    """A problem for each key of `given` that `what` (e.g. "sampler 'ddim'") does not take."""
    listed = ", ".join(sorted(known)) or "none"
    return [f"{where}.{key}: {what} has no parameter {key!r} (its parameters: {listed})" for key in given if key not in known]
