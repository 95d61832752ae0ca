"""The same command under torchrun with two processes (data parallel, gloo on CPU): one run folder,
one stream of metrics counting both processes' tokens. On GPUs: bench/multi_gpu.sh, docs/benchmarks.md."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from finetune.runs import read_record

pytestmark = pytest.mark.slow  # trains, or drives the app or the command line end to end


def test_two_processes_train_one_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "finetune", "train",
         "--max-rows", "12", "--max-length", "128", "--batch-size", "2", "--grad-accum", "1", "--max-steps", "3",
         "--lora-r", "4", "--output", str(tmp_path / "ddp")],
        cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["step"] for line in lines[:-1]] == [1, 2, 3]  # printed once, by the first process
    assert lines[-1]["status"] == "done"
    # Each step, each process trains one micro-batch of 2 rows of at most 128 tokens: the count is both.
    per_process_max = 2 * 128
    assert per_process_max < lines[0]["tokens"] <= 2 * per_process_max
    record = read_record(tmp_path / "ddp")
    assert record["status"] == "done" and len(record["metrics"]) == 3
    assert (tmp_path / "ddp" / "metrics.jsonl").read_text().count("\n") == 3  # written by one process only
    assert (tmp_path / "ddp" / "adapter" / "adapter_model.safetensors").is_file()
