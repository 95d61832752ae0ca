"""The LoRA SFT job on the embedded model on CPU: it learns, saves an adapter that reloads, stops,
refuses a second start, survives a failure, and still trains after a chat (4-bit too)."""

import json

import pytest
import torch
from conftest import QUICK_LENGTH, lora_b_weights, mean_loss, quick_recipe, quick_train

from finetune.config import DataSettings, ModelSettings
from finetune.data.prompts import prepare_dataset
from finetune.generate.reply import GenerationSettings, ModelBusy, generate_reply
from finetune.models.adapters import load_adapter
from finetune.models.load import load_model
from finetune.train.job import TrainingBusy
from finetune.train.trainer import start_training

pytestmark = pytest.mark.slow  # trains, or drives the app or the command line end to end

GREEDY = GenerationSettings(max_new_tokens=24, temperature=0.0)
QUESTION = "A 30-year-old woman has palpitations, weight loss and a fine tremor. What test comes first?"


def sample(tokenizer, rows=24, max_length=QUICK_LENGTH):
    return prepare_dataset(DataSettings(source="sample", max_rows=rows), tokenizer, max_length)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One 10-step run shared by the tests that inspect its result."""
    loaded = load_model(ModelSettings())
    data = sample(loaded.tokenizer)
    base_reply = generate_reply(loaded, QUESTION, GREEDY)
    before = mean_loss(loaded.model, data.rows[:8])
    output = tmp_path_factory.mktemp("run")
    job = start_training(loaded, data, quick_recipe(loaded, output, quick_train(10)))
    assert job.wait(timeout=600)
    return loaded, data, job, output, before, base_reply


def test_ten_steps_lower_the_loss_on_the_same_rows(trained_run):
    loaded, data, job, _, before, _ = trained_run
    assert job.status == "done", job.error
    assert [m["step"] for m in job.metrics] == list(range(1, 11))
    assert mean_loss(loaded.model, data.rows[:8]) < before - 0.1


def test_every_step_reports_its_metrics(trained_run):
    _, _, job, _, _, _ = trained_run
    last = job.metrics[-1]
    assert set(last) >= {
        "step",
        "total_steps",
        "loss",
        "learning_rate",
        "grad_norm",
        "tokens_per_s",
        "elapsed_s",
        "eta_s",
    }
    assert last["total_steps"] == 10 and last["eta_s"] == 0 and last["tokens_per_s"] > 0
    assert list(job.follow()) == job.metrics  # a late listener gets the whole history


def test_run_folder_holds_adapter_tokenizer_and_record(trained_run):
    _, _, job, output, _, _ = trained_run
    assert (output / "adapter" / "adapter_config.json").is_file()
    assert (output / "adapter" / "tokenizer.json").is_file()
    record = json.loads((output / "run.json").read_text())
    assert record["status"] == "done" and record["steps"] == 10 and len(record["metrics"]) == 10
    assert record["lora"]["r"] == 8 and record["dataset"]["template"] == "chat"
    assert job.result["adapter"] == str(output / "adapter")
    assert record["fp8_matmuls"] is False  # which path multiplied is on record: 16 bits on a CPU


def test_base_is_the_same_model_with_the_adapter_off(trained_run):
    loaded, _, _, _, _, base_reply = trained_run
    assert generate_reply(loaded, QUESTION, GREEDY, use_adapter=False).answer == base_reply.answer
    assert generate_reply(loaded, QUESTION, GREEDY, use_adapter=True).answer != base_reply.answer


def test_saved_adapter_reloads_and_changes_the_output(trained_run):
    _, _, _, output, _, base_reply = trained_run
    fresh = load_model(ModelSettings())
    load_adapter(fresh, output)
    tuned = generate_reply(fresh, QUESTION, GREEDY)
    assert tuned.answer != base_reply.answer
    assert generate_reply(fresh, QUESTION, GREEDY, use_adapter=False).answer == base_reply.answer


def test_stop_ends_after_the_current_step_and_keeps_the_adapter(loaded, tmp_path):
    job = start_training(loaded, sample(loaded.tokenizer, 8, 144), quick_recipe(loaded, tmp_path, quick_train(200)))
    next(job.follow())  # the first step is done
    job.stop()
    assert job.wait(timeout=120)
    assert job.status == "stopped" and job.result["status"] == "stopped"
    assert 1 <= job.result["steps"] < 200
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_second_start_is_busy_and_chat_waits(loaded, tmp_path):
    data = sample(loaded.tokenizer, 8, 144)
    job = start_training(loaded, data, quick_recipe(loaded, tmp_path / "a", quick_train(200)))
    try:
        with pytest.raises(TrainingBusy, match=r"busy: a training job is already running \(step \d+/200\)") as err:
            start_training(loaded, data, quick_recipe(loaded, tmp_path / "b", quick_train(5)))
        assert err.value.job is job
        with pytest.raises(ModelBusy):
            generate_reply(loaded, QUESTION, GREEDY)
    finally:
        job.stop()
        job.wait(timeout=120)


def test_failed_run_reports_why_and_the_model_still_answers(loaded, tmp_path):
    recipe = quick_recipe(loaded, tmp_path, quick_train(2, optimizer="no_such_optimizer"))
    job = start_training(loaded, sample(loaded.tokenizer, 4, 144), recipe)
    assert job.wait(timeout=120)
    assert job.status == "failed" and "no_such_optimizer" in job.error
    assert generate_reply(loaded, QUESTION, GREEDY).answer


@pytest.mark.parametrize("four_bit", [False, True], ids=["fp32", "4bit"])
def test_chat_then_train_updates_every_lora_layer(four_bit, tmp_path):
    loaded = load_model(ModelSettings(load_in_4bit=four_bit))
    generate_reply(loaded, QUESTION, GREEDY)  # on CPU, 4-bit weights get repacked for inference here
    job = start_training(loaded, sample(loaded.tokenizer, 4, 144), quick_recipe(loaded, tmp_path, quick_train(2)))
    assert job.wait(timeout=300) and job.status == "done", job.error
    weights = lora_b_weights(loaded.model)  # LoRA B starts at zero: non-zero means it got gradients
    assert weights and all(w.abs().sum() > 0 for w in weights.values()), [n for n, w in weights.items() if not w.any()]
    assert generate_reply(loaded, QUESTION, GREEDY).done  # and chat works again afterwards


def test_second_run_starts_from_a_fresh_adapter(loaded, tmp_path):
    data = sample(loaded.tokenizer, 4, 144)
    for name in ("first", "second"):
        job = start_training(loaded, data, quick_recipe(loaded, tmp_path / name, quick_train(1)))
        assert job.wait(timeout=120) and job.status == "done", job.error
    adapters = list(loaded.model.peft_config)
    assert adapters == ["default"]
    assert not any("base_layer.base_layer" in n for n, _ in loaded.model.named_modules())  # no LoRA on LoRA


def test_empty_dataset_is_refused(loaded, tmp_path):
    data = sample(loaded.tokenizer, 4, 144)
    data.rows = []
    with pytest.raises(ValueError, match="no rows left to train on"):
        start_training(loaded, data, quick_recipe(loaded, tmp_path, quick_train(1)))


def test_lora_weights_are_trainable_only(trained_run):
    loaded, _, _, _, _, _ = trained_run
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.is_grad_enabled()


A_SHORT_RUN = """
import sys
from finetune.models.backend import import_unsloth_first
import_unsloth_first()
from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings
from ui.presenters import log_lines
from finetune.data.prompts import prepare_dataset
from finetune.models.load import load_model
from finetune.train.recipe import Recipe
from finetune.train.trainer import start_training

loaded = load_model(ModelSettings(max_length=128))
settings = DataSettings(source="sample", max_rows=5, holdout_rows=1)
data = prepare_dataset(settings, loaded.tokenizer, 128)
train = TrainSettings(micro_batch_size=2, grad_accum_steps=1, warmup_steps=0, max_steps=2, optimizer="adamw_torch",
                      eval_max_new_tokens=2)
lora = LoraSettings(r=8, alpha=16, gradient_checkpointing=False)
job = start_training(loaded, data, Recipe(loaded.settings, settings, train, lora, sys.argv[1]))
job.wait(timeout=400)
print(log_lines(job))
"""
CHATTER = ["gemm_4bit_forward", "kernels", "clean_up_tokenization_spaces", "Truncating train dataset",
           "Dropping fully masked"]


def test_a_runs_log_holds_our_lines_and_no_library_chatter(tmp_path):
    """In a fresh process, where PEFT (and with it bitsandbytes) is imported at the training start."""
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, "-c", A_SHORT_RUN, str(tmp_path / "run")], cwd=ROOT,
                            capture_output=True, text=True, timeout=500)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step    1/2  loss" in result.stdout and "step    2/2  loss" in result.stdout
    assert "Done at step 2/2" in result.stdout  # the held-out row was evaluated too: a decode, a tokenizer warning
    chatter = [line for line in (result.stdout + result.stderr).splitlines() if any(c in line for c in CHATTER)]
    assert not chatter


def test_the_advisories_are_dropped_and_everything_else_of_their_loggers_kept():
    import logging

    from finetune.quiet import LIBRARY_ADVISORIES

    # finetune.train.trainer, imported above, put the filters on; the handler sees what gets past a logger's filters.
    seen, expected = [], []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append((record.levelname, record.getMessage()))
    for name, (start, *_) in LIBRARY_ADVISORIES.items():
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            logger.warning("%s: No module named 'kernels'", start)  # the advisory: dropped
            logger.error("%s, and then it crashed", start)  # an error: kept, whatever it starts with
            logger.warning("Something else went wrong")  # another warning: kept
        finally:
            logger.removeHandler(handler)
        expected += [("ERROR", f"{start}, and then it crashed"), ("WARNING", "Something else went wrong")]
    assert seen == expected
