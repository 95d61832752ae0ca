"""Export what a run trained: the LoRA adapter alone, a merged 16-bit model (the seeds'
`merged_16bit`) that loads with plain transformers, no PEFT and no bitsandbytes, or the merged model
as one GGUF file for llama.cpp / Ollama (`gguf_f16`, `gguf_q8_0`, `gguf_q4_k_m`; see gguf_export.py).

    export_model(loaded, "runs/demo/merged", "merged_16bit", run_dir="runs/demo")
    export_model(loaded, "runs/demo/gguf", "gguf_q4_k_m", run_dir="runs/demo")   # gguf/model-q4_k_m.gguf

Every export is atomic: it is written into a hidden temporary folder beside the target and moved
into place with one rename, so a failed or stopped export leaves nothing that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from finetune.adapters import read_run_record
from finetune.gguf_export import GGUF_FORMATS, GGUFExportError, export_gguf, run_instructions
from finetune.merge import inner_model, merged_state_dict
from finetune.models import LoadedModel

FORMATS = ("adapter", "merged_16bit", *GGUF_FORMATS)
CONTENTS = {
    "adapter": "the LoRA adapter (load it on the base model with PEFT)",
    "merged_16bit": "the base model with the LoRA adapter merged in, 16-bit (plain transformers)",
    **{fmt: contents for fmt, (_, contents) in GGUF_FORMATS.items()},
}
NOT_MEDICAL_ADVICE = (
    "**Not medical advice.** This model was fine-tuned for research and teaching. Its answers can be wrong "
    "and must never be used to diagnose or treat a patient."
)


class ExportError(RuntimeError):
    """An export that cannot be done; the message says why and what to do."""


@contextlib.contextmanager
def atomic_folder(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it becomes `target` only if the block completes."""
    target = Path(target)
    if target.exists():
        raise ExportError(f"{target} already exists: pick another folder, or remove it first")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield partial
        os.replace(partial, target)  # one rename: the folder appears whole, or not at all
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def export_model(loaded: LoadedModel, target: str | Path, fmt: str, run_dir: str | Path | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the adapter or the merged model to `target`, with the tokenizer and a model card."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if not loaded.has_adapter:
        raise ExportError("No adapter on the model: train one (or load a run's adapter) before exporting")
    record = read_run_record(run_dir or loaded.adapter_dir)
    with atomic_folder(target) as folder:
        if fmt in GGUF_FORMATS:
            _save_gguf(loaded, folder, fmt)  # the tokenizer is inside the file
        else:
            if fmt == "adapter":
                loaded.model.save_pretrained(str(folder))
            else:
                _save_merged(loaded, folder, dtype)
            loaded.tokenizer.save_pretrained(str(folder))
        (folder / "README.md").write_text(model_card(loaded, record, fmt))
    return Path(target)


def _save_merged(loaded: LoadedModel, folder: Path, dtype: torch.dtype) -> None:
    """A plain transformers checkpoint: 4-bit weights dequantized, the adapter merged, in `dtype`."""
    from transformers import AutoModelForCausalLM

    config = inner_model(loaded.model).config.__class__.from_dict(inner_model(loaded.model).config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the merged weights are plain 16-bit ones
    state = merged_state_dict(loaded.model, dtype)
    with torch.device("meta"):
        merged = AutoModelForCausalLM.from_config(config, dtype=dtype)
    expected = merged.state_dict().keys()
    missing = [key for key in expected if key not in state]
    if missing:
        raise ExportError(f"cannot merge this model: no weights for {', '.join(missing[:3])}")
    merged.load_state_dict({key: state[key] for key in expected}, assign=True)
    merged.tie_weights()
    merged.save_pretrained(str(folder))


def _save_gguf(loaded: LoadedModel, folder: Path, fmt: str) -> None:
    """One GGUF file, always from fp32 merged weights (`dtype` does not apply: the format is the type)."""
    try:
        export_gguf(loaded, folder, fmt)
    except GGUFExportError as err:
        raise ExportError(str(err)) from err


def model_card(loaded: LoadedModel, record: dict, fmt: str) -> str:
    """A model card for the person who finds this folder: what it is, how it was made, how it scored."""
    train, lora, data = record.get("train", {}), record.get("lora", {}), record.get("dataset", {})
    lines = [
        f"# {loaded.info.name}, fine-tuned with LoRA on chain-of-thought data",
        "",
        NOT_MEDICAL_ADVICE,
        "",
        f"- Contents: {CONTENTS[fmt]}",
        f"- Base model: {loaded.info.name}",
        f"- Dataset: {data.get('name', 'unknown')} ({data.get('stats', {}).get('rows', '?')} rows, "
        f"template {data.get('template', '?')})",
    ]
    if fmt in GGUF_FORMATS:
        lines.append(run_instructions(fmt))
    if train:
        lines.append(
            f"- Recipe: LoRA r{lora.get('r')} alpha {lora.get('alpha')}, micro-batch "
            f"{train.get('micro_batch_size')} x grad-accum {train.get('grad_accum_steps')}, {record.get('steps')} "
            f"steps, lr {train.get('learning_rate')}, {train.get('optimizer')}, max length {train.get('max_length')}"
        )
    if record.get("loss_first") is not None:
        lines.append(f"- Training loss: {record['loss_first']:.3f} → {record['loss_last']:.3f}")
    evaluation = record.get("eval") or {}
    if evaluation.get("base") and evaluation.get("finetuned"):
        from finetune.eval_view import eval_line

        source = evaluation.get("source") or {}
        rows = (f"{source['rows']} rows of {source['dataset']}" if source
                else f"{evaluation['finetuned'].get('n')} rows")
        lines.append(f"- Held-out evaluation ({rows}, never trained on): {eval_line(evaluation)}")
    lines += ["", "Made with cot-finetune."]
    return "\n".join(lines) + "\n"
