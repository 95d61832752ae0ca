"""Loading: the embedded model works offline and reports what it is; Hub and path problems give one
clear sentence naming the model."""

import time

import pytest

from finetune.config import ModelSettings
from finetune.models.embedded import cache_root, embedded_model_dir
from finetune.models.load import ModelLoadError, load_model


def test_embedded_model_loads_offline_and_reports_itself(loaded):
    info = loaded.info
    assert (info.backend, info.device, info.dtype) == ("hf", "cpu", "float32")
    assert info.quantization.startswith("none")
    assert 130e6 < info.parameters < 140e6
    assert info.chat_template and info.memory_gb > 0.1
    assert loaded.tokenizer.eos_token == "<|im_end|>" and loaded.tokenizer.pad_token != loaded.tokenizer.eos_token


def test_conversion_is_cached_and_leaves_no_partial_folder():
    folder = embedded_model_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    leftovers = [p.name for p in cache_root().iterdir() if p.name.startswith(".smollm2")]
    assert leftovers == []


@pytest.mark.slow
def test_embedded_model_in_4bit_on_cpu():
    loaded = load_model(ModelSettings(load_in_4bit=True))
    assert loaded.info.quantization == "4-bit NF4 (bitsandbytes)"
    assert loaded.info.memory_gb < 0.3


def test_unreachable_hub_fails_fast_with_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        load_model(ModelSettings("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit"))
    assert time.perf_counter() - started < 15
    message = str(err.value)
    assert message.startswith("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit: ")
    assert "cannot be reached" in message and "\n" not in message


def test_offline_mode_names_the_repo(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="someone/some-model: not in the local cache, and HF_HUB_OFFLINE is set"):
        load_model(ModelSettings("someone/some-model"))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("./no/such/folder", "no such local folder"),
        ("not a repo id", "not a Hub repo id"),
    ],
)
def test_bad_model_names(name, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model(ModelSettings(name))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_model(ModelSettings(str(tmp_path)))


def test_unsloth_backend_on_cpu_is_refused():
    with pytest.raises(ModelLoadError, match="needs a CUDA GPU"):
        load_model(ModelSettings(backend="unsloth"))
