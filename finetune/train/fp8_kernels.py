"""The two Triton kernels behind `fp8_matmul`: 16-bit rows to FP8, and NF4 weights to FP8.

Imported only on a CUDA machine (Triton is not in CPU-only torch). Both are memory-bound: each
reads its input once and writes each output byte once, in wide contiguous stores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

WIDEST_ROW_IN_REGISTERS = 16384
"""Rows up to this wide are read once; wider ones twice (once for the maximum, once to scale)."""


@triton.jit
def _quantize_rows_kernel(x_ptr, values_ptr, scales_ptr, n_cols, fp8_max, BLOCK: tl.constexpr,
                          ONE_PASS: tl.constexpr):
    # One program a row: find the row's largest magnitude, then scale the row into FP8's range.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    if ONE_PASS:
        mask = cols < n_cols
        x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / fp8_max
        tl.store(scales_ptr + row, scale)
        tl.store(values_ptr + row * n_cols + cols, (x / scale).to(tl.float8e4nv), mask=mask)
    else:
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
    one_pass = cols <= WIDEST_ROW_IN_REGISTERS
    block = triton.next_power_of_2(cols) if one_pass else 4096
    warps = max(4, min(16, block // 1024))
    _quantize_rows_kernel[(rows,)](x, values, scales, cols, fp8_max, BLOCK=block, ONE_PASS=one_pass,
                                   num_warps=warps)


@triton.jit
def _nf4_to_fp8_kernel(packed_ptr, absmax_ptr, code2_ptr, absmax2_ptr, offset, nf4_ptr, row_scale_ptr, out_ptr,
                       n_blocks, blocks_per_row, BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr,
                       NESTED: tl.constexpr, BLOCKS: tl.constexpr):
    # One program: BLOCKS consecutive NF4 blocks (a block never spans two rows). The factor that
    # takes an NF4 code to FP8 is the block's absmax over its row's scale: one division a block.
    block = tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)
    in_range = block < n_blocks
    if NESTED:  # the block maxima are themselves quantized: code2[q] * absmax2[block // BLOCKSIZE2] + offset
        quantized = tl.load(absmax_ptr + block, mask=in_range, other=0).to(tl.int32)
        absmax = tl.load(code2_ptr + quantized, mask=in_range, other=0.0) * tl.load(
            absmax2_ptr + block // BLOCKSIZE2, mask=in_range, other=0.0) + offset
    else:
        absmax = tl.load(absmax_ptr + block, mask=in_range, other=0.0)
    factor = absmax / tl.load(row_scale_ptr + block // blocks_per_row, mask=in_range, other=1.0)
    # Each byte holds two NF4 codes, the first element in the high nibble (bitsandbytes' layout).
    HALF: tl.constexpr = BLOCKSIZE // 2
    byte = block[:, None] * HALF + tl.arange(0, HALF)[None, :]
    packed = tl.load(packed_ptr + byte, mask=in_range[:, None], other=0).to(tl.int32)
    high = tl.load(nf4_ptr + (packed >> 4)) * factor[:, None]
    low = tl.load(nf4_ptr + (packed & 15)) * factor[:, None]
    values = tl.interleave(high, low).to(tl.float8e4nv)
    element = block[:, None] * BLOCKSIZE + tl.arange(0, BLOCKSIZE)[None, :]
    tl.store(out_ptr + element, values, mask=in_range[:, None])


def nf4_to_fp8(packed: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, code2: torch.Tensor,
               absmax2: torch.Tensor, row_scale: torch.Tensor, offset: float, blocksize: int, blocksize2: int,
               nested: bool, out: torch.Tensor) -> None:
    packed = packed.reshape(-1).view(torch.uint8)
    n_blocks = out.numel() // blocksize
    blocks = max(1, 4096 // blocksize)
    _nf4_to_fp8_kernel[(triton.cdiv(n_blocks, blocks),)](
        packed, absmax, code2, absmax2, offset, code, row_scale, out, n_blocks, out.shape[1] // blocksize,
        BLOCKSIZE=blocksize, BLOCKSIZE2=blocksize2, NESTED=nested, BLOCKS=blocks,
    )
