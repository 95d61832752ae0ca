"""Fast batch-1 decoding: merged weights, a static KV cache, and one CUDA graph per token.

Chat answers one question at a time, so each new token is a matrix-vector product per weight:
the speed limit is reading the weights from memory once per token. Three things get in the way on
the usual path, and this decoder removes them:

1. the 4-bit weights are dequantized again for every token, and the LoRA adapter adds seven small
   products per layer: here the adapter is merged into one 16-bit copy of the weights, written once
   (and rewritten in place, in milliseconds, when chat switches between base and fine-tuned);
2. the KV cache grows token by token: here it is allocated once, for the whole conversation;
3. hundreds of small kernel launches per token, each waiting on Python: on CUDA, one decode step is
   captured as a CUDA graph and replayed, so a token costs one launch.

It supports the Llama family that the presets use (Llama, Qwen2, SmolLM2); `decoder_for` returns
None for anything else, and chat falls back to transformers' `generate`.

    decoder = decoder_for(loaded, use_adapter=True, tokens_needed=2048)
    for token in decoder.generate(prompt_ids, settings, stop):
        ...
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from finetune.models.load import LoadedModel
from finetune.models.merge import base_layer, inner_model, merged_weight

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


def decoder_for(loaded: LoadedModel, use_adapter: bool, tokens_needed: int) -> FastDecoder | None:
    """The loaded model's fast decoder, holding the base (adapter off) or fine-tuned weights; None when
    this model cannot use one or the GPU has no room for a 16-bit copy (chat then uses `generate`).

    The decoder lives on `loaded.decoder` until the adapter changes (see `finetune.models.adapters`) or a
    training run starts, which drop it to give training the memory.
    """
    decoder = loaded.decoder
    capacity = CAPACITY_STEP * math.ceil(tokens_needed / CAPACITY_STEP)
    if decoder is not None and decoder.capacity < capacity:
        loaded.decoder = decoder = None  # free the small cache before a larger one is made
    if decoder is None:
        if unsupported_reason(loaded.model) is not None or not _fits(loaded.model, capacity):
            return None
        decoder = loaded.decoder = FastDecoder(loaded.model, capacity)
    decoder.load_weights(loaded.model, use_adapter)
    return decoder


class FastDecoder:
    """A Llama-family decoder over plain tensors, for one sequence at a time."""

    def __init__(self, model: torch.nn.Module, capacity: int, dtype: torch.dtype | None = None):
        """`dtype`: the precision of the copy; by default 16-bit on a GPU, the model's own on CPU."""
        inner = inner_model(model)
        config = inner.config
        embed = inner.model.embed_tokens.weight
        self.device, self.dtype, self.capacity = embed.device, dtype or _decode_dtype(embed), capacity
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = config.rms_norm_eps
        self.embed = embed.to(self.dtype)
        self.final_norm = inner.model.norm.weight.to(self.dtype)
        self.lm_head = inner.lm_head.weight.to(self.dtype)
        self.layers = [_LayerWeights.allocate(layer, self.device, self.dtype) for layer in inner.model.layers]
        self.weights_key: tuple | None = None
        cache_shape = (len(self.layers), 1, self.kv_heads, capacity, self.head_dim)
        with torch.inference_mode():
            self.k_cache = torch.zeros(cache_shape, device=self.device, dtype=self.dtype)
            self.v_cache = torch.zeros(cache_shape, device=self.device, dtype=self.dtype)
            self.cos, self.sin = _rope_tables(inner, capacity, self.head_dim, self.device, self.dtype)
            self.token = torch.zeros((1, 1), device=self.device, dtype=torch.long)
            self.position = torch.zeros((1,), device=self.device, dtype=torch.long)
            self.slots = torch.arange(capacity, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_logits: torch.Tensor | None = None

    @property
    def description(self) -> str:
        precision = str(self.dtype).removeprefix("torch.")
        graphs = ", CUDA graphs" if self.device.type == "cuda" else ""
        return f"fast decoder: merged {precision} weights, static KV cache{graphs}"

    def load_weights(self, model: torch.nn.Module, use_adapter: bool) -> None:
        """Write the model's weights (adapter merged in, or left out) into this decoder's copy."""
        key = (id(model), use_adapter)
        if key == self.weights_key:
            return
        with torch.inference_mode():
            for layer, weights in zip(inner_model(model).model.layers, self.layers, strict=True):
                weights.fill(layer, use_adapter)
        self.weights_key = key

    # The forward pass ------------------------------------------------------------------------

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits of the last token; writes the keys and values of `tokens` into the cache."""
        x = F.embedding(tokens, self.embed)  # (1, T, hidden)
        cos, sin = self.cos[positions], self.sin[positions]  # (T, head_dim)
        for index, layer in enumerate(self.layers):
            x = x + self._attention(index, layer, _rms_norm(x, layer.attn_norm, self.eps), positions, cos, sin)
            hidden = F.linear(_rms_norm(x, layer.mlp_norm, self.eps), layer.gate_up)
            gate, up = hidden.chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        x = _rms_norm(x[:, -1], self.final_norm, self.eps)
        return F.linear(x, self.lm_head).float()[0]

    def _attention(self, index, layer, x, positions, cos, sin) -> torch.Tensor:
        length = x.shape[1]
        qkv = F.linear(x, layer.qkv, layer.qkv_bias)
        q, k, v = qkv.split([self.heads * self.head_dim, self.kv_heads * self.head_dim,
                             self.kv_heads * self.head_dim], dim=-1)
        q = _rotate(q.view(1, length, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = _rotate(k.view(1, length, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        v = v.view(1, length, self.kv_heads, self.head_dim).transpose(1, 2)
        self.k_cache[index].index_copy_(2, positions, k)
        self.v_cache[index].index_copy_(2, positions, v)
        if length == 1:
            out = self._attend_one(q, index, positions)
        else:  # a fresh prompt from position 0: causal attention over the prompt
            group = self.heads // self.kv_heads
            out = F.scaled_dot_product_attention(
                q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1), is_causal=True
            )
        return F.linear(out.transpose(1, 2).reshape(1, length, -1), layer.out)

    def _attend_one(self, q: torch.Tensor, index: int, position: torch.Tensor) -> torch.Tensor:
        """One query against the whole cache, grouped by KV head so the cache is read once, unexpanded."""
        group = self.heads // self.kv_heads
        q = q.view(1, self.kv_heads, group, self.head_dim)
        scores = torch.matmul(q, self.k_cache[index].transpose(-1, -2)).float() / math.sqrt(self.head_dim)
        scores = scores.masked_fill(self.slots > position, float("-inf"))
        out = torch.matmul(scores.softmax(dim=-1).to(self.dtype), self.v_cache[index])
        return out.view(1, self.heads, 1, self.head_dim)

    # Generation -------------------------------------------------------------------------------

    def prefill(self, prompt: torch.Tensor) -> torch.Tensor:
        """Run the prompt (1-D token ids) from position 0; the logits for the first new token."""
        if prompt.numel() >= self.capacity:
            raise ValueError(f"prompt of {prompt.numel()} tokens does not fit a cache of {self.capacity}")
        prompt = prompt.to(self.device).view(1, -1)
        return self._forward(prompt, torch.arange(prompt.shape[1], device=self.device))

    def step(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """Logits after `token` (a 1-element tensor) at `position`; on CUDA a CUDA graph replay."""
        self.token.copy_(token.view(1, 1))
        self.position.fill_(position)
        if self.device.type != "cuda":
            return self._forward(self.token, self.position)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.graph_logits

    def _capture(self) -> None:
        # A few eager runs on a side stream first, as CUDA graph capture requires; they write only
        # into cache slot `self.position`, which the next real step overwrites.
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(self.token, self.position)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.graph_logits = self._forward(self.token, self.position)
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
            seen = torch.zeros(self.embed.shape[0], dtype=torch.bool, device=self.device)
            seen[prompt.to(self.device)] = True
            logits = self.prefill(prompt)
            for offset in range(max_new_tokens):
                token = _next_token(logits, sampling, seen)
                token_id = int(token)
                yield token_id
                if token_id in eos_token_ids or (stop is not None and stop.is_set()):
                    return
                seen[token] = True
                logits = self.step(token, prompt.numel() + offset)


@dataclass
class _LayerWeights:
    """One decoder layer's weights: q, k, v fused into one matrix, and gate with up, for fewer launches."""

    attn_norm: torch.Tensor
    mlp_norm: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    out: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor

    @classmethod
    def allocate(cls, layer, device, dtype) -> _LayerWeights:
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
                qkv=empty(attn.q_proj, attn.k_proj, attn.v_proj),
                qkv_bias=torch.empty(bias_rows, device=device, dtype=dtype) if has_bias else None,
                out=empty(attn.o_proj),
                gate_up=empty(mlp.gate_proj, mlp.up_proj),
                down=empty(mlp.down_proj),
            )

    def fill(self, layer, use_adapter: bool) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        _write_rows(self.qkv, [merged_weight(m, use_adapter) for m in (attn.q_proj, attn.k_proj, attn.v_proj)])
        if self.qkv_bias is not None:
            _write_rows(self.qkv_bias, [base_layer(m).bias for m in (attn.q_proj, attn.k_proj, attn.v_proj)])
        self.out.copy_(merged_weight(attn.o_proj, use_adapter))
        _write_rows(self.gate_up, [merged_weight(m, use_adapter) for m in (mlp.gate_proj, mlp.up_proj)])
        self.down.copy_(merged_weight(mlp.down_proj, use_adapter))


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


def _fits(model: torch.nn.Module, capacity: int) -> bool:
    """Whether a 16-bit copy of the layers and the cache fit in the GPU's free memory (always on CPU)."""
    inner = inner_model(model)
    if inner.model.embed_tokens.weight.device.type != "cuda":
        return True
    config = inner.config
    layer = inner.model.layers[0]
    numbers = sum(_out_features(m) * _in_features(m) for m in
                  (*(getattr(layer.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")),
                   *(getattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))))
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    numbers += 2 * heads * head_dim * capacity  # keys and values
    needed = 2 * numbers * len(inner.model.layers)
    free, _ = torch.cuda.mem_get_info()
    reusable = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    return needed + HEADROOM_BYTES < free + reusable


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


def _next_token(logits: torch.Tensor, sampling: Sampling, seen: torch.Tensor) -> torch.Tensor:
    """Repetition penalty, then greedy or temperature and nucleus (top-p) sampling; a 1-element tensor."""
    if sampling.repetition_penalty != 1.0:
        penalized = torch.where(logits > 0, logits / sampling.repetition_penalty,
                                logits * sampling.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if sampling.temperature <= 0:
        return logits.argmax().view(1)
    logits = logits / sampling.temperature
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) > sampling.top_p  # keeps the token crossing top_p
        logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(dim=-1), 1)
