"""How a run ends when something goes wrong at its edges: a loss that turns NaN, a Stop on the last step."""

import math
import re

import pytest
from conftest import QUICK_LENGTH, quick_recipe, quick_train

from finetune.config import DataSettings, ModelSettings
from finetune.data.prompts import tokenize_rows
from finetune.data.sources import map_columns, read_source
from finetune.models.load import load_model
from finetune.runs import list_runs, read_record
from finetune.train.trainer import JobCallback, ReasoningSFTTrainer, resume_training, start_training
from ui.presenters import loss_rows
from ui.workspace import Workspace

pytestmark = pytest.mark.slow  # trains, or drives the app or the command line end to end


@pytest.fixture(scope="module")
def loaded():
    return load_model(ModelSettings())


def prepared(loaded, rows=8, holdout=0):
    return tokenize_rows(map_columns(read_source("sample", max_rows=rows)), DataSettings(holdout_rows=holdout),
                         loaded.tokenizer, QUICK_LENGTH)


def during_step(monkeypatch, step: int, action) -> None:
    """Run `action(trainer)` inside training step `step` (1-based), after its backward pass."""
    original = ReasoningSFTTrainer.training_step

    def training_step(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        if self.state.global_step == step - 1:
            action(self)
        return loss

    monkeypatch.setattr(ReasoningSFTTrainer, "training_step", training_step)


def job_of(trainer):
    return next(callback for callback in trainer.callback_handler.callbacks if isinstance(callback, JobCallback)).job


def poison_a_lora_weight(trainer) -> None:
    """What a too-high rate or a bad row does in the end: a weight that is NaN, so every later loss is."""
    import torch

    weight = next(w for name, w in trainer.model.named_parameters() if w.requires_grad and "lora_B" in name)
    with torch.no_grad():
        weight.fill_(float("nan"))


def test_a_run_whose_loss_turns_nan_fails_saying_so_and_keeps_nothing(loaded, tmp_path, monkeypatch):
    during_step(monkeypatch, 3, poison_a_lora_weight)
    job = start_training(loaded, prepared(loaded), quick_recipe(loaded, tmp_path / "nan", quick_train(8, save_steps=2)))
    assert job.wait(timeout=300)
    assert job.status == "failed"
    assert job.error == ("The loss became NaN at step 4: training diverged. Lower the learning rate (now 0.002) "
                         "and start again; nothing was kept to export or resume."), job.error
    assert len(job.metrics) == 4  # it stopped at the first non-finite loss, not at step 8
    assert all(math.isfinite(row["loss"]) for row in loss_rows(job.metrics))  # the plot leaves the NaN out
    folder = tmp_path / "nan"
    assert not (folder / "adapter").exists() and not list(folder.glob("checkpoint-*"))
    assert read_record(folder)["status"] == "failed" and read_record(folder)["diverged"] is True
    assert not any(run.resumable for run in list_runs(tmp_path))
    assert not loaded.has_adapter  # chat's fine-tuned pane says there is none, rather than answering NaNs
    assert Workspace(tmp_path).exportable_runs() == []
    with pytest.raises(ValueError, match="diverged"):
        resume_training(loaded, folder)


def test_a_nan_weight_caught_only_at_the_end_fails_the_run_too(loaded, tmp_path, monkeypatch):
    during_step(monkeypatch, 2, lambda trainer: (poison_a_lora_weight(trainer), job_of(trainer).stop()))
    monkeypatch.setattr(JobCallback, "on_log", lambda *args, **kwargs: None)  # the loss check is not there
    job = start_training(loaded, prepared(loaded), quick_recipe(loaded, tmp_path / "weights", quick_train(6)))
    assert job.wait(timeout=300) and job.status == "failed"
    assert re.match(r"The trained LoRA weight \S+lora_B\S+ became NaN or infinite by step 2: training diverged\.",
                    job.error), job.error
    assert not (tmp_path / "weights" / "adapter").exists() and not loaded.has_adapter


def test_stop_during_the_last_step_leaves_a_finished_evaluated_run(loaded, tmp_path, monkeypatch):
    during_step(monkeypatch, 3, lambda trainer: job_of(trainer).stop())
    train = quick_train(3, eval_generate=False)
    job = start_training(loaded, prepared(loaded, rows=10, holdout=2), quick_recipe(loaded, tmp_path / "last", train))
    assert job.wait(timeout=300) and job.status == "done", (job.status, job.error)
    assert "eval" in job.result and job.result["eval"]["finetuned"]["heldout_loss"] is not None
    record = read_record(tmp_path / "last")
    assert record["status"] == "done" and record["steps"] == 3
    assert not any(run.resumable for run in list_runs(tmp_path))


def test_stop_before_the_last_step_still_leaves_a_resumable_stopped_run(loaded, tmp_path, monkeypatch):
    during_step(monkeypatch, 2, lambda trainer: job_of(trainer).stop())
    job = start_training(loaded, prepared(loaded), quick_recipe(loaded, tmp_path / "middle", quick_train(6)))
    assert job.wait(timeout=300) and job.status == "stopped", job.error
    assert [run.resumable for run in list_runs(tmp_path)] == [True]
