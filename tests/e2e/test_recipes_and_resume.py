"""Recipes (`train --config`), resuming a run, and what a killed run or a bad disk leaves behind."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import QUICK_LENGTH, ROOT, quick_lora, quick_recipe, quick_train

from finetune.config import DataSettings
from finetune.data.prompts import tokenize_rows
from finetune.data.sources import map_columns, read_source
from finetune.runs import RunFolderError, last_checkpoint, list_runs, mark_abandoned_runs, read_record
from finetune.train.recipe import RecipeError, load_recipe, recipe_dict
from finetune.train.trainer import resume_training, start_training

pytestmark = pytest.mark.slow  # trains, or drives the app or the command line end to end

# A short run of the embedded model: 12 rows of at most 160 tokens, a checkpoint every 2 steps.
SHORT = ["--max-rows", "12", "--max-length", "160", "--batch-size", "2", "--lr", "2e-3", "--lora-r", "8",
         "--warmup-steps", "0", "--scheduler", "constant", "--no-gradient-checkpointing"]


def cli(*args, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_every_example_recipe_reads(tmp_path):
    recipes = sorted((ROOT / "recipes").glob("*.yaml"))
    assert len(recipes) >= 3
    for path in recipes:
        recipe = load_recipe(path, "cuda")
        assert recipe.output and recipe.train.max_steps == 60
        if recipe.model.name != "embedded":  # the GPU recipes keep the seeds' effective batch
            assert recipe.train.micro_batch_size * recipe.train.grad_accum_steps == 8
    seeds = load_recipe(ROOT / "recipes" / "seeds-r1-llama-8b-medical-o1.yaml", "cuda")
    assert (seeds.train.micro_batch_size, seeds.train.grad_accum_steps, seeds.train.optimizer) == (2, 4, "adamw_8bit")
    assert seeds.data.template == "plain" and seeds.lora.gradient_checkpointing


def test_a_recipe_sets_the_run_and_a_flag_given_wins(tmp_path):
    recipe = {
        "model": {"name": "embedded"},
        "data": {"source": "sample", "max_rows": 10, "holdout_rows": 0, "system_prompt": "Be brief."},
        # max_length under train: where a recipe of before held it (it is model.max_length now)
        "train": {"max_steps": 2, "max_length": 128, "learning_rate": "3e-3", "micro_batch_size": 2,
                  "grad_accum_steps": 1, "optimizer": "adamw_torch", "warmup_steps": 0},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "gradient_checkpointing": False},
        "output": str(tmp_path / "from-recipe"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = cli("train", "--config", str(path), "--lora-r", "6")
    assert result.returncode == 0, result.stderr
    record = read_record(tmp_path / "from-recipe")
    assert record["status"] == "done" and record["steps"] == 2
    assert record["train"]["learning_rate"] == 3e-3 and record["dataset"]["stats"]["max_length"] == 128
    assert record["lora"]["r"] == 6 and record["lora"]["alpha"] == 8  # the flag won; the rest is the recipe's
    assert record["lora"]["target_modules"] == ["q_proj", "v_proj"]
    # The run folder's recipe.yaml repeats the run: the same settings, every field written out.
    saved = load_recipe(tmp_path / "from-recipe" / "recipe.yaml", "cpu")
    assert saved.lora.r == 6 and saved.data.system_prompt == "Be brief." and saved.train.max_steps == 2
    assert saved.model.max_length == 128 and "max_length" not in recipe_dict(saved)["train"]
    assert set(recipe_dict(saved)["train"]) >= {"learning_rate", "save_steps", "eval_max_new_tokens"}


@pytest.mark.parametrize("text, message", [
    ("train: {lr: 1}", "train.lr is not a setting; train has micro_batch_size"),
    ("train: {max_steps: many}", "train.max_steps must be a whole number, not 'many'"),
    ("lora: {r: 0}", "lora: r must be between 1 and 256, not 0"),
    ("trainer: {}", "unknown section 'trainer'"),
    ("model: [embedded]", "section 'model' must be a mapping"),
    ("train: {max_steps: 2", "not valid YAML"),
    ("{model: {max_length: 200}, train: {max_length: 300}}",  # an older recipe's length, and another
     "train.max_length (300) and model.max_length (200) disagree"),
])
def test_a_bad_recipe_names_the_setting(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match="bad.yaml"):
        load_recipe(path, "cpu")
    result = cli("train", "--config", str(path), "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def prepared(loaded):
    rows = map_columns(read_source("sample", max_rows=16))
    return tokenize_rows(rows, DataSettings(), loaded.tokenizer, QUICK_LENGTH)


def test_a_stopped_run_resumes_where_it_stopped_with_the_same_losses(loaded, tmp_path):
    data, train, lora = prepared(loaded), quick_train(6, save_steps=100), quick_lora()
    straight = start_training(loaded, data, quick_recipe(loaded, tmp_path / "straight", train, lora))
    straight.wait(300)
    assert straight.status == "done"

    job = start_training(loaded, data, quick_recipe(loaded, tmp_path / "stopped", train, lora))
    while len(job.metrics) < 3:  # stop once step 3 has been logged: the run ends after a step
        time.sleep(0.05)
    job.stop()
    job.wait(120)
    stopped_at = job.result["steps"]
    assert job.status == "stopped" and 3 <= stopped_at < 6
    checkpoint = last_checkpoint(tmp_path / "stopped")  # saved at the stop, though save_steps is 100
    assert checkpoint is not None and checkpoint.name == f"checkpoint-{stopped_at}"
    assert [run.describe() for run in list_runs(tmp_path)] == [
        f"stopped: stopped at step {stopped_at}/6, resumable from step {stopped_at}", "straight: done at step 6/6"]

    resumed = resume_training(loaded, tmp_path / "stopped")
    assert [m["step"] for m in resumed.metrics] == list(range(1, stopped_at + 1))  # the curve so far
    resumed.wait(300)
    assert resumed.status == "done" and resumed.result["steps"] == 6
    assert [m["step"] for m in resumed.metrics] == [1, 2, 3, 4, 5, 6]
    # The same data order, optimizer state and schedule: the steps after the stop match the straight run.
    for ours, theirs in zip(resumed.metrics[stopped_at:], straight.metrics[stopped_at:], strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=2e-3)
    record = read_record(tmp_path / "stopped")
    assert record["status"] == "done" and record["resumed_from"] == stopped_at and len(record["metrics"]) == 6
    with pytest.raises(RunFolderError, match="already finished"):
        resume_training(loaded, tmp_path / "stopped")


def test_killed_run_is_marked_incomplete_and_resumes_from_the_command_line(tmp_path):
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune", "train", *SHORT, "--max-steps", "8", "--save-steps", "2",
         "--output", str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 240
    while last_checkpoint(run_dir) is None and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # no chance to clean up, as when a Space restarts
    process.wait()
    record = read_record(run_dir)  # readable, though the process died mid-run
    assert record["status"] == "running"
    assert (run_dir / "train_rows.jsonl").is_file() and (run_dir / "recipe.yaml").is_file()
    assert not (run_dir / "adapter").exists()

    listing = cli("runs", "--runs-dir", str(tmp_path))
    assert "marked incomplete: killed" in listing.stderr
    [run] = json_lines(listing.stdout)
    assert run["status"] == "incomplete" and run["resumable_from"] >= 2
    assert "The process ended during training; resume continues from step" in read_record(run_dir)["error"]

    result = cli("train", "--resume", str(run_dir))
    assert result.returncode == 0, result.stderr
    lines = json_lines(result.stdout)
    assert lines[0]["step"] == run["resumable_from"] + 1 and lines[-2]["step"] == 8
    assert lines[-1]["status"] == "done" and (run_dir / "adapter" / "adapter_config.json").is_file()
    assert [m["step"] for m in read_record(run_dir)["metrics"]] == list(range(1, 9))


def test_a_run_of_a_live_process_is_not_marked(tmp_path):
    (tmp_path / "live").mkdir()
    owner = {"pid": os.getpid(), "pid_started": None}
    (tmp_path / "live" / "run.json").write_text(json.dumps({"status": "running", "owner": owner}))
    assert mark_abandoned_runs(tmp_path) == []
    assert read_record(tmp_path / "live")["status"] == "running"


def test_an_unwritable_output_folder_is_a_clear_error(loaded, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(RunFolderError, match="Cannot write to the output folder .*a file is in the way"):
        start_training(loaded, prepared(loaded), quick_recipe(loaded, tmp_path / "a-file" / "run", quick_train(2)))
    assert loaded.job is None  # nothing started
    result = cli("train", *SHORT, "--max-steps", "1", "--output", str(tmp_path / "a-file" / "run"))
    assert result.returncode == 2 and "Cannot write to the output folder" in result.stderr


def limit_file_size(limit: int):
    """In the child: files may not grow past `limit` bytes, as on a disk that is full."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_during_training_fails_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "full"
    result = subprocess.run(
        [sys.executable, "-m", "finetune", "train", *SHORT, "--max-steps", "2", "--save-steps", "1",
         "--output", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        preexec_fn=limit_file_size(2_000_000))  # the first checkpoint (adapter + optimizer) is larger
    assert result.returncode == 1, result.stderr
    final = json_lines(result.stdout)[-1]
    assert final["status"] == "failed" and "the disk is full" in final["error"]
    record = read_record(run_dir)  # still readable, and says what happened
    assert record["status"] == "failed" and "the disk is full" in record["error"]
    assert not any(run_dir.glob("adapter"))


def test_a_run_started_in_the_app_writes_a_recipe_that_repeats_it(tmp_path):
    from finetune.config import ModelSettings
    from finetune.data.sources import load_examples
    from ui.workspace import Workspace

    workspace = Workspace(tmp_path / "runs")
    workspace.load(ModelSettings())
    rows = map_columns(read_source("sample", max_rows=12))
    job = workspace.start_training(rows, DataSettings(system_prompt="Be brief."), quick_train(1), quick_lora(),
                                   "from-app", max_length=QUICK_LENGTH)
    assert job.wait(120) and job.status == "done", job.error
    recipe = load_recipe(tmp_path / "runs" / "from-app" / "recipe.yaml", "cpu")
    # The rows come from the run's own copy: the recipe works after an upload is gone.
    assert load_examples(recipe.data.source, recipe.data.columns).examples == rows.examples
    assert (recipe.train.max_steps, recipe.lora.r, recipe.data.system_prompt) == (1, 8, "Be brief.")
    assert recipe.output == str(tmp_path / "runs" / "from-app") and recipe.model.name == "embedded"
    assert recipe.model.max_length == QUICK_LENGTH  # the length the rows were cut at, the run's one length


def test_a_flag_given_wins_even_when_it_says_the_default():
    from finetune.cli import build_parser, recipe_from_args

    demo = str(ROOT / "recipes" / "embedded-cpu-demo.yaml")  # holdout_rows: 8
    args = build_parser().parse_args(["train", "--config", demo, "--holdout", "0", "--output", "x"])
    assert recipe_from_args(args).data.holdout_rows == 0
    kept = recipe_from_args(build_parser().parse_args(["train", "--config", demo, "--lora-r", "4"]))
    assert kept.data.holdout_rows == 8 and kept.lora.r == 4 and kept.output == "runs/embedded-cpu-demo"
