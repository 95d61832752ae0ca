"""A merged model as one GGUF file, for llama.cpp, Ollama and LM Studio.

    export_gguf(loaded, folder, "gguf_q4_k_m")        # folder/model-q4_k_m.gguf

What llama.cpp's own tools would write: `convert_hf_to_gguf.py` for the names, metadata, tokenizer
and the f16 / q8_0 files; `llama-quantize` for the q4_k_m mix (Q4_K, Q6_K where it matters, Q5_0 /
Q8_0 where a row is not a multiple of 256). gguf-py has no Q4_K / Q6_K encoder, so the two are here
in numpy, following ggml's reference C (`quantize_row_q4_K_ref`, `quantize_row_q6_K_ref`).
Weights are merged, converted and written one tensor at a time: the file is streamed, and no second
copy of the model is ever held in memory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QType
from gguf.constants import GGML_QUANT_SIZES, QK_K

from finetune.models.merge import base_layer, inner_model, merged_weight

GGUF_FORMATS = {
    "gguf_f16": (gguf.LlamaFileType.MOSTLY_F16, "the base model with the LoRA adapter merged in, as one GGUF file, "
                 "16-bit (llama.cpp, Ollama, LM Studio)"),
    "gguf_q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, "the base model with the LoRA adapter merged in, as one GGUF file, "
                  "8-bit Q8_0 (llama.cpp, Ollama, LM Studio)"),
    "gguf_q4_k_m": (gguf.LlamaFileType.MOSTLY_Q4_K_M, "the base model with the LoRA adapter merged in, as one GGUF "
                    "file, 4-bit Q4_K_M mix as llama-quantize makes it (llama.cpp, Ollama, LM Studio)"),
}
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}

# llama.cpp tells BPE pre-tokenizers apart by how the tokenizer encodes a fixed text: convert_hf_to_gguf
# writes the name it lists for sha256(str(tokenizer.encode(text))). The encoding keeps the special tokens
# the tokenizer adds, so a BOS counts: R1-Distill-Qwen is Qwen2's split plus a BOS, hence its own name
# (llama.cpp splits 'deepseek-r1-qwen' as 'qwen2'). The hashes of the R1 distills' tokenizers and Qwen2's, as
# llama.cpp lists them; other tokenizers are named by their regexes below.
LLAMA_CPP_CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n"
    "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 \U0001f999\U0001f999 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)  # escapes, not the characters: the emoji's joiner and variation selector, and the Khmer, stay visible
PRE_TOKENIZER_HASHES = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3, R1-Distill-Llama
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",  # R1-Distill-Qwen
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 (no BOS)
}
# The regexes of the pre-tokenizers llama.cpp knows, as tokenizer.json spells them, by llama.cpp's name.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {  # (Split regexes, individual digits, ByteLevel's own regex) -> tokenizer.ggml.pre
    ((), False, True): "gpt-2",
    ((), True, True): "smollm",
    ((LLAMA3_SPLIT,), False, False): "llama-bpe",
    ((QWEN2_SPLIT,), False, False): "qwen2",
}
CHUNK_VALUES = 1 << 20  # K-quant rows are encoded about a million values at a time: fast, and little memory


class GGUFExportError(RuntimeError):
    """This model or tokenizer cannot be written as GGUF; the message says why."""


def gguf_filename(fmt: str) -> str:
    """`gguf_q8_0` -> `model-q8_0.gguf`."""
    return f"model-{fmt.removeprefix('gguf_')}.gguf"


def run_instructions(fmt: str) -> str:
    """The model card's line on how to run the file."""
    name = gguf_filename(fmt)
    return (f"- Run it: `llama-cli -m {name}` or `llama-server -m {name}` (llama.cpp, which uses the chat "
            f"template inside the file); Ollama: a `Modelfile` with `FROM ./{name}`, then "
            "`ollama create my-model -f Modelfile` and `ollama run my-model`")


def export_gguf(loaded, folder: Path, fmt: str, base_name: str | None = None, base_repo: str | None = None) -> Path:
    """Write `loaded`'s model, adapter merged, as `folder/model-<type>.gguf`; returns the file. `base_name`
    and `base_repo` name the model fine-tuned (export.base_model: for the embedded model its Hub repo,
    not the word 'embedded'); general.name is then "SmolLM2-135M-Instruct + LoRA"."""
    model = inner_model(loaded.model)
    path = Path(folder) / gguf_filename(fmt)
    name = f"{Path(base_name or loaded.info.name).name} + LoRA"
    write_gguf(path, MergedWeights(loaded.model), model.config, loaded.tokenizer, fmt, name, base_repo)
    return path


class MergedWeights(Mapping):
    """`merge.merged_state_dict`, lazily: a weight is merged (and 4-bit weights dequantized) only
    when asked for, so an export holds one tensor at a time, not a second copy of the model."""

    def __init__(self, model: torch.nn.Module):
        self._inner = inner_model(model)
        names = (name for name, _ in [*self._inner.named_parameters(), *self._inner.named_buffers()])
        self._names = [name.replace(".base_layer.", ".") for name in names if "lora_" not in name]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        module_name, _, attr = name.rpartition(".")
        module = self._inner.get_submodule(module_name)
        with torch.no_grad():
            if hasattr(module, "lora_A") or hasattr(getattr(module, "weight", None), "quant_state"):
                return merged_weight(module) if attr == "weight" else getattr(base_layer(module), attr)
            return getattr(module, attr)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    """The GGUF name (`blk.0.attn_q.weight`)."""
    source: str | None
    """The transformers name, or None for a tensor computed from the config (`rope_freqs`)."""
    shape: tuple[int, ...]
    qtype: QType


def write_gguf(path: Path, weights: Mapping[str, torch.Tensor], config, tokenizer, fmt: str, name: str,
               base_repo: str | None = None) -> None:
    """Write one GGUF file from transformers-named `weights` (a dict, or `MergedWeights`), the model's
    config and its tokenizer: the header first, then each tensor as it is converted. `name` is
    general.name; `base_repo`, the Hub repo fine-tuned, goes in general.base_model.* as convert_hf_to_gguf
    writes it from a model card."""
    if fmt not in GGUF_FORMATS:
        raise GGUFExportError(f"unknown GGUF format {fmt!r}; choose from {', '.join(GGUF_FORMATS)}")
    arch = _architecture(config)
    plan = plan_tensors(config, weights, fmt)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])
    _add_model_metadata(writer, config, fmt, name)
    if base_repo is not None:
        _add_base_model(writer, base_repo)
    _add_tokenizer(writer, tokenizer, config.vocab_size)
    for tensor in plan:
        writer.add_tensor_info(tensor.name, tensor.shape, np.dtype(np.float32), _nbytes(tensor), raw_dtype=tensor.qtype)
    try:
        writer.write_header_to_file(path=Path(path))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in plan:
            writer.write_tensor_data(encode(_tensor_values(tensor, weights, config), tensor.qtype))
    finally:
        writer.close()


def _architecture(config) -> gguf.MODEL_ARCH:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise GGUFExportError(
            f"GGUF export supports the {' and '.join(ARCHITECTURES)} architectures; this model is {model_type!r}"
        )
    return ARCHITECTURES[model_type]


def plan_tensors(config, weights: Mapping[str, torch.Tensor], fmt: str) -> list[PlannedTensor]:
    """Every tensor of the file, in llama.cpp's names, with its shape and type, from the config alone
    (the weights are only checked for presence, not loaded)."""
    from transformers import AutoModelForCausalLM  # heavy: loads on first use

    arch = _architecture(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plain = config.__class__.from_dict(config.to_dict())
    if hasattr(plain, "quantization_config"):
        del plain.quantization_config  # a 4-bit base model's config: the meta model need not be 4-bit
    with torch.device("meta"):  # names and shapes, no memory
        meta = AutoModelForCausalLM.from_config(plain)
    shapes = {key: tuple(value.shape) for key, value in meta.state_dict().items()}
    if tied:
        shapes.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when there is no output.weight
    missing = [key for key in shapes if key not in weights]
    if missing:
        raise GGUFExportError(f"cannot export this model: no weights for {', '.join(missing[:3])}")
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    plan = []
    if (factors := rope_freq_factors(config)) is not None:
        plan.append(PlannedTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", None,
                                  tuple(factors.shape), QType.F32))
    for key, shape in shapes.items():
        gguf_name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise GGUFExportError(f"cannot export this model: llama.cpp has no tensor for {key}")
        qtype = tensor_type(gguf_name, shape, fmt, config.num_hidden_layers, has_output=not tied)
        plan.append(PlannedTensor(gguf_name, key, shape, qtype))
    return plan


def tensor_type(name: str, shape: tuple[int, ...], fmt: str, n_layers: int, has_output: bool) -> QType:
    """The type llama.cpp would give this tensor: 1-D tensors and norms stay F32 (convert_hf_to_gguf);
    q8_0 falls back to F16 for rows not a multiple of 32 (convert); q4_k_m is llama-quantize's mix."""
    if len(shape) < 2 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return QType.F32
    if fmt == "gguf_f16":
        return QType.F16
    if fmt == "gguf_q8_0":
        return _fallback(QType.Q8_0, shape[-1])
    return _q4_k_m_type(name, shape[-1], n_layers, has_output)


def _q4_k_m_type(name: str, columns: int, n_layers: int, has_output: bool) -> QType:
    # llama_tensor_get_type for LLAMA_FTYPE_MOSTLY_Q4_K_M, dense models (no experts, not Falcon, not 70B).
    if name == "output.weight" or (not has_output and name == "token_embd.weight"):
        return QType.Q6_K if columns % QK_K == 0 else _fallback(QType.Q8_0, columns)
    wanted = QType.Q4_K
    if (".attn_v." in name or ".ffn_down" in name) and _use_more_bits(int(name.split(".")[1]), n_layers):
        wanted = QType.Q6_K
    return _fallback(wanted, columns)


def _use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, and every third."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def _fallback(qtype: QType, columns: int) -> QType:
    """llama.cpp's type for rows that do not split into this type's blocks (tensor_type_fallback)."""
    if columns % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    fallback = {QType.Q4_K: QType.Q5_0, QType.Q6_K: QType.Q8_0}.get(qtype, QType.F16)
    return fallback if columns % GGML_QUANT_SIZES[fallback][0] == 0 else QType.F16


def _nbytes(tensor: PlannedTensor) -> int:
    block, size = GGML_QUANT_SIZES[tensor.qtype]
    return math.prod(tensor.shape) // block * size


def _tensor_values(tensor: PlannedTensor, weights: Mapping[str, torch.Tensor], config) -> np.ndarray:
    """One tensor in fp32, in llama.cpp's layout."""
    if tensor.source is None:
        return rope_freq_factors(config).numpy()
    values = weights[tensor.source].detach().to("cpu", torch.float32)
    if config.model_type == "llama" and tensor.source.endswith(("q_proj.weight", "q_proj.bias")):
        values = _permute_for_rope(values, config.num_attention_heads)
    elif config.model_type == "llama" and tensor.source.endswith(("k_proj.weight", "k_proj.bias")):
        values = _permute_for_rope(values, config.num_key_value_heads or config.num_attention_heads)
    return values.numpy()


def _permute_for_rope(values: torch.Tensor, heads: int) -> torch.Tensor:
    """Transformers rotates the two halves of each head; llama.cpp's llama rotates interleaved pairs.
    convert_hf_to_gguf reorders q/k rows to match (transformers' GGUF loader undoes it)."""
    return values.reshape(heads, 2, values.shape[0] // heads // 2, *values.shape[1:]).swapaxes(1, 2).reshape(
        values.shape)


def rope_freq_factors(config) -> torch.Tensor | None:
    """Llama 3's rope scaling as llama.cpp takes it: a `rope_freqs` tensor that divides each rotary
    frequency (convert_hf_to_gguf's LlamaModel.generate_extra_tensors). None without llama3 scaling."""
    rope = _rope_parameters(config)
    if rope["rope_type"] != "llama3":
        return None
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    freqs = 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, old_context = rope.get("factor", 8.0), rope.get("original_max_position_embeddings", 8192)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    factors = []
    for freq in freqs.tolist():
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def _rope_parameters(config) -> dict:
    """Transformers 5's `rope_parameters`, or the older `rope_scaling` + `rope_theta`."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    rope["rope_type"] = rope.get("rope_type", rope.get("type")) or "default"
    return rope


def _add_model_metadata(writer: gguf.GGUFWriter, config, fmt: str, name: str) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = _rope_parameters(config)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if config.model_type == "llama":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    elif rope["rope_type"] == "llama3" and config.model_type != "llama":
        raise GGUFExportError(f"llama3 rope scaling on a {config.model_type} model: llama.cpp would ignore it")
    elif rope["rope_type"] not in ("default", "llama3"):
        raise GGUFExportError(f"GGUF export does not handle {rope['rope_type']!r} rope scaling yet")
    writer.add_file_type(GGUF_FORMATS[fmt][0])
    if fmt != "gguf_f16":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_base_model(writer: gguf.GGUFWriter, repo: str) -> None:
    """general.basename and general.base_model.0.*: the repo's name and organization, and its URL."""
    organization, _, model = repo.rpartition("/")
    writer.add_basename(model)
    writer.add_base_model_count(1)
    writer.add_base_model_name(0, model)
    if organization:
        writer.add_base_model_organization(0, organization)
    writer.add_base_model_repo_url(0, f"https://huggingface.co/{repo}")


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's 'gpt2' model (convert_hf_to_gguf's _set_vocab_gpt2)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    if spec.get("model", {}).get("type") != "BPE":
        raise GGUFExportError("GGUF export needs a fast byte-level BPE tokenizer (tokenizer.json), as R1 models have")
    tokens, token_types = _vocabulary(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre(tokenizer, spec.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    merges = spec["model"]["merges"]  # "a b" strings, or [a, b] pairs in newer tokenizer.json files
    writer.add_token_merges([merge if isinstance(merge, str) else " ".join(merge) for merge in merges])
    special_ids = [(writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                   (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id)]
    for add, token_id in special_ids:
        if token_id is not None:
            add(token_id)
    with_special, plain = tokenizer("x").input_ids, tokenizer("x", add_special_tokens=False).input_ids
    writer.add_add_bos_token(len(with_special) > len(plain) and with_special[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(with_special) > len(plain) and with_special[-1] == tokenizer.eos_token_id)
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types for every row of the embedding: added special tokens are CONTROL,
    other added tokens USER_DEFINED, and rows past the tokenizer's vocabulary UNUSED `[PADn]`."""
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise GGUFExportError(f"the tokenizer has ids up to {max(by_id)} but the model only {vocab_size} embeddings")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def tokenizer_pre(tokenizer, spec: dict | None) -> str:
    """tokenizer.ggml.pre for this tokenizer: llama.cpp's own name when its check hash is one llama.cpp
    lists, else the name of its pre-tokenizer's regexes (`pre_tokenizer_name`)."""
    return PRE_TOKENIZER_HASHES.get(pre_tokenizer_hash(tokenizer)) or pre_tokenizer_name(spec)


def pre_tokenizer_hash(tokenizer) -> str:
    """convert_hf_to_gguf's `chkhsh`: the sha256 of the ids of LLAMA_CPP_CHECK_TEXT, as a Python list's str."""
    return hashlib.sha256(str(tokenizer.encode(LLAMA_CPP_CHECK_TEXT)).encode()).hexdigest()


def pre_tokenizer_name(spec: dict | None) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for a tokenizer.json pre-tokenizer, so llama.cpp splits
    text as the tokenizer the model was trained with does; unknown ones are refused, not guessed."""
    steps = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" else [spec or {}]
    kinds = {step.get("type") for step in steps}
    byte_level = [step for step in steps if step.get("type") == "ByteLevel"]
    key = (
        tuple(step.get("pattern", {}).get("Regex") for step in steps if step.get("type") == "Split"),
        any(step.get("type") == "Digits" and step.get("individual_digits") for step in steps),
        bool(byte_level and byte_level[0].get("use_regex", True)),
    )
    if not byte_level or not kinds <= {"Split", "Digits", "ByteLevel"} or key not in PRE_TOKENIZERS:
        raise GGUFExportError(f"the tokenizer's pre-tokenizer is not one this export knows for llama.cpp: {spec}")
    return PRE_TOKENIZERS[key]


def encode(values: np.ndarray, qtype: QType) -> np.ndarray:
    """fp32 values as `qtype`'s bytes (or fp16 / fp32 values)."""
    if qtype == QType.F32:
        return values.astype(np.float32)
    if qtype == QType.F16:
        return values.astype(np.float16)
    if qtype in (QType.Q4_K, QType.Q6_K):
        rows = values.reshape(-1, values.shape[-1])
        step = max(1, CHUNK_VALUES // rows.shape[1])
        quantize = quantize_q4_k if qtype == QType.Q4_K else quantize_q6_k
        # numpy lets go of the GIL in its loops, so threads share the cores: an 8B model's q4_k_m is
        # about 40 CPU-minutes of numpy.
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            chunks = pool.map(quantize, (rows[start:start + step] for start in range(0, len(rows), step)))
            return np.concatenate(list(chunks)).reshape(*values.shape[:-1], -1)
    return gguf.quants.quantize(values, qtype)  # Q8_0, Q5_0: gguf-py's, bit-exact with ggml


# --- Q4_K and Q6_K, after ggml-quants.c. Every group of one tensor is fitted at once, with the values
# of a group along the first axis: numpy then adds them in order, in fp32, as ggml's loops do, so the
# searches below (which compare errors that differ in the last bits) choose as ggml does.

GROUP_MAX_EPS = np.float32(1e-15)
F = np.float32


def _sum(values: np.ndarray) -> np.ndarray:
    return values.sum(axis=0)


def _fp16(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fp16 bytes, their fp32 value): ggml quantizes against the scale as stored, not as computed."""
    half = values.astype(np.float16)
    return half.view(np.uint8).reshape(*values.shape[:-1], -1), half.astype(np.float32)


def _qkx2_quants(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants(32, 15, rmin=-1, rdelta=0.1, nstep=20) for every 32-value group: (scale, min,
    levels) fitting the group best under ggml's weights. Each try starts from the best min so far."""
    x = np.ascontiguousarray(groups.reshape(-1, 32).T)
    weights = np.sqrt(_sum(x * x) / F(32)) + np.abs(x)
    low, high = np.minimum(x.min(axis=0), F(0)), x.max(axis=0)
    flat = high == low
    sum_w, sum_x = _sum(weights), _sum(weights * x)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F(15) / (high - low)
        scale = F(1) / iscale
        levels = np.clip(np.rint(iscale * (x - low)), 0, 15)
        best = _sum(weights * (scale * levels + low - x) ** 2)
        for step in range(21):
            iscale = (F(-1) + F(0.1) * F(step) + F(15)) / (high - low)
            tried = np.clip(np.rint(iscale * (x - low)), 0, 15)
            weighted = weights * tried
            sum_l, sum_l2, sum_xl = _sum(weighted), _sum(weighted * tried), _sum(weighted * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0  # a min above zero is clamped to zero, and the scale refitted
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            this_min = np.where(positive, F(0), this_min)
            error = _sum(weights * (this_scale * tried + this_min - x) ** 2)
            better = (det > 0) & (error < best) & ~flat
            best = np.where(better, error, best)
            scale = np.where(better, this_scale, scale)
            low = np.where(better, this_min, low)
            levels = np.where(better, tried, levels)
    scale = np.where(flat, F(0), scale).reshape(groups.shape[:-1])
    levels = np.where(flat, 0, levels).T.reshape(groups.shape).astype(np.uint8)
    return scale, (F(0) - low).reshape(groups.shape[:-1]), levels


def quantize_q4_k(rows: np.ndarray) -> np.ndarray:
    """Q4_K blocks (quantize_row_q4_K_ref): 256 values as 8 groups of 32 with 6-bit scales and mins
    under two fp16 super-scales, and 4-bit levels; 144 bytes a block."""
    x = rows.astype(np.float32).reshape(-1, QK_K // 32, 32)
    scales, mins, first_levels = _qkx2_quants(x)
    max_scale = np.maximum(scales.max(axis=-1), F(0)) + F(0)  # ggml starts at +0: never -0
    max_min = np.maximum(mins.max(axis=-1), F(0)) + F(0)
    with np.errstate(divide="ignore"):
        scale_levels = np.clip(np.rint(np.where(max_scale > 0, F(63) / max_scale, F(0))[:, None] * scales), 0, 63)
        min_levels = np.clip(np.rint(np.where(max_min > 0, F(63) / max_min, F(0))[:, None] * mins), 0, 63)
    ls, lm = scale_levels.astype(np.uint8), min_levels.astype(np.uint8)
    d_bytes, d = _fp16((max_scale / F(63))[:, None])
    dmin_bytes, dmin = _fp16((max_min / F(63))[:, None])
    group_d, group_min = d * ls, dmin * lm
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint((x + group_min[..., None]) / group_d[..., None]), 0, 15)
    q = np.where(group_d[..., None] == 0, first_levels, q).astype(np.uint8)  # ggml keeps the first fit's
    packed_scales = [ls[:, :4] | (ls[:, 4:] >> 4) << 6, lm[:, :4] | (lm[:, 4:] >> 4) << 6,
                     ls[:, 4:] & 0xF | (lm[:, 4:] & 0xF) << 4]
    q = q.reshape(-1, 4, 2, 32)  # per 64 values: the first 32 in the low nibbles, the next 32 in the high
    qs = (q[:, :, 0] | q[:, :, 1] << 4).reshape(-1, 128)
    return np.concatenate([d_bytes, dmin_bytes, *packed_scales, qs], axis=-1).reshape(rows.shape[0], -1)


def _qx_quants(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(16, 32, rmse_type=1) for every 16-value group: (scale, levels + 32) of the
    symmetric grid with the least x²-weighted error among 19 candidates."""
    x = np.ascontiguousarray(groups.reshape(-1, 16).T)
    peak = np.take_along_axis(x, np.abs(x).argmax(axis=0)[None], axis=0)[0]
    zero = np.abs(peak) < GROUP_MAX_EPS
    weights = x * x
    weights_x = weights * x  # ggml sums (w*x)*l, in that order
    best_scale = best = levels = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for step in [0, *range(-9, 0), *range(1, 10)]:
            tried = np.clip(np.rint(-(F(32) + F(0.1) * F(step)) / peak * x), -32, 31)
            sum_lx, sum_l2 = _sum(weights_x * tried), _sum(weights * tried * tried)
            scale = np.where(sum_l2 > 0, sum_lx / sum_l2, F(0))
            if best is None:
                best_scale, best, levels = scale, scale * sum_lx, tried
                continue
            better = (sum_l2 > 0) & (sum_lx * sum_lx > best * sum_l2)
            best_scale = np.where(better, scale, best_scale)
            best = np.where(better, scale * sum_lx, best)
            levels = np.where(better, tried, levels)
    levels = np.where(zero, 0, levels + 32).T.reshape(groups.shape).astype(np.uint8)
    return np.where(zero, F(0), best_scale).reshape(groups.shape[:-1]), levels


def quantize_q6_k(rows: np.ndarray) -> np.ndarray:
    """Q6_K blocks (quantize_row_q6_K_ref): 256 values as 16 groups of 16 with int8 scales under an
    fp16 super-scale, and 6-bit levels as 4 low + 2 high bits; 210 bytes a block."""
    x = rows.astype(np.float32).reshape(-1, QK_K // 16, 16)
    scales, first_levels = _qx_quants(x)
    max_scale = np.take_along_axis(scales, np.abs(scales).argmax(axis=-1)[:, None], axis=-1)[:, 0]
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = np.where(empty, F(0), F(-128) / np.where(empty, F(1), max_scale))
    d_bytes, d = _fp16(np.where(empty, F(0), F(1) / np.where(empty, F(1), iscale))[:, None])
    sc = np.minimum(127, np.rint(iscale[:, None] * scales)).astype(np.int8)
    group_d = d * sc
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint(x / group_d[..., None]), -32, 31) + 32
    q = np.where(group_d[..., None] == 0, first_levels, q).astype(np.uint8)  # ggml keeps the first fit's
    q = np.where(empty[:, None, None], 0, q).reshape(-1, 2, 4, 32)  # and zeroes an all-zero block
    # Per 128 values: ql holds the low nibbles of quarters 0|2 and 1|3, qh the high 2 bits of all four.
    ql = np.concatenate([q[:, :, 0] & 0xF | (q[:, :, 2] & 0xF) << 4, q[:, :, 1] & 0xF | (q[:, :, 3] & 0xF) << 4],
                        axis=-1).reshape(-1, 128)
    qh = (q[:, :, 0] >> 4 | (q[:, :, 1] >> 4) << 2 | (q[:, :, 2] >> 4) << 4 | (q[:, :, 3] >> 4) << 6).reshape(-1, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d_bytes], axis=-1).reshape(rows.shape[0], -1)
