"""structlog set-up; only the CLI calls it, so importing EVS never changes a host program's logging."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # looked up per logger, so a replaced sys.stderr (tests, notebooks) is honoured
        logger_factory=lambda *args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    # diffusers and transformers announce every load and cast; keep their errors only (their own set-up would
    # reset a plain logging level on first use, so their verbosity functions are used)
    import diffusers.utils.logging
    import transformers.utils.logging

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.set_verbosity(logging.ERROR if verbosity <= 0 else logging.INFO)
        if verbosity <= 0:
            library.disable_progress_bar()
