"""GGUF export: each format reloads (transformers' GGUF loader) and answers like the trained model, the
file matches what llama.cpp itself wrote for the embedded model, Qwen2's biases and untied head survive,
the K-quants are ggml's bytes, and a failed export leaves nothing."""

import hashlib

import gguf
import numpy as np
import pytest
import torch
from conftest import trained_looking_adapter
from gguf import GGMLQuantizationType as QType

from finetune.config import ModelSettings
from finetune.export.gguf import (
    LLAMA3_SPLIT,
    QWEN2_SPLIT,
    GGUFExportError,
    MergedWeights,
    gguf_filename,
    plan_tensors,
    pre_tokenizer_name,
    quantize_q4_k,
    quantize_q6_k,
    rope_freq_factors,
    write_gguf,
)
from finetune.export.save import ExportError, export_model
from finetune.models.embedded import gguf_path
from finetune.models.load import load_model
from finetune.models.merge import inner_model

PROMPT = "What is the antidote for heparin overdose?"
# (least share of positions with the same next token, most RMS logit error relative to the logits' RMS)
TOLERANCE = {"gguf_f16": (1.0, 0.005), "gguf_q8_0": (0.9, 0.05), "gguf_q4_k_m": (0.7, 0.25)}
# Per weight matrix: most RMS error relative to the weights' RMS, by the type the file stores.
WEIGHT_ERROR = {QType.F16: 0.001, QType.Q8_0: 0.012, QType.Q6_K: 0.04, QType.Q5_0: 0.08, QType.Q4_K: 0.12}
TYPES = {"gguf_f16": {"F16", "F32"}, "gguf_q8_0": {"Q8_0", "F32"},
         "gguf_q4_k_m": {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"}}  # 576-wide rows fall back to Q5_0 / Q8_0


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The embedded model with a trained-looking adapter, exported once in every GGUF format."""
    loaded = load_model(ModelSettings())
    trained_looking_adapter(loaded)
    root = tmp_path_factory.mktemp("gguf")
    return loaded, {fmt: export_model(loaded, root / fmt, fmt) for fmt in TOLERANCE}


def logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def relative_rms(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).pow(2).mean().sqrt() / ours.pow(2).mean().sqrt())


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents() if key in reader.fields else None


@pytest.mark.slow
@pytest.mark.parametrize("fmt", list(TOLERANCE))
def test_gguf_reloads_and_answers_like_the_trained_model(exported, fmt):
    from transformers import AutoModelForCausalLM

    loaded, folders = exported
    folder, name = folders[fmt], gguf_filename(fmt)
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", name]  # the tokenizer is in the file
    assert f"llama-cli -m {name}" in (folder / "README.md").read_text()
    reader = gguf.GGUFReader(folder / name)
    assert {tensor.tensor_type.name for tensor in reader.tensors} == TYPES[fmt]

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    ours, theirs = logits(loaded.model, loaded.tokenizer), logits(model, loaded.tokenizer)
    min_agreement, max_error = TOLERANCE[fmt]
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= min_agreement
    assert relative_rms(ours, theirs) < max_error
    prompt = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(prompt, min_new_tokens=4, max_new_tokens=4, do_sample=False)
        assert generated.shape[1] == prompt.shape[1] + 4
        if fmt == "gguf_f16":  # the same greedy continuation
            expected = loaded.model.generate(input_ids=prompt, min_new_tokens=4, max_new_tokens=4, do_sample=False)
            assert torch.equal(generated, expected)

    # Each matrix as transformers reads it back (q/k un-permuted) is the merged weight, within its type's error.
    merged, reread = MergedWeights(loaded.model), model.state_dict()
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    for tensor in plan_tensors(inner_model(loaded.model).config, merged, fmt):
        if tensor.qtype != QType.F32:
            error = relative_rms(merged[tensor.source].detach().float(), reread[tensor.source])
            assert error < WEIGHT_ERROR[types[tensor.name]], (tensor.name, types[tensor.name], error)


@pytest.mark.slow
def test_gguf_tokenizer_round_trips_text_and_keeps_the_chat_template(exported):
    """The tokenizer metadata is written the same way in every format: the f16 file stands for all."""
    from transformers import AutoTokenizer

    loaded, folders = exported
    tokenizer = AutoTokenizer.from_pretrained(folders["gguf_f16"], gguf_file=gguf_filename("gguf_f16"))
    assert tokenizer.chat_template == loaded.tokenizer.chat_template
    chat = [{"role": "user", "content": "Dose of heparin? 5000 units."}]
    for text in [PROMPT, "Ünïcode, 12345 digits,\n\ttabs and  spaces", loaded.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=True)]:
        ids = loaded.tokenizer(text).input_ids
        assert tokenizer(text).input_ids == ids
        assert tokenizer.decode(ids) == text


@pytest.mark.slow
def test_gguf_metadata_and_names_match_what_llama_cpp_wrote(exported):
    """The embedded model came from a llama.cpp GGUF: ours must have its names, shapes and settings."""
    loaded, folders = exported
    ours = gguf.GGUFReader(folders["gguf_f16"] / gguf_filename("gguf_f16"))
    theirs = gguf.GGUFReader(gguf_path())
    assert {t.name: tuple(t.shape) for t in ours.tensors} == {t.name: tuple(t.shape) for t in theirs.tensors}
    settings = [key for key in theirs.fields if key.startswith("llama.")]
    assert len(settings) == 10
    for key in settings + ["general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens",
                           "tokenizer.ggml.token_type", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id",
                           "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"]:
        expected = field(theirs, key)
        assert field(ours, key) == (pytest.approx(expected) if isinstance(expected, float) else expected), key
    assert field(ours, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert "output.weight" not in {t.name for t in ours.tensors}  # tied: llama.cpp reuses token_embd
    # The tokenizer we trained with splits like GPT-2 (transformers rebuilt it so from the GGUF); the
    # file says so, rather than the 'smollm' (digits apart) of the original.
    assert loaded.tokenizer.backend_tokenizer.pre_tokenizer.__class__.__name__ == "ByteLevel"
    assert field(ours, "tokenizer.ggml.pre") == "gpt-2"


def test_gguf_names_the_embedded_models_hub_repo_and_has_plain_modes(exported, tmp_path):
    _, folders = exported
    folder = folders["gguf_q8_0"]
    reader = gguf.GGUFReader(folder / gguf_filename("gguf_q8_0"))
    assert field(reader, "general.name") == "SmolLM2-135M-Instruct + LoRA"  # not "embedded + LoRA"
    assert field(reader, "general.basename") == "SmolLM2-135M-Instruct"
    assert [field(reader, f"general.base_model.0.{key}") for key in ("name", "organization", "repo_url")] == [
        "SmolLM2-135M-Instruct", "HuggingFaceTB", "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in (folder / "README.md").read_text()
    (tmp_path / "plain-folder").mkdir()
    (tmp_path / "plain-file").write_text("")
    assert folder.stat().st_mode == (tmp_path / "plain-folder").stat().st_mode  # not mkdtemp's 0700
    assert {path.stat().st_mode for path in folder.iterdir()} == {(tmp_path / "plain-file").stat().st_mode}


def tiny_tokenizer(pre_tokenizer):
    """A 300-token byte-level BPE tokenizer with ChatML specials, trained in milliseconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([PROMPT, "Protamine sulfate reverses heparin."] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    return tokenizer


def qwen2_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def test_qwen2_biases_and_untied_head_survive(tmp_path):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer(qwen2_pre_tokenizer())
    config = Qwen2Config(vocab_size=320, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("proj.bias"):
                parameter.normal_(0, 0.5)  # zero at init: make them count
    ids = torch.tensor([tokenizer(PROMPT).input_ids])
    with torch.no_grad():
        ours = model(input_ids=ids).logits[0]
    for fmt, max_error in [("gguf_f16", 0.005), ("gguf_q4_k_m", 0.25)]:
        path = tmp_path / gguf_filename(fmt)
        write_gguf(path, model.state_dict(), config, tokenizer, fmt, "tiny qwen2")
        reread = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
        with torch.no_grad():
            assert relative_rms(ours, reread(input_ids=ids).logits[0]) < max_error
        bias = model.model.layers[3].self_attn.k_proj.bias
        torch.testing.assert_close(reread.model.layers[3].self_attn.k_proj.bias, bias)
        reader = gguf.GGUFReader(path)
        assert field(reader, "general.architecture") == "qwen2" and field(reader, "tokenizer.ggml.pre") == "qwen2"
        assert field(reader, "tokenizer.ggml.tokens")[-1] == "[PAD319]"  # embedding rows past the vocabulary
    # The q4_k_m mix on rows of 256: llama-quantize's choice, layer by layer.
    types = {tensor.name: tensor.tensor_type for tensor in reader.tensors}
    assert types["output.weight"] == QType.Q6_K and types["token_embd.weight"] == QType.Q4_K
    assert types["blk.0.attn_q.bias"] == QType.F32 and types["blk.0.attn_q.weight"] == QType.Q4_K
    more_bits = [layer for layer in range(8) if types[f"blk.{layer}.attn_v.weight"] == QType.Q6_K]
    assert more_bits == [0, 3, 6, 7]
    assert [layer for layer in range(8) if types[f"blk.{layer}.ffn_down.weight"] == QType.Q6_K] == more_bits


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path):
    """llama.cpp takes Llama 3's rope scaling as a tensor of divisors of the rotary frequencies."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16384, rope_theta=500000.0,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / 500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64)
    torch.testing.assert_close(plain / rope_freq_factors(config), scaled.float())

    from transformers import LlamaForCausalLM

    path = tmp_path / "model.gguf"
    write_gguf(path, LlamaForCausalLM(config).state_dict(), config, tiny_tokenizer(qwen2_pre_tokenizer()),
               "gguf_f16", "tiny llama3")
    reader = gguf.GGUFReader(path)
    (freqs,) = [tensor for tensor in reader.tensors if tensor.name == "rope_freqs.weight"]
    assert freqs.tensor_type == QType.F32 and np.allclose(freqs.data, rope_freq_factors(config).numpy())
    assert field(reader, "llama.rope.freq_base") == 500000.0 and "llama.rope.scaling.type" not in reader.fields


@pytest.mark.parametrize(("steps", "name"), [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "use_regex": True}]}, "smollm"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}},
                                            {"type": "ByteLevel", "use_regex": False}]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}},
                                            {"type": "ByteLevel", "use_regex": False}]}, "qwen2"),
])
def test_pre_tokenizer_names_are_llama_cpp_s(steps, name):
    assert pre_tokenizer_name(steps) == name


def test_unknown_pre_tokenizers_and_architectures_are_refused(tmp_path):
    from transformers import MistralConfig

    with pytest.raises(GGUFExportError, match="pre-tokenizer"):
        pre_tokenizer_name({"type": "Metaspace", "replacement": "▁"})
    with pytest.raises(GGUFExportError, match="llama and qwen2 .* this model is 'mistral'"):
        write_gguf(tmp_path / "x.gguf", {}, MistralConfig(), None, "gguf_f16", "x")
    assert list(tmp_path.iterdir()) == []


def test_k_quants_are_ggml_s_bytes_and_decode_close():
    """Same input, same bytes as ggml's quantize_row_q4_K_ref / q6_K_ref (hashes taken from the C code,
    ggml-quants.c built without FMA); and gguf-py's decoder reads them back within each type's error."""
    rng = np.random.default_rng(0)
    values = rng.standard_normal((8, 512), dtype=np.float32) * np.float32(0.02)
    values[0, :256], values[1, :16], values[2] = 0, 0, values[2] + np.float32(0.05)  # an empty block, group, offset
    for quantize, qtype, size, digest, max_error in [
        (quantize_q4_k, QType.Q4_K, 144, "46533a38def287d9f038a2beb012cdfc3145a74bc5b85b4cc3ad4516eb307844", 0.1),
        (quantize_q6_k, QType.Q6_K, 210, "5b70a8554a6af40d987fbd736f1703bae096726db8725cf06dea5abc0bd7425e", 0.025),
    ]:
        blocks = quantize(values)
        assert blocks.shape == (8, 2 * size) and blocks.dtype == np.uint8
        assert hashlib.sha256(blocks.tobytes()).hexdigest() == digest
        decoded = gguf.quants.dequantize(blocks, qtype)
        assert not decoded[0, :256].any()
        assert relative_rms(torch.from_numpy(values), torch.from_numpy(decoded)) < max_error


def test_a_failed_gguf_export_leaves_nothing(loaded, tmp_path, monkeypatch):
    import finetune.export.gguf

    trained_looking_adapter(loaded)
    calls = []

    def full_disk(values, qtype):
        calls.append(qtype)
        if len(calls) == 20:  # mid-file
            raise OSError("disk full")
        return gguf.quants.quantize(values, qtype) if qtype != QType.F16 else values.astype(np.float16)

    monkeypatch.setattr(finetune.export.gguf, "encode", full_disk)
    with pytest.raises(OSError, match="disk full"):
        export_model(loaded, tmp_path / "out", "gguf_q8_0")
    assert list(tmp_path.iterdir()) == []
    inner_model(loaded.model).config.model_type = "mistral"
    with pytest.raises(ExportError, match="'mistral'"):
        export_model(loaded, tmp_path / "out", "gguf_f16")
    assert list(tmp_path.iterdir()) == []
