"""The weights a LoRA run produced, as plain dense matrices: 4-bit weights dequantized, the adapter
merged in. Used by the fast decoder (chat) and by the merged 16-bit export.

    state = merged_state_dict(loaded.model, dtype=torch.bfloat16)   # names as in the base model
"""

from __future__ import annotations

import torch


def inner_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay in place inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def base_layer(module: torch.nn.Module) -> torch.nn.Module:
    """The plain (maybe 4-bit) linear layer under a LoRA layer."""
    return getattr(module, "base_layer", module)


def dense_weight(linear: torch.nn.Module) -> torch.Tensor:
    """A linear layer's weight as a dense matrix: bitsandbytes 4-bit weights are dequantized."""
    weight = linear.weight
    state = getattr(weight, "quant_state", None)
    if state is None:
        return weight
    from bitsandbytes.functional import dequantize_4bit  # heavy, and only for 4-bit weights

    return dequantize_4bit(weight.data, state)


def merged_weight(module: torch.nn.Module, use_adapter: bool = True) -> torch.Tensor:
    """W + scale * B @ A for each active LoRA adapter on this layer (none when `use_adapter` is off)."""
    weight = dense_weight(base_layer(module))
    lora_a = getattr(module, "lora_A", None)
    if not use_adapter or lora_a is None or getattr(module, "disable_adapters", False):
        return weight
    weight = weight.float()
    for name in module.active_adapters:
        if name in lora_a:
            delta = module.lora_B[name].weight.float() @ lora_a[name].weight.float()
            weight = weight + module.scaling[name] * delta
    return weight


def merged_state_dict(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every weight of the model with the adapter merged, named as in the plain transformers model,
    on the CPU in `dtype`: what `save_pretrained` of the merged model would write."""
    inner = inner_model(model)
    state: dict[str, torch.Tensor] = {}
    handled: set[str] = set()
    with torch.no_grad():
        for name, module in inner.named_modules():
            if any(name.startswith(prefix + ".") for prefix in handled):
                continue  # inside a LoRA layer already merged
            if hasattr(module, "lora_A") or hasattr(getattr(module, "weight", None), "quant_state"):
                state[f"{name}.weight"] = merged_weight(module).to("cpu", dtype)
                bias = base_layer(module).bias
                if bias is not None:
                    state[f"{name}.bias"] = bias.detach().to("cpu", dtype)
                handled.add(name)
                continue
            for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                full = f"{name}.{key}" if name else key
                if full not in state and not key.startswith("lora_"):
                    state[full] = tensor.detach().to("cpu", dtype if tensor.is_floating_point() else tensor.dtype)
    return state
