"""The speed benchmark's plumbing on CPU: the workload follows medical-o1 lengths, and a two-step
smoke run of `python -m bench` measures hf and ours in their own processes and prints the table.
(Speed itself is measured by the benchmark, never asserted here.)"""

import json
import math
import subprocess
import sys

from conftest import ROOT, SHARED_SAMPLE, needs_shared

from finetune.config import TrainSettings
from finetune.formats import IGNORE_INDEX

pytestmark = needs_shared(SHARED_SAMPLE)


def test_workload_rows_follow_medical_o1_lengths_with_the_prompt_masked():
    from bench.workload import row_lengths, synthetic_dataset

    first = json.loads(SHARED_SAMPLE.read_text().splitlines()[0])
    prompt, trained = row_lengths(SHARED_SAMPLE)[0]
    assert prompt == math.ceil(len(first["Question"]) / 4) + 24
    data = synthetic_dataset(rows=3, max_length=4096, vocab_size=1000)
    row = data.rows[0]
    assert len(row.input_ids) == prompt + trained and row.labels[:prompt] == [IGNORE_INDEX] * prompt
    assert row.labels[prompt:] == row.input_ids[prompt:] and max(row.input_ids) < 1000


def test_gpu_default_is_the_seeds_recipe_at_the_same_effective_batch():
    seeds, fast = TrainSettings(), TrainSettings.for_device("cuda")
    assert seeds.micro_batch_size * seeds.grad_accum_steps == fast.micro_batch_size * fast.grad_accum_steps == 8
    assert (fast.micro_batch_size, fast.sampling) == (8, seeds.sampling)  # random: the same loss curve
    assert (fast.learning_rate, fast.optimizer, fast.max_steps) == (seeds.learning_rate, seeds.optimizer, 60)


def test_smoke_run_measures_each_variant_and_prints_the_table(tmp_path):
    out = tmp_path / "train.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "train", "--model", "embedded", "--steps", "2", "--warmup", "1",
         "--max-length", "96", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    assert [r["variant"] for r in results] == ["hf", "ours"]  # no Unsloth without a GPU
    for result in results:
        assert "error" not in result, result
        assert result["tokens_per_s"] > 0 and len(result["losses"]) == 2 and result["backend"] == "hf"
    assert results[0]["recipe"]["micro_batch_size"] == 2 and results[1]["recipe"]["micro_batch_size"] == 8
    assert done.stdout.splitlines()[-1].startswith("| ours | hf | 8x1 group_by_length |")
