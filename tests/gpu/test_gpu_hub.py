"""GPU check of the app's engine flow on a real-size R1 replica served by the stand-in Hub.

The workspace (what the app's tabs call) downloads `unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit`
from tests/hub_standin.py, as built by tests/hub_replicas.py at the real 1.5B architecture with the
real R1 tokenizer and bitsandbytes NF4 weights (random values), then loads it, trains 20 steps with
8 rows held out, evaluates base vs fine-tuned on them, chats on the fast decoder and exports GGUF.
One backend per process (Unsloth patches transformers on import):

    FINETUNE_NO_UNSLOTH=1 pytest -m gpu tests/gpu/test_gpu_hub.py -k hf -s
    pytest -m gpu tests/gpu/test_gpu_hub.py -k unsloth -s

GPU_REPLICA_DIR keeps the built replica between the two; figures go to $GPU_REPORT_DIR if set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import SHARED_SAMPLE
from hub_replicas import TOKENIZER_MISSING, have_tokenizer, real_size_replica
from hub_standin import HubStandin, use_in_this_process

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(not have_tokenizer(), reason=TOKENIZER_MISSING)]

REPO = "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit"
QUESTION = "A 24-year-old has fever, neck stiffness and a petechial rash. What is the next step?"


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> Path:
    return real_size_replica(REPO, Path(os.environ.get("GPU_REPLICA_DIR") or tmp_path_factory.mktemp("replica")))


@pytest.fixture
def standin_hub(replica, tmp_path, monkeypatch):
    """This process downloads from the stand-in into an empty cache."""
    with HubStandin() as hub:
        hub.add_model(REPO, replica)
        use_in_this_process(hub, monkeypatch, tmp_path / "hf-cache")
        yield hub


@pytest.mark.parametrize("backend", ["hf", "unsloth"])
def test_real_size_r1_qwen_from_the_hub_trains_evaluates_chats_and_exports(backend, standin_hub, tmp_path):
    from finetune.models.backend import unsloth_available

    if backend == "unsloth" and not unsloth_available():
        pytest.fail("unsloth does not import on this CUDA machine")
    if backend == "hf" and unsloth_available():
        pytest.skip("run the hf path in a process without Unsloth: FINETUNE_NO_UNSLOTH=1")
    from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings
    from finetune.data.sources import map_columns, read_source
    from finetune.generate.reply import GenerationSettings
    from ui.workspace import Workspace

    workspace = Workspace(tmp_path / "runs")
    progress: list[tuple[float, str]] = []
    started = time.perf_counter()
    info = workspace.load(ModelSettings(REPO, max_length=1024, backend=backend),
                          lambda done, line: progress.append((done, line)))
    load_s = time.perf_counter() - started
    assert info.backend == backend and info.quantization.startswith("4-bit")
    assert any(0 < done < 1 for done, _ in progress) and progress[-1][0] == 1.0
    assert info.tokenizer_note == ""  # the Qwen repo's tokenizer loads right as it is
    assert info.parameters > 1.0e9

    source = str(SHARED_SAMPLE) if SHARED_SAMPLE.is_file() else "sample"
    rows = map_columns(read_source(source))
    train = TrainSettings.for_device("cuda")
    train.max_steps, train.eval_max_new_tokens = 20, 256  # rows of 1024 tokens: the length the model loaded for
    torch.cuda.reset_peak_memory_stats()
    job = workspace.start_training(rows, DataSettings(source=source, holdout_rows=8), train, LoraSettings(),
                                   run_name=f"gpu-{backend}")
    assert job.wait(timeout=1500), "training and its evaluation did not finish in 25 minutes"
    assert job.status == "done", job.error
    assert len(job.metrics) == 20 and all(m["loss"] == m["loss"] for m in job.metrics)
    evaluation = json.loads((Path(job.output_dir) / "run.json").read_text()).get("eval") or {}
    assert evaluation["base"]["n"] == evaluation["finetuned"]["n"] == 8
    train_peak = torch.cuda.max_memory_allocated() / 2**30

    replies: dict = {}
    for _ in workspace.chat(QUESTION, GenerationSettings(max_new_tokens=256, seed=0), replies=replies):
        pass
    tuned, base = replies["finetuned"], replies["base"]
    assert tuned.done and tuned.tokens > 0 and base.tokens > 0
    assert tuned.decoder.endswith("CUDA graphs"), tuned.decoder

    started = time.perf_counter()
    folder = workspace.export("gguf_q8_0")
    export_s = time.perf_counter() - started
    (gguf_file,) = folder.glob("*.gguf")
    from gguf import GGUFReader

    fields = GGUFReader(gguf_file).fields
    pre = bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode()
    assert pre == "deepseek-r1-qwen"  # what llama.cpp's own converter names this tokenizer

    steady = job.metrics[3:]
    report = {
        "backend": backend,
        "gpu": torch.cuda.get_device_name(),
        "model": f"{REPO} replica: real 1.5B architecture, real R1 tokenizer, random NF4 weights",
        "download_and_load_s": round(load_s, 1),
        "download_lines": [line for _, line in progress[-3:]],
        "parameters": info.parameters,
        "memory_gb": info.memory_gb,
        "tokens_per_s_after_warmup": round(sum(m["tokens_per_s"] for m in steady) / len(steady), 1),
        "train_peak_gb": round(train_peak, 2),
        "losses": [round(m["loss"], 4) for m in job.metrics],
        "heldout_eval": {model: {k: evaluation[model].get(k) for k in ("n", "heldout_loss", "format_adherence")}
                         for model in ("base", "finetuned")},
        "chat_tokens_per_s": {pane: round(r.tokens / r.seconds, 1) for pane, r in replies.items()},
        "chat_decoder": tuned.decoder,
        "gguf_export_s": round(export_s, 1),
        "gguf_bytes": gguf_file.stat().st_size,
        "gguf_pre_tokenizer": pre,
    }
    print(json.dumps(report))
    if os.environ.get("GPU_REPORT_DIR"):
        Path(os.environ["GPU_REPORT_DIR"], f"gpu_hub_{backend}.json").write_text(json.dumps(report, indent=2))
