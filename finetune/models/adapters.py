"""The LoRA adapter on a loaded model: attach a fresh one, load a saved one, switch it off.

Base and fine-tuned are the same weights with the adapter off or on, never two copies.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from finetune.config import LoraSettings
from finetune.models.load import LoadedModel
from finetune.runs import RunFolder

ADAPTER_NAME = "default"


def attach_fresh_adapter(loaded: LoadedModel, lora: LoraSettings):
    """Give the model a new, untrained adapter (replacing any earlier one) and return the PEFT model."""
    model = loaded.model
    if loaded.has_adapter:
        model = model.unload()  # drops the LoRA layers without merging them into the base weights
    if loaded.info.backend == "unsloth":
        from unsloth import FastLanguageModel  # heavy, and CUDA only: imported where it is used

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
    for name, weight in model.named_parameters():
        if weight.requires_grad and not bool(torch.isfinite(weight).all()):
            return name
    return None


def _unsloth_checkpointing(lora: LoraSettings) -> str | bool:
    if not lora.gradient_checkpointing:
        return False
    return "unsloth" if lora.offload_activations else True


def _attach_with_peft(model, lora: LoraSettings):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # heavy: loads on first use

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
    from peft import PeftModel  # heavy: loads on first use

    adapter_dir = Path(adapter_dir)
    if RunFolder(adapter_dir).has_adapter():
        adapter_dir = RunFolder(adapter_dir).adapter
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
    try:  # heavy, and optional: a machine without bitsandbytes has no 4-bit layout to undo
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
