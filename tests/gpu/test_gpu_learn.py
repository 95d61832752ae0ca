"""GPU check that the app's GPU default learns: the fast recipe (60 steps, 8 rows a step) on a real-size
R1-Distill-Qwen-1.5B replica (tests/hub_replicas.py: the real architecture and tokenizer, random-init
NF4 weights) trained on the bundled sample; the training loss must fall, and so must the held-out loss
on the real medical-o1 rows in ../shared/data (none of them bundled). Random weights learn only the
rows' statistics, so the figures tell the direction and size of the change, not quality.
One backend per process (Unsloth patches transformers on import):

    FINETUNE_NO_UNSLOTH=1 pytest -m gpu tests/gpu/test_gpu_learn.py -s
    pytest -m gpu tests/gpu/test_gpu_learn.py -s

GPU_REPLICA_DIR keeps the built replica between the two; figures go to $GPU_REPORT_DIR if set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import R1_TOKENIZER, SHARED_SAMPLE, needs_shared
from hub_replicas import real_size_replica

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              needs_shared(R1_TOKENIZER, SHARED_SAMPLE)]

REPO = "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit"  # the app's Qwen-1.5B preset on a GPU
MAX_LENGTH = 2048


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> Path:
    return real_size_replica(REPO, Path(os.environ.get("GPU_REPLICA_DIR") or tmp_path_factory.mktemp("replica")))


def test_the_fast_recipe_lowers_training_and_held_out_loss(replica: Path, tmp_path: Path) -> None:
    from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings
    from finetune.data.prompts import prepare_dataset
    from finetune.evaluate.heldout import EvalSettings, held_out_loss, load_eval_items
    from finetune.models.load import load_model
    from finetune.train.recipe import Recipe
    from finetune.train.trainer import start_training

    torch.cuda.reset_peak_memory_stats()
    loaded = load_model(ModelSettings(str(replica), max_length=MAX_LENGTH))
    assert loaded.info.quantization.startswith("4-bit")
    data = prepare_dataset(DataSettings(), loaded.tokenizer, MAX_LENGTH)
    items = load_eval_items(str(SHARED_SAMPLE))
    settings = EvalSettings(template=data.template, max_length=MAX_LENGTH, generate=False)
    before, tokens = held_out_loss(loaded, items, settings, use_adapter=False)
    assert before is not None and tokens > 0

    started = time.perf_counter()
    job = start_training(loaded, data, Recipe(loaded.settings, DataSettings(), TrainSettings.fast(), LoraSettings(),
                                              str(tmp_path / "run")))
    assert job.wait(timeout=1200), "the fast recipe did not finish in 20 minutes"
    train_s = time.perf_counter() - started
    assert job.status == "done", job.error
    losses = [m["loss"] for m in job.metrics]
    assert len(losses) == 60
    after, _ = held_out_loss(loaded, items, settings, use_adapter=True)
    assert after is not None

    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    report = {
        "backend": loaded.info.backend,
        "gpu": torch.cuda.get_device_name(),
        "model": f"{REPO} replica: real size and tokenizer, random-init NF4 weights",
        "recipe": "TrainSettings.fast(): 60 steps x 8 rows, lr 2e-4, LoRA r16 on all projections",
        "train_rows": len(data.rows),
        "heldout_rows": len(items),
        "heldout_tokens": tokens,
        "heldout_loss_before": round(before, 4),
        "heldout_loss_after": round(after, 4),
        "heldout_relative_change": round((after - before) / before, 4),
        "train_loss_first10_mean": round(first, 4),
        "train_loss_last10_mean": round(last, 4),
        "train_wall_s": round(train_s, 1),
        "tokens_per_s_mean": round(sum(m["tokens_per_s"] for m in job.metrics[2:]) / len(job.metrics[2:]), 1),
        "tokens_per_s_overall": round(job.metrics[-1]["tokens"] / job.metrics[-1]["elapsed_s"], 1),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "losses": losses,
    }
    print(json.dumps(report))
    if os.environ.get("GPU_REPORT_DIR"):
        name = f"learn-qwen-1.5b-{loaded.info.backend}.json"
        Path(os.environ["GPU_REPORT_DIR"], name).write_text(json.dumps(report, indent=2))
    assert last < first, f"training loss did not fall: first 10 steps {first:.3f}, last 10 {last:.3f}"
    assert after < before, f"held-out loss on the real rows did not fall: {before:.3f} -> {after:.3f}"
