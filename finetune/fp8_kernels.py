"""The two Triton kernels behind `fp8_matmul`: 16-bit rows to FP8, and NF4 weights to FP8.

Imported only on a CUDA machine (Triton is not in CPU-only torch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _quantize_rows_kernel(x_ptr, values_ptr, scales_ptr, n_cols, fp8_max, BLOCK: tl.constexpr):
    # One program a row: find the row's largest magnitude, then scale the row into FP8's range.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    largest = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * n_cols + start + cols, mask=mask, other=0.0).to(tl.float32)
        largest = tl.maximum(largest, tl.abs(x))
    scale = tl.maximum(tl.max(largest, axis=0), 1e-12) / fp8_max
    tl.store(scales_ptr + row, scale)
    for start in range(0, n_cols, BLOCK):
        mask = start + cols < n_cols
        x = tl.load(x_ptr + row * n_cols + start + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(values_ptr + row * n_cols + start + cols, (x / scale).to(tl.float8e4nv), mask=mask)


def quantize_rows(x: torch.Tensor, values: torch.Tensor, scales: torch.Tensor, fp8_max: float) -> None:
    rows, cols = x.shape
    block = min(2048, triton.next_power_of_2(cols))
    _quantize_rows_kernel[(rows,)](x, values, scales, cols, fp8_max, BLOCK=block)


@triton.jit
def _nf4_to_fp8_kernel(packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset, nf4_ptr, row_scale_ptr, out_ptr,
                       n_bytes, n_cols, BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr,
                       BLOCK: tl.constexpr):
    # Each byte holds two NF4 codes, the first element in the high nibble (bitsandbytes' layout).
    byte_index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = byte_index < n_bytes
    packed = tl.load(packed_ptr + byte_index, mask=mask, other=0).to(tl.int32)
    first = byte_index * 2
    block = first // BLOCKSIZE
    if NESTED:  # the block maxima are themselves quantized: code2[q] * absmax2[block // BLOCKSIZE2] + offset
        quantized = tl.load(absmax_ptr + block, mask=mask, other=0).to(tl.int32)
        absmax = tl.load(code2_ptr + quantized, mask=mask, other=0.0) * tl.load(
            absmax2_ptr + block // BLOCKSIZE2, mask=mask, other=0.0) + offset
    else:
        absmax = tl.load(absmax_ptr + block, mask=mask, other=0.0)
    factor = absmax / tl.load(row_scale_ptr + first // n_cols, mask=mask, other=1.0)
    high = tl.load(nf4_ptr + (packed >> 4), mask=mask, other=0.0) * factor
    low = tl.load(nf4_ptr + (packed & 15), mask=mask, other=0.0) * factor
    tl.store(out_ptr + first, high.to(tl.float8e4nv), mask=mask)
    tl.store(out_ptr + first + 1, low.to(tl.float8e4nv), mask=mask)


def nf4_to_fp8(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, code2: torch.Tensor,
               absmax2: torch.Tensor, row_scale: torch.Tensor, offset: float, blocksize: int, blocksize2: int,
               nested: bool, out: torch.Tensor) -> None:
    packed = packed.reshape(-1).view(torch.uint8)
    n_bytes, n_cols = packed.numel(), out.shape[1]
    block = 2048
    _nf4_to_fp8_kernel[(triton.cdiv(n_bytes, block),)](
        packed, absmax, code2, absmax2, offset, code, row_scale, out, n_bytes, n_cols,
        BLOCKSIZE=blocksize, BLOCKSIZE2=blocksize2, NESTED=nested, BLOCK=block,
    )
