"""Which training backend this machine can use.

Unsloth patches transformers, TRL and PEFT when it is imported, so it must be imported before them:
entry points call `import_unsloth_first()` before anything else. It only imports with a CUDA GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os


@functools.cache
def unsloth_available() -> bool:
    """True when Unsloth is installed and imports (it needs a CUDA GPU)."""
    if os.environ.get("FINETUNE_NO_UNSLOTH") or importlib.util.find_spec("unsloth") is None:
        return False
    try:
        import torch  # heavy: asked once, when a model library is about to load

        if not torch.cuda.is_available():
            return False
        import unsloth  # noqa: F401  (heavy, and it patches transformers: only when usable)
    except Exception:
        return False
    return True


def default_device() -> str:
    """'cuda' when a CUDA GPU is visible, else 'cpu': where models load and train by default."""
    import torch  # heavy: the app imports this module at start

    return "cuda" if torch.cuda.is_available() else "cpu"


def import_unsloth_first() -> None:
    """Import Unsloth (if usable) before transformers/TRL/PEFT so its patches apply."""
    unsloth_available()


# Data parallelism: `accelerate launch` or `torchrun` start one process per GPU and set these. The
# Trainer does the distribution; the engine only loads each copy on its own GPU and lets the first
# process alone write the run folder and print.


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0
