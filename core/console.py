"""What a person sees on the console: fedveil's progress lines, and no library chatter.

Warnings about our own code stay on; only messages from third-party internals (progress bars,
deprecation notes from dependencies) are filtered.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings


def progress(line: str) -> None:
    """One line a person can follow on the console (stdout, flushed)."""
    print(f"[fedveil] {line}", file=sys.stdout, flush=True)


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for module in ("transformers", "peft", "opacus", "torch", "ray", "tenseal", "crypten"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=UserWarning, module=module)
    try:
        from transformers.utils import logging as hf_logging  # lazy: the relay has no torch to quiet

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass
    quiet_loggers()


def quiet_loggers() -> None:
    """Flower sets its logger to DEBUG when imported: call this again after importing it."""
    for name in ("flwr", "alembic", "ray", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("flwr").propagate = False  # it has its own console handler
