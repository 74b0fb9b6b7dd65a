"""structlog set-up; only the CLI calls it, so importing EVS never changes a host program's logging."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # `process` in a launched job
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # looked up per logger, so a replaced sys.stderr (tests, notebooks) is honoured
        logger_factory=lambda *args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # diffusers and transformers announce every load and cast; keep their errors only. They read these variables
    # when first imported (which only commands that load a model do); one already imported is set directly.
    quiet = verbosity <= 0
    os.environ["DIFFUSERS_VERBOSITY"] = os.environ["TRANSFORMERS_VERBOSITY"] = "error" if quiet else "info"
    if quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        library = sys.modules.get(name)
        if library is not None:
            library.set_verbosity(logging.ERROR if quiet else logging.INFO)
            if quiet:
                library.disable_progress_bar()
