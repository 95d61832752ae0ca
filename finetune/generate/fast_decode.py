"""Fast decoding: merged weights, a static KV cache, and one CUDA graph per token step.

Chat answers one question at a time, so each new token is a matrix-vector product per weight:
the speed limit is reading the weights from memory once per token. Evaluation answers a batch of
questions together, which reads the weights once for the whole batch. Three things get in the way
on the usual path, and this decoder removes them:

1. the 4-bit weights are dequantized again for every token, and the LoRA adapter adds seven small
   products per layer: here the adapter is merged into one 16-bit copy of the weights, written once
   (and rewritten in place, in milliseconds, when chat switches between base and fine-tuned);
2. the KV cache grows token by token: here it is allocated once, for the whole conversation;
3. hundreds of small kernel launches per token, each waiting on Python: on CUDA, one decode step is
   captured as a CUDA graph and replayed, so a token step (of one question or of a batch) costs one
   launch.

It supports the Llama family that the presets use (Llama, Qwen2, SmolLM2); `decoder_for` returns
None for anything else, and chat falls back to transformers' `generate`.

    decoder = decoder_for(loaded, use_adapter=True, tokens_needed=2048)
    for token in decoder.generate(prompt_ids, max_new_tokens, sampling, eos_ids):
        ...
    decoder = decoder_for(loaded, use_adapter=True, tokens_needed=2560, batch=8)
    answers = decoder.generate_batch(prompts, max_new_tokens, sampling, eos_ids)

A batch is decoded in lockstep: each question's prompt is read on its own into its row of the cache,
then every step writes one token for every row at that row's own position, so no prompt is padded and
no row waits for another's prompt. A row that has ended keeps a slot in the graph until the batch ends.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from finetune.models.load import LoadedModel
from finetune.models.merge import base_layer, inner_model, merged_weight

DecoderWeights = Literal["merged", "4bit"]
"""What the decoder multiplies by: 'merged', a 16-bit copy with the adapter merged in (fastest, the
most memory); '4bit', the model's own 4-bit weights through bitsandbytes with the adapter beside them
(for a GPU with no room for the copy, e.g. Llama-8B on 24 GB)."""
SUPPORTED_MODELS = ("llama", "qwen2")
SUPPORTED_ROPE = ("default", "linear", "llama3", "yarn")
CAPACITY_STEP = 512
"""The KV cache is sized in steps of this many tokens, so a longer question rarely needs a new one."""
HEADROOM_BYTES = 1 << 30
"""GPU memory left free after the 16-bit copy and the cache (activations, the allocator's slack)."""


@dataclass
class Sampling:
    """How the next token is chosen; mirrors transformers' processors in the order it applies them."""

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why the fast decoder cannot run this model, or None when it can."""
    config = inner_model(model).config
    if config.model_type not in SUPPORTED_MODELS:
        return f"model type {config.model_type!r} (supported: {', '.join(SUPPORTED_MODELS)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in SUPPORTED_ROPE:
        return f"RoPE type {rope!r}"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    if _has_repacked_4bit(model):
        return "4-bit weights on CPU"
    return None


def decoder_for(loaded: LoadedModel, use_adapter: bool, tokens_needed: int, batch: int = 1,
                weights: DecoderWeights | None = None) -> FastDecoder | None:
    """The loaded model's fast decoder for `batch` sequences of up to `tokens_needed` tokens each, holding
    the base (adapter off) or fine-tuned weights; None when this model cannot use one or the GPU has room
    for neither decoder (the caller then uses `generate`). `weights`: which decoder, where it is not the
    fastest that fits (a benchmark of the 4-bit one).

    The decoder lives on `loaded.decoder` until the adapter changes (see `finetune.models.adapters`) or a
    training run starts, which drop it to give training the memory. One decoder at a time: chat's
    (batch 1) and evaluation's (batch N) replace each other, as two 16-bit copies rarely fit.
    """
    decoder = loaded.decoder
    capacity = CAPACITY_STEP * math.ceil(tokens_needed / CAPACITY_STEP)
    if decoder is not None and (decoder.capacity < capacity or decoder.batch != batch
                                or weights not in (None, decoder.weights)):
        loaded.decoder = decoder = None  # free the old copy and cache before new ones are made
    if decoder is None:
        if unsupported_reason(loaded.model) is not None:
            return None
        weights = weights or _weights_that_fit(loaded.model, capacity * batch)
        if weights is None:
            return None
        decoder = loaded.decoder = FastDecoder(loaded.model, capacity, batch=batch, weights=weights)
    decoder.load_weights(loaded.model, use_adapter)
    return decoder


class FastDecoder:
    """A Llama-family decoder over plain tensors, for `batch` sequences of up to `capacity` tokens."""

    def __init__(self, model: torch.nn.Module, capacity: int, dtype: torch.dtype | None = None, batch: int = 1,
                 weights: DecoderWeights = "merged"):
        """`dtype`: the precision of the copy (and of the activations); by default 16-bit on a GPU, the
        model's own on CPU."""
        inner = inner_model(model)
        config = inner.config
        embed = inner.model.embed_tokens.weight
        self.device, self.dtype, self.capacity = embed.device, dtype or _decode_dtype(embed), capacity
        self.batch, self.weights = batch, weights
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.embed = embed  # only its rows are read, a token at a time: no copy, cast after the lookup
        self.final_norm = inner.model.norm.weight.to(self.dtype)
        self.lm_head = inner.lm_head.weight.to(self.dtype)
        with torch.inference_mode():
            self.adapter_on = torch.zeros((), device=self.device, dtype=self.dtype)
        if weights == "4bit":
            self.layers = [_FourBitLayer(layer, self.dtype, self.adapter_on) for layer in inner.model.layers]
        else:
            self.layers = [_MergedLayer.allocate(layer, self.device, self.dtype) for layer in inner.model.layers]
        self.weights_key: tuple | None = None
        cache_shape = (len(self.layers), batch, self.kv_heads, capacity, self.head_dim)
        with torch.inference_mode():
            self.k_cache = torch.zeros(cache_shape, device=self.device, dtype=self.dtype)
            self.v_cache = torch.zeros(cache_shape, device=self.device, dtype=self.dtype)
            self.cos, self.sin = _rope_tables(inner, capacity, self.head_dim, self.device, self.dtype)
            # The graph's inputs: a token and a position per row (rows in use or not).
            self.tokens = torch.zeros((batch, 1), device=self.device, dtype=torch.long)
            self.positions = torch.zeros((batch, 1), device=self.device, dtype=torch.long)
            self.rows = torch.arange(batch, device=self.device).view(batch, 1)
            self.slots = torch.arange(capacity, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None
        self.graph_error: str | None = None
        """Why a step could not be captured as a CUDA graph (it then runs eagerly), or None."""

    @property
    def description(self) -> str:
        precision = str(self.dtype).removeprefix("torch.")
        graphs = ", CUDA graphs" if self.device.type == "cuda" and self.graph_error is None else ""
        batch = f", batch {self.batch}" if self.batch > 1 else ""
        if self.weights == "4bit":
            return f"fast decoder: the model's 4-bit weights, adapter beside them, {precision}, static KV cache" \
                   f"{graphs}{batch}"
        return f"fast decoder: merged {precision} weights, static KV cache{graphs}{batch}"

    def load_weights(self, model: torch.nn.Module, use_adapter: bool) -> None:
        """Write the model's weights (adapter merged in, or left out) into this decoder's copy; over 4-bit
        weights, switch the adapter beside them on or off."""
        key = (id(model), use_adapter)
        if key == self.weights_key:
            return
        with torch.inference_mode():
            self.adapter_on.fill_(1.0 if use_adapter else 0.0)
            if self.weights == "merged":
                for layer, weights in zip(inner_model(model).model.layers, self.layers, strict=True):
                    weights.fill(layer, use_adapter)
        self.weights_key = key

    # The forward pass ------------------------------------------------------------------------

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Logits of each row's last token, (rows, vocab); writes the keys and values of `tokens` into
        the cache. `tokens` and `positions` are (rows, T), `rows` the cache rows they go to, (rows, 1):
        a prompt is one row of T tokens, a decode step every row with T = 1."""
        x = F.embedding(tokens, self.embed).to(self.dtype)  # (rows, T, hidden)
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)  # (rows, 1, T, head_dim)
        for index, layer in enumerate(self.layers):
            x = x + self._attention(index, layer, _rms_norm(x, layer.attn_norm, self.eps), positions, rows, cos, sin)
            gate, up = layer.gate_up(_rms_norm(x, layer.mlp_norm, self.eps)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        x = _rms_norm(x[:, -1], self.final_norm, self.eps)
        return F.linear(x, self.lm_head).float()

    def _attention(self, index, layer, x, positions, rows, cos, sin) -> torch.Tensor:
        count, length = x.shape[:2]
        qkv = layer.qkv(x)
        q, k, v = qkv.split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                             self.kv_heads * self.head_dim], dim=-1)
        q = _rotate(q.view(count, length, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = _rotate(k.view(count, length, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(count, length, self.kv_heads, self.head_dim).transpose(1, 2)
        # Each row's keys and values into its own row of the cache, at its own positions.
        self.k_cache[index][rows, :, positions] = k.transpose(1, 2)
        self.v_cache[index][rows, :, positions] = v.transpose(1, 2)
        if length == 1:
            out = self._attend_one(q, index, positions)
        else:  # a fresh prompt from position 0: causal attention over the prompt
            group = self.heads // self.kv_heads
            out = F.scaled_dot_product_attention(
                q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1), is_causal=True
            )
        return layer.out(out.transpose(1, 2).reshape(count, length, -1))

    def _attend_one(self, q: torch.Tensor, index: int, positions: torch.Tensor) -> torch.Tensor:
        """One query per row against its row of the cache, grouped by KV head so the cache is read once,
        unexpanded; each row sees the slots up to its own position."""
        group = self.heads // self.kv_heads
        q = q.view(self.batch, self.kv_heads, group, self.head_dim)
        scores = torch.matmul(q, self.k_cache[index].transpose(-1, -2)).float() / math.sqrt(self.head_dim)
        scores = scores.masked_fill(self.slots > positions.view(self.batch, 1, 1, 1), float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1).to(self.dtype), self.v_cache[index])
        return out.view(self.batch, self.heads, 1, self.head_dim)

    # Generation -------------------------------------------------------------------------------

    def prefill(self, prompt: torch.Tensor, row: int = 0) -> torch.Tensor:
        """Run the prompt (1-D token ids) from position 0 into cache row `row`; the logits for its first
        new token, (vocab,)."""
        if prompt.numel() >= self.capacity:
            raise ValueError(f"prompt of {prompt.numel()} tokens does not fit a cache of {self.capacity}")
        prompt = prompt.to(self.device).view(1, -1)
        positions = torch.arange(prompt.shape[1], device=self.device).view(1, -1)
        return self._forward(prompt, positions, self.rows[row : row + 1])[0]

    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """Batch 1: the logits after `token` (a 1-element tensor) at `position`, (vocab,)."""
        self.positions.fill_(position)
        return self.step_rows(token.view(1), self.positions.view(1))[0]

    def step_rows(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The logits after one token per row at that row's position (both (batch,)), (batch, vocab);
        on CUDA a CUDA graph replay."""
        self.tokens.copy_(tokens.view(self.batch, 1))
        self.positions.copy_(positions.view(self.batch, 1))
        if self.graph is None and self.device.type == "cuda" and self.graph_error is None:
            self._capture()
        if self.graph is None:
            return self._forward(self.tokens, self.positions, self.rows)
        self.graph.replay()
        return self.graph_logits

    def _capture(self) -> None:
        # A few eager runs on a side stream first, as CUDA graph capture requires; they write only
        # into each row's slot at `self.positions`, which the next real step overwrites.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(self.tokens, self.positions, self.rows)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.graph_logits = self._forward(self.tokens, self.positions, self.rows)
        except RuntimeError as err:  # a library kernel that cannot be captured: the steps run eagerly instead
            torch.cuda.synchronize(self.device)
            self.graph_error = str(err).splitlines()[0][:200]
            return
        self.graph = graph

    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        sampling: Sampling,
        eos_token_ids: set[int],
        stop: threading.Event | None = None,
    ) -> Iterator[int]:
        """Yield new token ids until an end-of-sequence token (yielded too), the limit, or `stop`."""
        max_new_tokens = min(max_new_tokens, self.capacity - prompt.numel())
        with torch.inference_mode():
            seen = None
            if sampling.repetition_penalty != 1.0:  # the tokens seen so far, which the penalty lowers
                seen = torch.zeros(self.embed.shape[0], dtype=torch.bool, device=self.device)
                seen[prompt.to(self.device)] = True
            logits = self.prefill(prompt)
            for offset in range(max_new_tokens):
                token = _next_token(logits, sampling, seen)
                token_id = int(token)
                yield token_id
                if token_id in eos_token_ids or (stop is not None and stop.is_set()):
                    return
                if seen is not None:
                    seen[token] = True
                logits = self.step(token, prompt.numel() + offset)

    def generate_batch(
        self,
        prompts: list[torch.Tensor],
        max_new_tokens: int,
        sampling: Sampling,
        eos_token_ids: set[int],
        stop: threading.Event | None = None,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[list[int]]:
        """New token ids for up to `batch` prompts (1-D each), decoded together: each answer ends with
        its end-of-sequence token (kept) or at the limit. All stop at `stop`. `on_step(steps, tokens)`
        after each step: steps so far, and tokens written so far by the answers not yet ended."""
        count = len(prompts)
        if not 0 < count <= self.batch:
            raise ValueError(f"{count} prompts for a decoder of batch {self.batch}")
        longest = max(p.numel() for p in prompts)
        max_new_tokens = min(max_new_tokens, self.capacity - longest)
        with torch.inference_mode():
            lengths = torch.tensor([p.numel() for p in prompts], device=self.device)
            rows = torch.arange(count, device=self.device)
            seen = None
            if sampling.repetition_penalty != 1.0:  # the tokens each row has seen, which the penalty lowers
                seen = torch.zeros((count, self.embed.shape[0]), dtype=torch.bool, device=self.device)
                for row, prompt in enumerate(prompts):
                    seen[row, prompt.to(self.device)] = True
            logits = torch.stack([self.prefill(prompt, row) for row, prompt in enumerate(prompts)])
            ends = torch.tensor(sorted(eos_token_ids), device=self.device, dtype=torch.long)
            ended = torch.zeros(count, dtype=torch.bool, device=self.device)
            written: list[torch.Tensor] = []
            tokens_written = 0
            # Rows past `count` (a last, smaller batch) decode token 0 at position 0: slots no answer reads.
            step_tokens = torch.zeros(self.batch, dtype=torch.long, device=self.device)
            step_positions = torch.zeros(self.batch, dtype=torch.long, device=self.device)
            for offset in range(max_new_tokens):
                tokens = _next_token(logits, sampling, seen).view(count)
                written.append(torch.where(ended, -1, tokens))  # -1: after this row's end
                open_before = ~ended
                ended = ended | torch.isin(tokens, ends)
                # One wait for the GPU a step, as generate's stopping checks: how many rows were and are open.
                writing, still_open = torch.stack([open_before.sum(), (~ended).sum()]).tolist()
                tokens_written += writing
                if on_step is not None:
                    on_step(offset + 1, tokens_written)
                if not still_open or (stop is not None and stop.is_set()) or offset + 1 == max_new_tokens:
                    break
                if seen is not None:
                    seen[rows, tokens] = True
                step_tokens[:count], step_positions[:count] = tokens, lengths + offset
                logits = self.step_rows(step_tokens, step_positions)[:count]
            table = torch.stack(written, dim=1).tolist() if written else [[] for _ in prompts]
        return [[token for token in row if token >= 0] for row in table]


@dataclass
class _MergedLayer:
    """One decoder layer's weights, the adapter merged in: q, k, v fused into one matrix, and gate with
    up, for fewer launches."""

    attn_norm: torch.Tensor
    mlp_norm: torch.Tensor
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor | None
    out_weight: torch.Tensor
    gate_up_weight: torch.Tensor
    down_weight: torch.Tensor

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.qkv_weight, self.qkv_bias)

    def out(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.out_weight)

    def gate_up(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.gate_up_weight)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.down_weight)

    @classmethod
    def allocate(cls, layer, device, dtype) -> _MergedLayer:
        attn, mlp = layer.self_attn, layer.mlp

        def empty(*modules) -> torch.Tensor:
            rows = sum(_out_features(m) for m in modules)
            return torch.empty((rows, _in_features(modules[0])), device=device, dtype=dtype)

        with torch.inference_mode():
            has_bias = base_layer(attn.q_proj).bias is not None
            bias_rows = sum(_out_features(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
            return cls(
                attn_norm=layer.input_layernorm.weight.to(dtype),
                mlp_norm=layer.post_attention_layernorm.weight.to(dtype),
                qkv_weight=empty(attn.q_proj, attn.k_proj, attn.v_proj),
                qkv_bias=torch.empty(bias_rows, device=device, dtype=dtype) if has_bias else None,
                out_weight=empty(attn.o_proj),
                gate_up_weight=empty(mlp.gate_proj, mlp.up_proj),
                down_weight=empty(mlp.down_proj),
            )

    def fill(self, layer, use_adapter: bool) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        _write_rows(self.qkv_weight, [merged_weight(m, use_adapter) for m in (attn.q_proj, attn.k_proj, attn.v_proj)])
        if self.qkv_bias is not None:
            _write_rows(self.qkv_bias, [base_layer(m).bias for m in (attn.q_proj, attn.k_proj, attn.v_proj)])
        self.out_weight.copy_(merged_weight(attn.o_proj, use_adapter))
        _write_rows(self.gate_up_weight, [merged_weight(m, use_adapter) for m in (mlp.gate_proj, mlp.up_proj)])
        self.down_weight.copy_(merged_weight(mlp.down_proj, use_adapter))


class _Projection:
    """One of the model's own 4-bit linear layers, called as it is (bitsandbytes' kernel; its batch-1
    inference kernel for chat), with the LoRA adapter beside it: x A^T B^T times the adapter's scale
    times `adapter_on` (a 0-d tensor: 1 fine-tuned, 0 base), so one CUDA graph serves both sides."""

    def __init__(self, module, dtype, adapter_on: torch.Tensor):
        self.base = base_layer(module)
        self.adapter_on = adapter_on
        self.lora: tuple[torch.Tensor, torch.Tensor, float] | None = None
        lora_a = getattr(module, "lora_A", None)
        names = [n for n in getattr(module, "active_adapters", []) if lora_a is not None and n in lora_a]
        if names:  # the first active adapter: the engine attaches one
            name = names[0]
            self.lora = (lora_a[name].weight.detach().to(dtype), module.lora_B[name].weight.detach().to(dtype),
                         float(module.scaling[name]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.lora is not None:
            a, b, scale = self.lora
            y = y + F.linear(F.linear(x, a), b) * (self.adapter_on * scale)
        return y


class _FourBitLayer:
    """One decoder layer over the model's own 4-bit weights: no 16-bit copy, only the norms and the
    adapter's small matrices in the decoder's precision."""

    def __init__(self, layer, dtype, adapter_on: torch.Tensor):
        attn, mlp = layer.self_attn, layer.mlp
        self.attn_norm = layer.input_layernorm.weight.detach().to(dtype)
        self.mlp_norm = layer.post_attention_layernorm.weight.detach().to(dtype)
        self.q, self.k, self.v, self.o = (_Projection(getattr(attn, n), dtype, adapter_on)
                                          for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.gate, self.up, self.down_proj = (_Projection(getattr(mlp, n), dtype, adapter_on)
                                              for n in ("gate_proj", "up_proj", "down_proj"))

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def out(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(x)

    def gate_up(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.gate(x), self.up(x)], dim=-1)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(x)


# Weights of the loaded model: 4-bit or not, with a PEFT LoRA adapter or not ---------------------


def _out_features(module) -> int:
    return base_layer(module).out_features


def _in_features(module) -> int:
    return base_layer(module).in_features


def _write_rows(target: torch.Tensor, parts: list[torch.Tensor]) -> None:
    start = 0
    for part in parts:
        target[start : start + part.shape[0]].copy_(part)
        start += part.shape[0]


def _has_repacked_4bit(model: torch.nn.Module) -> bool:
    """4-bit weights on CPU: bitsandbytes repacks them for its own kernel, so they are left to it."""
    return any(getattr(p, "quant_state", None) is not None and p.device.type == "cpu" for p in model.parameters())


def _decode_dtype(embed: torch.Tensor) -> torch.dtype:
    """16-bit on a GPU even where training upcast the embeddings to float32 (PEFT's k-bit preparation
    does): half the bytes to read per token."""
    if embed.device.type != "cuda":
        return embed.dtype
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _weights_that_fit(model: torch.nn.Module, tokens: int) -> DecoderWeights | None:
    """The fastest weights whose decoder fits in the GPU's free memory with a cache of `tokens` (all
    rows together): the merged 16-bit copy, else the model's own 4-bit weights; None when neither fits.
    On CPU always the copy (there bitsandbytes repacks 4-bit weights, which `unsupported_reason` turns down)."""
    inner = inner_model(model)
    if inner.model.embed_tokens.weight.device.type != "cuda":
        return "merged"
    config = inner.config
    layer = inner.model.layers[0]
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cache = 2 * 2 * heads * head_dim * tokens * len(inner.model.layers)  # keys and values, 16-bit
    copy = 2 * len(inner.model.layers) * sum(
        _out_features(m) * _in_features(m) for m in
        (*(getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")),
         *(getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))))
    head = inner.lm_head.weight
    head_copy = 0 if head.dtype in (torch.bfloat16, torch.float16) else 2 * head.numel()
    free, _ = torch.cuda.mem_get_info()
    room = free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    four_bit = getattr(base_layer(layer.self_attn.q_proj).weight, "quant_state", None) is not None
    return pick_weights(room, copy, cache + head_copy, four_bit)


def pick_weights(room: int, copy_bytes: int, other_bytes: int, four_bit: bool) -> DecoderWeights | None:
    """'merged' where the 16-bit copy and the rest (cache, a 16-bit lm_head) fit in `room` bytes with
    `HEADROOM_BYTES` to spare; else '4bit' where the model's weights are 4-bit and the rest fits; else None."""
    room -= HEADROOM_BYTES
    if copy_bytes + other_bytes < room:
        return "merged"
    if four_bit and other_bytes < room:
        return "4bit"
    return None


# Math -------------------------------------------------------------------------------------------


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As Llama and Qwen2 do it: in float32, scaled back in the input's precision."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rope_tables(inner, capacity: int, head_dim: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every cache slot, from the model's own inverse frequencies (scaling applied)."""
    rotary = inner.model.rotary_emb
    inv_freq = rotary.inv_freq.to(device=device, dtype=torch.float32)
    angles = torch.outer(torch.arange(capacity, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    scale = getattr(rotary, "attention_scaling", 1.0)
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _next_token(logits: torch.Tensor, sampling: Sampling, seen: torch.Tensor | None) -> torch.Tensor:
    """Repetition penalty, then greedy or temperature and nucleus (top-p) sampling, over the last
    dimension: (vocab,) logits give a 1-element tensor, (rows, vocab) a (rows, 1) one. `seen`: the
    tokens the penalty applies to (None where there is no penalty)."""
    if sampling.repetition_penalty != 1.0:
        penalized = torch.where(logits > 0, logits / sampling.repetition_penalty,
                                logits * sampling.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / sampling.temperature
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) > sampling.top_p  # keeps the token crossing top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1)
