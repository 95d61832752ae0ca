"""FP8 base matmuls: the parts that run anywhere. The Triton kernels and the FP8 products
themselves are checked against bitsandbytes and Unsloth on a GPU (tests/gpu/test_gpu.py)."""

from __future__ import annotations

import gc
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from finetune.config import TrainSettings
from finetune.train import fp8_matmul
from finetune.train.fp8_matmul import FP8_MAX, fp8_worthwhile, prepare_row_scales

ROOT = Path(__file__).resolve().parents[2]


def nf4_layer(out_features: int, in_features: int, nested: bool):
    import bitsandbytes as bnb

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compress_statistics=nested, quant_type="nf4")
    weight = torch.randn(out_features, in_features) * torch.linspace(0.01, 1.0, out_features)[:, None]
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=nested, quant_type="nf4")
    layer.weight = layer.weight._quantize("cpu")
    return layer


@pytest.mark.parametrize("nested", [True, False], ids=["double-quantized", "plain-absmax"])
def test_row_scales_put_each_rows_largest_weight_at_fp8s_largest_value(nested):
    """The FP8 weight is the NF4 weight scaled per row: a wrong scale clips or wastes FP8's range."""
    import bitsandbytes.functional as F

    layer = nf4_layer(48, 256, nested)
    quant_state = layer.weight.quant_state
    dequantized = F.dequantize_4bit(layer.weight, quant_state).float()
    assert prepare_row_scales(layer) == [quant_state]
    torch.testing.assert_close(quant_state.fp8_row_scale * FP8_MAX, dequantized.abs().amax(dim=1))
    assert quant_state.fp8_offset == (float(quant_state.offset) if nested else 0.0)
    assert prepare_row_scales(layer) == []  # prepared once a run


def test_q_k_and_v_quantize_their_shared_input_once_and_let_go_of_it(monkeypatch):
    """Unsloth hands q, k and v the same X: one FP8 copy serves the three products (each with its
    LoRA branch added), a changed X is quantized again, and the copy is freed with X."""
    quantizations = []

    def quantize_rows(x):
        quantizations.append(x.shape)
        return x.reshape(-1, x.shape[-1]) * 1.0, None

    monkeypatch.setattr(fp8_matmul, "_SHARED_INPUT", fp8_matmul._SharedInput())
    monkeypatch.setattr(fp8_matmul, "quantize_rows", quantize_rows)
    monkeypatch.setattr(fp8_matmul, "_fp8_applies", lambda X, W, W_quant: True)
    monkeypatch.setattr(fp8_matmul, "_nf4_arguments", lambda W_quant: ())
    monkeypatch.setattr(fp8_matmul, "nf4_fp8_linear", lambda x_fp8, x_scale, W: x_fp8 @ W.t())
    stand_in = fp8_matmul._make_stand_in(original=None)
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8)
    lora_a, lora_b = torch.randn(3, 8), torch.randn(4, 3)
    for weight in [torch.randn(4, 8) for _ in range(3)]:
        torch.testing.assert_close(stand_in(x, weight, None, lora_a, lora_b, 0.5),
                                   x @ weight.t() + 0.5 * (x @ lora_a.t()) @ lora_b.t())
    assert quantizations == [(2, 5, 8)]
    x.add_(1)  # changed in place: the old FP8 copy no longer describes it
    stand_in(x, weight, None, None, None, 0.5)
    assert len(quantizations) == 2
    del x
    gc.collect()
    assert fp8_matmul._SHARED_INPUT.result is None  # freed with its input, not kept into the next layer


def test_fp8_is_asked_for_and_runs_only_where_it_pays():
    # Off by default: against Unsloth at the same 8 x 1 it gave no lead (docs/benchmarks.md, 2026-12-03).
    assert not TrainSettings.fast().fp8_matmuls and not TrainSettings().fp8_matmuls
    assert not TrainSettings.for_device("cpu").fp8_matmuls
    assert fp8_worthwhile(SimpleNamespace(config=SimpleNamespace(hidden_size=4096)))  # Llama-8B
    assert not fp8_worthwhile(SimpleNamespace(config=SimpleNamespace(hidden_size=1536)))  # Qwen-1.5B
    assert not fp8_matmul.fp8_supported() or torch.cuda.get_device_capability() >= (8, 9)


def test_a_request_for_fp8_is_a_no_op_where_it_cannot_run(loaded):
    from finetune.train.trainer import fp8_applies

    assert not fp8_applies(loaded, TrainSettings(fp8_matmuls=True))  # CPU, not 4-bit, 576 wide


def test_fp8_is_set_from_the_command_line_and_recipes():
    from finetune.cli import build_parser, recipe_from_args
    from finetune.train.recipe import load_recipe

    parse = build_parser().parse_args
    seeds = str(ROOT / "recipes" / "seeds-r1-llama-8b-medical-o1.yaml")
    assert not load_recipe(seeds, "cuda").train.fp8_matmuls  # the seeds' notebook multiplies in 16 bits
    assert recipe_from_args(parse(["train", "--config", seeds, "--fp8"])).train.fp8_matmuls
    fast = str(ROOT / "recipes" / "fast-r1-qwen-1.5b-medical-o1.yaml")
    assert not load_recipe(fast, "cuda").train.fp8_matmuls  # opt-in, as the fast recipe's defaults
    assert recipe_from_args(parse(["train", "--config", fast, "--fp8"])).train.fp8_matmuls
