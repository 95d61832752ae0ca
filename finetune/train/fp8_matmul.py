"""FP8 matmuls for the frozen 4-bit base weights while training, on GPUs that have FP8 tensor cores.

QLoRA spends most of a step in `X @ W.t()` with W the frozen base weight, dequantized from NF4 to
16 bits each time. On Ada and Hopper GPUs the same product in FP8 (e4m3) runs at twice the 16-bit
rate. Here the NF4 weight is dequantized straight to FP8 (one scale per output row, fixed for the
run because the weight is frozen), the input is scaled per row to FP8, and `torch._scaled_mm`
multiplies them into a 16-bit result. The LoRA branch, the gradients, the optimizer and the loss
stay in 16 bits; so does every matmul of the backward pass (as in Unsloth's own FP8 training).

It works by standing in for Unsloth's `matmul_lora` (the forward matmul of its fused LoRA kernels)
for the duration of a run, so it needs the Unsloth backend; outside `fp8_base_matmuls()`, and for
small inputs (chat, one row at a time), Unsloth's own function runs.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
MIN_ROWS = 256
"""Fewer rows than this (decoding, short prompts) gain nothing from FP8: Unsloth's path runs."""
MIN_WIDTH = 4096
"""Narrower models gain nothing either: on an H200, FP8 slowed Qwen-1.5B (width 1536) down and sped
Llama-8B (4096) up (docs/benchmarks.md, "FP8 base matmuls")."""


def fp8_worthwhile(model: torch.nn.Module) -> bool:
    """Wide enough for FP8 products to pay for quantizing their inputs."""
    config = getattr(model, "config", None)
    return getattr(config, "hidden_size", 0) >= MIN_WIDTH


def fp8_supported() -> bool:
    """CUDA with FP8 tensor cores (compute capability 8.9: Ada, Hopper and newer) and Triton."""
    if not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    if torch.cuda.get_device_capability() < (8, 9):
        return False
    try:
        import triton  # noqa: F401  (a probe: is Triton installed?)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def fp8_base_matmuls(model: torch.nn.Module) -> Iterator[None]:
    """Within this block, Unsloth's LoRA kernels multiply by the model's frozen NF4 weights in FP8.

    `fp8_calls()` counts the FP8 products run, so a run can say whether the path was taken at all
    (a model whose layers Unsloth did not patch never reaches it)."""
    from unsloth.kernels import fast_lora  # CUDA only: the path Unsloth's LoRA layers take

    original = fast_lora.matmul_lora
    prepared = prepare_row_scales(model)
    fast_lora.matmul_lora = _make_stand_in(original)
    _COUNTER["calls"] = 0
    # Unsloth compiles each decoder layer as one region; with the FP8 op inside, that region ran
    # slower than eager layers (Llama-8B: docs/benchmarks.md, "FP8 base matmuls"). Unsloth reads
    # this switch on every layer call, so it holds for this run only.
    compile_switch = os.environ.get("UNSLOTH_BLOCK_COMPILE")
    os.environ["UNSLOTH_BLOCK_COMPILE"] = "0"
    try:
        yield
    finally:
        fast_lora.matmul_lora = original
        if compile_switch is None:
            os.environ.pop("UNSLOTH_BLOCK_COMPILE", None)
        else:
            os.environ["UNSLOTH_BLOCK_COMPILE"] = compile_switch
        for quant_state in prepared:
            del quant_state.fp8_row_scale, quant_state.fp8_offset


_COUNTER = {"calls": 0}
"""Module state because the count is kept inside a torch custom op, which only takes tensors."""


def fp8_calls() -> int:
    """How many matmuls the latest `fp8_base_matmuls()` block ran in FP8."""
    return _COUNTER["calls"]


def prepare_row_scales(model: torch.nn.Module) -> list:
    """Give each NF4 weight its FP8 scale per output row, from its NF4 block maxima (a block's
    largest value is its absmax). Once per run: the base weights do not change while training."""
    prepared = []
    for module in model.modules():
        quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
        if quant_state is None or getattr(quant_state, "quant_type", None) != "nf4":
            continue
        out_features, in_features = quant_state.shape
        if in_features % quant_state.blocksize or hasattr(quant_state, "fp8_row_scale"):
            continue
        blocks = block_absmax(quant_state).view(out_features, in_features // quant_state.blocksize)
        quant_state.fp8_row_scale = (blocks.amax(dim=1) / FP8_MAX).clamp(min=1e-12).contiguous()
        # A Python float, read once here: a tensor read inside a compiled layer would break its graph.
        quant_state.fp8_offset = float(quant_state.offset) if quant_state.nested else 0.0
        prepared.append(quant_state)
    return prepared


def _make_stand_in(original):
    def matmul_lora(X, W, W_quant, A, B, s, out=None, use_global_buffer=True):
        if out is not None or not _fp8_applies(X, W, W_quant):
            return original(X, W, W_quant, A, B, s, out=out, use_global_buffer=use_global_buffer)
        shape = X.shape
        x_fp8, x_scale = _SHARED_INPUT.quantized(X)  # Unsloth passes q, k and v the same X object
        result = nf4_fp8_linear(x_fp8, x_scale, W, *_nf4_arguments(W_quant))
        if A is not None:  # the LoRA branch, in 16 bits and in place, as Unsloth computes it
            X = X.reshape(-1, shape[-1])
            result.addmm_(X @ A.t().to(X.dtype), B.t().to(X.dtype), alpha=s)
        return result.view(*shape[:-1], -1)

    return matmul_lora


def _nf4_arguments(quant_state) -> tuple:
    """What the NF4-to-FP8 kernel reads of a prepared weight: absmax, NF4 code, the double
    quantization's code and absmax (the row scales stand in for them where there is none: the
    kernel does not read them then), the row scales, offset, block sizes, nested."""
    row_scale = quant_state.fp8_row_scale
    if quant_state.nested:
        inner = quant_state.state2
        return (quant_state.absmax, quant_state.code, inner.code, inner.absmax, row_scale, quant_state.fp8_offset,
                quant_state.blocksize, inner.blocksize, True)
    return (quant_state.absmax, quant_state.code, row_scale, row_scale, row_scale, 0.0, quant_state.blocksize, 1,
            False)


def _fp8_applies(X: torch.Tensor, W: torch.Tensor, W_quant) -> bool:
    """A prepared NF4 weight in the forward orientation, a bf16 input of many rows."""
    if type(W_quant) is list or getattr(W_quant, "fp8_row_scale", None) is None:
        return False
    if X.dtype != torch.bfloat16 or not X.is_cuda:  # row-wise scaled FP8 products come out in bf16
        return False
    if torch.is_grad_enabled() and X.requires_grad:  # Unsloth calls it inside its autograd Functions only
        return False
    out_features, in_features = W_quant.shape
    # Packed NF4 is (n/2, 1); its transpose (1, n/2) is the backward orientation, left to Unsloth.
    forward = W.dim() == 2 and W.shape[-1] == 1
    rows = X.numel() // X.shape[-1]
    return forward and rows >= MIN_ROWS and X.shape[-1] == in_features and in_features % 16 == 0 \
        and out_features % 16 == 0


@torch.library.custom_op("finetune::nf4_fp8_linear", mutates_args=())
def nf4_fp8_linear(x_fp8: torch.Tensor, x_scale: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor,
                   code: torch.Tensor, code2: torch.Tensor, absmax2: torch.Tensor, row_scale: torch.Tensor,
                   offset: float, blocksize: int, blocksize2: int, nested: bool) -> torch.Tensor:
    """x @ W.t() in bf16 for an FP8 input and an NF4 weight W. A custom op, so that a compiled
    decoder layer calls it whole instead of tracing (and breaking) around the Triton kernel."""
    from finetune.train import fp8_kernels  # Triton, CUDA only: where FP8 runs

    _COUNTER["calls"] += 1
    w_fp8 = torch.empty((row_scale.shape[0], x_fp8.shape[1]), dtype=FP8, device=x_fp8.device)
    fp8_kernels.nf4_to_fp8(packed, absmax, code, code2, absmax2, row_scale, offset, blocksize, blocksize2,
                           nested, w_fp8)
    return torch._scaled_mm(x_fp8, w_fp8.t(), scale_a=x_scale, scale_b=row_scale.view(1, -1),
                            out_dtype=torch.bfloat16)


@nf4_fp8_linear.register_fake
def _(x_fp8, x_scale, packed, absmax, code, code2, absmax2, row_scale, offset, blocksize, blocksize2, nested):
    return x_fp8.new_empty((x_fp8.shape[0], row_scale.shape[0]), dtype=torch.bfloat16)


@torch.library.custom_op("finetune::fp8_quantize_rows", mutates_args=())
def fp8_quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (rows, cols) in 16 bits -> (FP8 values, float32 scale per row), x ≈ values * scale."""
    from finetune.train import fp8_kernels  # Triton, CUDA only: where FP8 runs

    x = x.contiguous()
    values = torch.empty(x.shape, dtype=FP8, device=x.device)
    scales = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
    fp8_kernels.quantize_rows(x, values, scales, FP8_MAX)
    return values, scales


@fp8_quantize_rows.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=FP8), x.new_empty((x.shape[0], 1), dtype=torch.float32)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Any 16-bit x (..., cols) as FP8 rows (rows, cols) and their float32 scales (rows, 1)."""
    return fp8_quantize_rows(x.reshape(-1, x.shape[-1]))


class _SharedInput:
    """q, k and v (and gate and up) multiply the same input: quantize it once, not three times.

    Holds the input weakly: once it is freed, its quantized copy goes too (no memory kept past the
    layer), and a new tensor that reuses its memory cannot be mistaken for it. Keyed on the tensor
    Unsloth passes, not on a reshaped view of it: a view is a new object at every call."""

    def __init__(self) -> None:
        self.source: weakref.ref | None = None
        self.version = -1
        self.result: tuple[torch.Tensor, torch.Tensor] | None = None

    def quantized(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.compiler.is_compiling():  # a compiled graph cannot hold Python references
            return quantize_rows(x)
        if self.source is not None and self.source() is x and self.version == x._version and self.result:
            return self.result
        self.source, self.version = weakref.ref(x, self._forget), x._version
        self.result = quantize_rows(x)
        return self.result

    def _forget(self, _source: weakref.ref) -> None:
        if _source is self.source:
            self.source, self.result = None, None


_SHARED_INPUT = _SharedInput()


def nf4_to_fp8(W: torch.Tensor, quant_state) -> torch.Tensor:
    """A prepared NF4 weight as FP8 (out_features, in_features): W ≈ values * fp8_row_scale per row."""
    from finetune.train import fp8_kernels  # Triton, CUDA only: where FP8 runs

    values = torch.empty(quant_state.shape, dtype=FP8, device=W.device)
    fp8_kernels.nf4_to_fp8(W, *_nf4_arguments(quant_state), values)
    return values


def block_absmax(quant_state) -> torch.Tensor:
    """Each NF4 block's absmax in float32, undoing bitsandbytes' double quantization if used."""
    if quant_state.nested:
        inner = quant_state.state2
        codes = inner.code[quant_state.absmax.long()]
        scales = inner.absmax.repeat_interleave(inner.blocksize)[: codes.numel()]
        return codes * scales + quant_state.offset
    return quant_state.absmax.float()
