"""Keep library chatter (progress bars, advisory warnings) out of what a person reads.

`drop_library_advisories()` (the app and the CLI, through `finetune.train.trainer`) drops, by logger and by
message, the few advisories a run sets off that say nothing a user can act on; every other record of
those loggers, and every error, still gets through. `quiet_libraries()` (the CLI) quiets more: its
stdout is JSON.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LIBRARY_ADVISORIES = {
    # Importing PEFT imports bitsandbytes, which on a CPU with AVX512-BF16 looks for an optional faster
    # 4-bit kernel from the `kernels` package and, without it, says so and uses its own.
    "bitsandbytes.backends.cpu.ops": ("Failed to load CPU gemm_4bit_forward from kernels-community",),
    # A BPE tokenizer whose config asks for WordPiece's space clean-up ignores it, with a warning on first
    # decode (a chat reply, an evaluation's answers).
    "transformers.tokenization_utils_tokenizers": ("Ignoring clean_up_tokenization_spaces=True for BPE tokenizer",),
}
"""Logger name -> the starts of the messages to drop from it (below ERROR only)."""


class DropAdvisories(logging.Filter):
    """Drops a logger's records below ERROR whose message starts with one of `starts`."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.getMessage().startswith(self.starts)


def drop_library_advisories() -> None:
    """Put a `DropAdvisories` on each logger of `LIBRARY_ADVISORIES` (once; before the library is imported
    too: the logger is the same object then). A logger's filter sees only records logged on it, so each
    is named exactly."""
    for name, starts in LIBRARY_ADVISORIES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, DropAdvisories) for existing in logger.filters):
            logger.addFilter(DropAdvisories(starts))


@contextmanager
def no_dataset_progress_bars() -> Iterator[None]:
    """No `datasets` progress bars within: TRL's passes over a run's rows when its trainer is built
    ("Truncating train dataset", "Dropping fully masked examples") take a second and would draw two bars
    in the terminal at every start."""
    import datasets  # heavy (pyarrow): imported by the run that needs it, not by the app at start
    from datasets.utils.logging import is_progress_bar_enabled

    shown = is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()


def quiet_libraries() -> None:
    drop_library_advisories()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging  # heavy: this runs before a command's real work

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import datasets  # heavy, and optional for the commands that never read a dataset

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass
