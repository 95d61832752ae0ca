"""Every loaded tokenizer round-trips text, or is repaired, or the load is refused; exports keep it.

The real case: the DeepSeek-R1 tokenizer files (tokenizer_config names LlamaTokenizerFast over a
ByteLevel tokenizer.json) in a folder with a Llama config.json, as every R1-Distill-Llama repo ships
them. transformers 5.17 loads that through LlamaTokenizer, which drops spaces and newlines.
"""

import json
import shutil

import pytest
import torch
from conftest import R1_TOKENIZER, REAL_GGUF, needs_shared, trained_looking_adapter

from finetune.config import ModelSettings
from finetune.models.embedded import embedded_model_dir
from finetune.models.load import ModelLoadError, load_model
from finetune.models.tokenizer_check import PROBE, TokenizerError, checked_tokenizer, round_trip


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


CASE = ("A 61-year-old man presents with 90 minutes of crushing chest pain.\n"
        "<think>\nInferior MI, right ventricle involved.\n</think>\n\nGive IV fluids. 发热")


def r1_folder(folder, model_type: str):
    """The real R1 tokenizer files beside a tiny random-init model of `model_type` ('llama' or 'qwen2')."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir()
    for file in R1_TOKENIZER.iterdir():
        shutil.copyfile(file, folder / file.name)
    config = AutoConfig.for_model(model_type, vocab_size=151936, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                  bos_token_id=151646, eos_token_id=151643, tie_word_embeddings=False)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_r1(tmp_path_factory):
    return r1_folder(tmp_path_factory.mktemp("r1") / "r1-distill-llama-replica", "llama")


@pytest.fixture(scope="module")
def qwen_r1(tmp_path_factory):
    return r1_folder(tmp_path_factory.mktemp("r1") / "r1-distill-qwen-replica", "qwen2")


@pytest.fixture(scope="module")
def qwen_r1_tokenizer(qwen_r1):
    """The reference: the same files in a Qwen2 folder load through Qwen2Tokenizer, which is right."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen_r1)


def test_the_embedded_tokenizer_round_trips_and_is_left_as_it_is(loaded):
    assert round_trip(loaded.tokenizer) == PROBE
    assert loaded.info.tokenizer_note == ""


@needs_shared(R1_TOKENIZER)
def test_the_r1_llama_trap_is_real_in_plain_transformers(llama_r1):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(llama_r1)
    assert round_trip(plain, "A 45-year-old man") == "A45-year-oldman"  # why the repair exists


@needs_shared(R1_TOKENIZER)
def test_load_model_repairs_the_r1_llama_tokenizer_and_says_so(llama_r1, qwen_r1_tokenizer):
    loaded = load_model(ModelSettings(name=str(llama_r1)))
    tokenizer = loaded.tokenizer
    assert round_trip(tokenizer) == PROBE and round_trip(tokenizer, CASE) == CASE
    assert loaded.info.tokenizer_note.startswith("repaired")
    # Token for token what the right tokenizer gives, the chat prompt (with its one BOS) included.
    assert ids(tokenizer, CASE) == ids(qwen_r1_tokenizer, CASE)
    messages = [{"role": "user", "content": "A 45-year-old man has fever."}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == qwen_r1_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<｜begin▁of▁sentence｜><｜User｜>A 45-year-old man") and prompt.endswith("<think>\n")
    assert tokenizer("x").input_ids[0] == 151646  # add_bos_token kept
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<|vision_pad|>")
    assert tokenizer.convert_tokens_to_ids(["<think>", "</think>"]) == [151648, 151649]
    assert tokenizer.padding_side == "left"


def export_of(folder, fmt: str, target):
    from finetune.export.save import export_model

    loaded = load_model(ModelSettings(name=str(folder)))
    trained_looking_adapter(loaded)
    return export_model(loaded, target, fmt)


@needs_shared(R1_TOKENIZER)
@pytest.mark.parametrize("fmt", ["adapter", "merged_16bit"])
def test_exports_of_the_repaired_model_reload_the_same_tokenizer(llama_r1, qwen_r1_tokenizer, fmt, tmp_path):
    from transformers import AutoTokenizer

    folder = export_of(llama_r1, fmt, tmp_path / fmt)
    if fmt == "merged_16bit":  # a Llama config.json again: the trap would strike here
        assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    reloaded = AutoTokenizer.from_pretrained(folder)  # the adapter folder has no config.json: tokenizer files only
    assert ids(reloaded, CASE) == ids(qwen_r1_tokenizer, CASE)
    assert round_trip(reloaded, CASE) == CASE and reloaded.eos_token == "<｜end▁of▁sentence｜>"


@pytest.mark.slow
@needs_shared(R1_TOKENIZER, REAL_GGUF)
def test_a_gguf_export_of_r1_qwen_reloads_as_llama_cpps_own_file_does(qwen_r1, qwen_r1_tokenizer, tmp_path):
    """transformers' GGUF reader keeps only <|endoftext|>, <|im_start|> and <|im_end|> of the added
    tokens, so it splits <think> into pieces: for the real llama.cpp file of R1-Distill-Qwen-7B too.
    Text without added tokens must come back id for id; with them, as the real file's does."""
    from transformers import AutoTokenizer

    folder = export_of(qwen_r1, "gguf_q8_0", tmp_path / "gguf")
    (gguf,) = folder.glob("*.gguf")
    ours = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    llama_cpps = AutoTokenizer.from_pretrained(REAL_GGUF.parent, gguf_file=REAL_GGUF.name)
    plain = CASE.replace("<think>", "").replace("</think>", "")
    assert ids(ours, plain) == ids(qwen_r1_tokenizer, plain)
    assert ids(ours, CASE) == ids(llama_cpps, CASE)
    assert round_trip(ours, CASE) == CASE


@pytest.mark.slow
@needs_shared(R1_TOKENIZER)
def test_a_gguf_export_of_the_repaired_llama_carries_its_vocabulary(llama_r1, qwen_r1_tokenizer, tmp_path):
    """transformers' GGUF reader rebuilds a Llama BPE tokenizer with GPT-2's split regex whatever
    tokenizer.ggml.pre says, so it cannot be the judge here; llama.cpp reads the tokens, merges and
    pre-tokenizer name, and those are what this checks."""
    import gguf

    folder = export_of(llama_r1, "gguf_q8_0", tmp_path / "gguf")
    (path,) = folder.glob("*.gguf")
    fields = gguf.GGUFReader(path).fields
    tokens = [bytes(fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in fields["tokenizer.ggml.tokens"].data]
    vocabulary = qwen_r1_tokenizer.get_vocab()
    assert all(tokens[index] == token for token, index in vocabulary.items())
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"


def test_a_tokenizer_that_loses_text_either_way_is_refused(tmp_path):
    """A tokenizer.json that lower-cases (a normalizer no causal LM should have): nothing faithful to load."""
    folder = tmp_path / "lossy"
    shutil.copytree(embedded_model_dir(), folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ModelLoadError, match="lossy: the tokenizer does not give back the text it encodes"):
        load_model(ModelSettings(name=str(folder)))


def test_a_broken_tokenizer_without_tokenizer_json_is_refused(tmp_path):
    class DropsSpaces:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text if c != " "]}

        def decode(self, ids, **kwargs):
            return "".join(map(chr, ids))

    with pytest.raises(TokenizerError, match="no tokenizer.json to load instead"):
        checked_tokenizer(DropsSpaces(), str(tmp_path))
