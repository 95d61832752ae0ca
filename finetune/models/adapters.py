"""The LoRA adapter on a loaded model: attach a fresh one, load a saved one, switch it off.

Base and fine-tuned are the same weights with the adapter off or on, never two copies.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from finetune.config import LoraSettings
from finetune.models.load import LoadedModel

ADAPTER_NAME = "default"


def attach_fresh_adapter(loaded: LoadedModel, lora: LoraSettings):
    """Give the model a new, untrained adapter (replacing any earlier one) and return the PEFT model."""
    model = loaded.model
    if loaded.has_adapter:
        model = model.unload()  # drops the LoRA layers without merging them into the base weights
    if loaded.info.backend == "unsloth":
        from unsloth import FastLanguageModel

        model = FastLanguageModel.get_peft_model(
            model,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
            use_gradient_checkpointing=_unsloth_checkpointing(lora),
            random_state=lora.seed,
            use_rslora=lora.use_rslora,
        )
    else:
        model = _attach_with_peft(model, lora)
    loaded.model = model
    loaded.adapter_dir = None
    loaded.decoder = None
    return model


def remove_adapter(loaded: LoadedModel) -> None:
    """Take the adapter off the model (unmerged): the base model answers alone again."""
    if loaded.has_adapter:
        loaded.model = loaded.model.unload()
    loaded.adapter_dir = None
    loaded.decoder = None


def nonfinite_weight(model) -> str | None:
    """The name of the first trained (LoRA) weight holding a NaN or an infinity, if any."""
    import torch

    for name, weight in model.named_parameters():
        if weight.requires_grad and not bool(torch.isfinite(weight).all()):
            return name
    return None


def _unsloth_checkpointing(lora: LoraSettings) -> str | bool:
    if not lora.gradient_checkpointing:
        return False
    return "unsloth" if lora.offload_activations else True


def _attach_with_peft(model, lora: LoraSettings):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    missing = [m for m in lora.target_modules if not any(n.endswith(f".{m}") for n, _ in model.named_modules())]
    if len(missing) == len(lora.target_modules):
        raise ValueError(f"none of the LoRA target modules {list(lora.target_modules)} exist in this model")
    if getattr(model, "is_loaded_in_4bit", False) and not getattr(model, "_finetune_kbit_ready", False):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=lora.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
        model._finetune_kbit_ready = True
    elif lora.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(lora.seed)  # same seed, same initial adapter
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=[m for m in lora.target_modules if m not in missing],
        use_rslora=lora.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_adapter(loaded: LoadedModel, adapter_dir: str | Path) -> None:
    """Put a saved adapter (a run's folder or its adapter/ subfolder) on the loaded model."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if (adapter_dir / "adapter" / "adapter_config.json").is_file():
        adapter_dir = adapter_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json, so it is not a saved LoRA adapter")
    model = loaded.model.unload() if loaded.has_adapter else loaded.model
    loaded.model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=ADAPTER_NAME)
    loaded.adapter_dir = adapter_dir
    loaded.decoder = None


def adapter_switched(loaded: LoadedModel, enabled: bool):
    """Context in which the model answers with the adapter on (fine-tuned) or off (base)."""
    if enabled or not loaded.has_adapter:
        return contextlib.nullcontext()
    return loaded.model.disable_adapter()


def restore_4bit_training_layout(model) -> int:
    """Undo bitsandbytes' CPU inference repacking so LoRA gets gradients again; returns layers fixed.

    On CPU, a no-grad forward in eval mode repacks each 4-bit weight into a layout for a fast
    inference kernel that has no backward. Training through it gives every LoRA weight below the
    last layer a None gradient, silently. Converting back to the canonical layout fixes that.
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    fixed = 0
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if isinstance(module, Linear4bit) and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
            fixed += 1
    return fixed


def run_folder(adapter_dir: str | Path) -> Path | None:
    """The run folder an adapter came from (the one holding run.json): the folder given, or its parent."""
    adapter_dir = Path(adapter_dir)
    return next((folder for folder in (adapter_dir, adapter_dir.parent) if (folder / "run.json").is_file()), None)


def read_run_record(adapter_dir: str | Path | None) -> dict:
    """The run.json of an adapter's run (settings, data, metrics, evaluation); {} when there is none."""
    import json

    folder = run_folder(adapter_dir) if adapter_dir else None
    return json.loads((folder / "run.json").read_text()) if folder else {}


def run_template(record: dict) -> str:
    """The template a run (its run.json record) trained with, so chat prompts it the same way."""
    return record.get("dataset", {}).get("template", "chat")


def read_run_template(adapter_dir: str | Path) -> str:
    """The template an adapter was trained with (from its run.json)."""
    return run_template(read_run_record(adapter_dir))
