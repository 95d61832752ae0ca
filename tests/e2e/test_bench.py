"""The speed benchmark's plumbing on CPU: the workload follows medical-o1 lengths, and a two-step
smoke run of `python -m bench` measures hf and ours in their own processes and prints the table.
(Speed itself is measured by the benchmark, never asserted here.)"""

import dataclasses
import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_SAMPLE, needs_shared

from finetune.config import TrainSettings
from finetune.data.prompts import IGNORE_INDEX

pytestmark = needs_shared(SHARED_SAMPLE)


def run_bench(*args: str) -> subprocess.CompletedProcess:
    """`python -m bench ARGS` from the project root; it must succeed."""
    done = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


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


@pytest.mark.slow
def test_smoke_run_measures_each_variant_and_prints_the_table(tmp_path):
    out = tmp_path / "train.json"
    done = run_bench("train", "--model", "embedded", "--steps", "2", "--warmup", "1", "--max-length", "96",
                     "--out", str(out))
    results = json.loads(out.read_text())
    assert [r["variant"] for r in results] == ["hf", "ours"]  # no Unsloth without a GPU
    for result in results:
        assert "error" not in result, result
        assert result["tokens_per_s"] > 0 and len(result["losses"]) == 2 and result["backend"] == "hf"
    assert results[0]["recipe"]["micro_batch_size"] == 2 and results[1]["recipe"]["micro_batch_size"] == 8
    assert done.stdout.splitlines()[-1].startswith("| ours | hf | 8 x 1 group_by_length |")
    assert "| vs hf |" in done.stdout  # no Unsloth to measure against on a CPU: the first variant


def test_unsloth_at_its_best_is_the_seeds_recipe_at_eight_by_one():
    """The anchor of every ratio: what an Unsloth user gets by setting the batch to the same 8 x 1."""
    from bench.measure import seeds_recipe, variant_recipe

    backend, best, lora = variant_recipe("unsloth-best")
    _, seeds, seeds_lora = variant_recipe("unsloth")
    assert backend == "unsloth" and (best.micro_batch_size, best.grad_accum_steps) == (8, 1)
    assert dataclasses.replace(best, micro_batch_size=2, grad_accum_steps=4) == seeds == seeds_recipe()
    assert lora == seeds_lora


@pytest.mark.slow
def test_eval_bench_writes_the_same_answers_both_ways_on_cpu(tmp_path):
    """`python -m bench eval` on CPU: generate and the batched fast decoder, the answers compared."""
    out = tmp_path / "eval.json"
    run_bench("eval", "--model", "embedded", "--new-tokens", "8", "--rows", "3", "--batch", "2", "--out", str(out))
    hf, ours = json.loads(out.read_text())
    assert (hf["variant"], ours["variant"]) == ("hf", "ours")
    assert hf["sides"]["base"]["decoder"] == "transformers generate"
    assert ours["sides"]["finetuned"]["decoder"].startswith("fast decoder") and ours["tokens"] > 0
    assert ours["agreement"] == {"against": "hf", "same_answers": 6, "answers": 6, "mean_common_prefix": 1.0}


@pytest.mark.slow
def test_learn_trains_the_demo_then_measures_base_and_fine_tuned_on_real_rows_it_never_saw(tmp_path):
    """A short `python -m bench learn`: the demo recipe for 4 steps, 4 real medical-o1 rows."""
    out = tmp_path / "learn.json"
    done = run_bench("learn", "--train-steps", "4", "--eval-rows", "4", "--eval-new-tokens", "24", "--out", str(out))
    result = json.loads(out.read_text())
    assert result["train"]["dataset"] == "clinical_vignettes.jsonl" and result["train"]["steps"] == 4
    assert result["eval"] == {**result["eval"], "source": SHARED_SAMPLE.name, "rows": 4, "shared_with_training": 0}
    for model in ("base", "finetuned"):
        figures = result[model]
        assert figures["n"] == figures["mcq_n"] == 4 and figures["loss_tokens"] > 0
        assert 0 <= figures["mcq_answered"] <= 4 and figures["mean_reasoning_tokens"] is not None
    # Four steps of the demo already move the loss on real rows down: it learns their shape.
    assert result["finetuned"]["heldout_loss"] < result["base"]["heldout_loss"]
    assert result["bundled_heldout"]["finetuned"] < result["bundled_heldout"]["base"]
    assert "| held-out loss (reasoning + answer) |" in done.stdout and "goal:" in done.stdout


def test_learn_goal_is_judged_figure_by_figure():
    from bench.learn import check_goal

    def result(loss, fmt, accuracy, answered, minutes):
        base = {"heldout_loss": 2.5, "format_adherence": 0.0, "mcq_accuracy": 0.2, "mcq_answered": 18, "mcq_n": 20}
        tuned = {"heldout_loss": loss, "format_adherence": fmt, "mcq_accuracy": accuracy, "mcq_answered": answered,
                 "mcq_n": 20}
        return {"base": base, "finetuned": tuned, "train": {"wall_s": minutes * 60}}

    assert check_goal(result(1.9, 0.85, 0.25, 18, 8))["all_met"]
    verdicts = check_goal(result(2.1, 0.75, 0.15, 17, 11))
    assert not verdicts["all_met"]
    assert [name for name, check in verdicts.items() if name != "all_met" and not check["met"]] == [
        "heldout_loss_drop", "format_adherence", "mcq_accuracy", "letter_named", "train_minutes"]
    assert verdicts["heldout_loss_drop"]["measured"] == 0.16


def test_learn_refuses_an_evaluation_row_that_was_trained_on():
    from bench.learn import shared_questions
    from finetune.data.sources import EvalItem, Example

    trained = [Example("A 30-year-old has  fever. Why?", "r", "a")]
    items = [EvalItem("a 30-year-old has fever. why?"), EvalItem("Another question?")]
    assert shared_questions(trained, items) == ["a 30-year-old has fever. why?"]
