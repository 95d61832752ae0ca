"""GPU checks: the Unsloth path and the plain transformers + bitsandbytes 4-bit path each train
10 steps on a random-init model built from the DeepSeek-R1-Distill-Qwen-1.5B config, then stream
a chat. Run on a CUDA machine, one backend per process (Unsloth patches transformers on import):

    FINETUNE_NO_UNSLOTH=1 pytest -m gpu -k hf
    pytest -m gpu -k unsloth

Figures (s/step, tokens/s, peak memory, time to first token) go to $GPU_REPORT_DIR if set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "deepseek-r1-distill-qwen-1.5b.json"
R1_TEMPLATE = ROOT / "configs" / "r1_chat_template.jinja"


@pytest.fixture(scope="module")
def random_r1_model(tmp_path_factory) -> Path:
    """A folder with random bf16 weights from the real config and a tokenizer wearing the R1 template."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("r1-random")
    config = AutoConfig.from_pretrained(CONFIG)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    tokenizer = AutoTokenizer.from_pretrained(os.environ.get("GPU_TOKENIZER_DIR", ROOT / ".gpu-carry" / "tokenizer"))
    tokenizer.chat_template = R1_TEMPLATE.read_text()
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_backend_trains_and_streams(backend, random_r1_model, tmp_path):
    from finetune.backend import unsloth_available

    if backend == "unsloth" and not unsloth_available():
        pytest.fail("unsloth does not import on this CUDA machine")
    if backend == "hf" and unsloth_available():
        pytest.skip("run the hf path in a process without Unsloth: FINETUNE_NO_UNSLOTH=1")
    from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings
    from finetune.formats import prepare_dataset
    from finetune.models import load_model
    from finetune.train import start_training
    from inference.generate import GenerationSettings, stream_reply

    torch.cuda.reset_peak_memory_stats()
    loaded = load_model(ModelSettings(str(random_r1_model), load_in_4bit=True, max_length=1024, backend=backend))
    assert loaded.info.backend == backend
    assert loaded.info.quantization.startswith("4-bit")
    source = os.environ.get("GPU_DATASET", "sample")
    data = prepare_dataset(DataSettings(source=source, max_rows=120), loaded.tokenizer, max_length=1024)
    train = TrainSettings(max_steps=10, max_length=1024)  # the seeds' recipe: 2 x 4, adamw_8bit, bf16
    job = start_training(loaded, data, train, LoraSettings(), tmp_path / "run")
    assert job.wait(timeout=900), "training did not finish in 15 minutes"
    assert job.status == "done", job.error
    assert len(job.metrics) == 10
    assert all(m["loss"] == m["loss"] for m in job.metrics)  # no NaN
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    train_peak = torch.cuda.max_memory_allocated() / 2**30

    started = time.perf_counter()
    first_token_s, replies = None, []
    settings = GenerationSettings(max_new_tokens=128, seed=0)
    for reply in stream_reply(loaded, "A 60-year-old man has crushing chest pain. Next step?", settings):
        if first_token_s is None:
            first_token_s = time.perf_counter() - started
        replies.append(reply)
    final = replies[-1]
    assert final.done and final.tokens > 0
    # The R1 prompt ends inside <think>: text streams as thinking until a </think> (if any) arrives.
    assert final.thinking or final.answer
    assert final.decoder.endswith("CUDA graphs"), final.decoder  # chat took the fast path
    assert "float16 weights" in final.decoder  # 16-bit, even where PEFT upcast the embeddings
    fast_chat_peak = torch.cuda.max_memory_allocated() / 2**30

    # Chat, then train again: the fast decoder's 16-bit copy is dropped, and the new run trains.
    again = start_training(loaded, data, TrainSettings(max_steps=3, max_length=1024), LoraSettings(), tmp_path / "r2")
    assert again.wait(timeout=600) and again.status == "done", again.error
    assert all(m["grad_norm"] > 0 for m in again.metrics)
    assert loaded.decoder is None
    assert list(stream_reply(loaded, "Define sepsis.", GenerationSettings(max_new_tokens=16)))[-1].tokens == 16

    # Stop, then resume from the checkpoint written at the stop: the run ends at its planned step.
    from finetune.train import resume_training

    stopped = start_training(loaded, data, TrainSettings(max_steps=6, max_length=1024), LoraSettings(), tmp_path / "r3")
    while len(stopped.metrics) < 2:
        time.sleep(0.05)
    stopped.stop()
    assert stopped.wait(timeout=600) and stopped.status == "stopped", stopped.error
    resumed = resume_training(loaded, tmp_path / "r3")
    assert resumed.wait(timeout=600) and resumed.status == "done", resumed.error
    assert [m["step"] for m in resumed.metrics] == [1, 2, 3, 4, 5, 6]
    steady = job.metrics[2:]
    report = {
        "backend": backend,
        "gpu": torch.cuda.get_device_name(),
        "model": "random-init DeepSeek-R1-Distill-Qwen-1.5B config, 4-bit NF4 on load",
        "load_s": loaded.info.load_seconds,
        "rows": len(data.rows),
        "mean_tokens_per_row": data.stats.mean,
        "s_per_step": round(sum(m["elapsed_s"] for m in steady[-1:]) / steady[-1]["step"], 3),
        "tokens_per_s_after_warmup": round(sum(m["tokens_per_s"] for m in steady) / len(steady), 1),
        "train_peak_gb": round(train_peak, 2),
        "chat_first_token_s": round(first_token_s, 3),
        "chat_tokens": final.tokens,
        "chat_tokens_per_s": round(final.tokens / final.seconds, 1),
        "chat_decoder": final.decoder,
        "chat_peak_gb": round(fast_chat_peak, 2),
        "losses": [m["loss"] for m in job.metrics],
    }
    print(json.dumps(report))
    if os.environ.get("GPU_REPORT_DIR"):
        Path(os.environ["GPU_REPORT_DIR"], f"gpu_{backend}.json").write_text(json.dumps(report, indent=2))
