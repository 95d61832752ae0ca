"""An evaluation says what it is doing: only the phases it runs, tokens written within a batch, time left
once measured; one line for the Train and the Evaluate tabs."""

import pytest
from conftest import trained_looking_adapter

import finetune.evaluate.heldout as evaluation
from finetune.data.sources import MCQ_FILE, SAMPLE_FILE, EvalItem
from finetune.evaluate.heldout import EvalProgress, EvalSettings, evaluate, load_eval_items
from finetune.train.job import TrainingJob
from ui.presenters import eval_progress_line, progress_line


def phases(updates: list[EvalProgress]) -> list[tuple[str, str]]:
    """(model, phase) in the order reported, each once."""
    seen = []
    for update in updates:
        if (update.model, update.phase) not in seen:
            seen.append((update.model, update.phase))
    return seen


def test_only_the_phases_an_evaluation_runs_are_reported(loaded):
    mcq = load_eval_items(str(MCQ_FILE), limit=1)  # options and a gold letter, no reference answer: no loss
    updates = []
    evaluate(loaded, mcq, EvalSettings(max_new_tokens=2), on_update=updates.append)
    assert phases(updates) == [("base", "answers")]
    assert updates[0].done == 0 and updates[-1].done == updates[-1].total == 1

    vignette = load_eval_items(str(SAMPLE_FILE), limit=1)  # a reference answer and reasoning: a loss to score
    trained_looking_adapter(loaded)
    updates = []
    evaluate(loaded, vignette, EvalSettings(max_new_tokens=2, max_length=128), on_update=updates.append)
    assert phases(updates) == [("base", "loss"), ("base", "answers"), ("finetuned", "loss"), ("finetuned", "answers")]
    scored = [u for u in updates if u.phase == "loss" and u.model == "base"]
    assert scored[0].done == 0 and scored[-1].done == scored[-1].total == 1

    updates = []
    evaluate(loaded, vignette, EvalSettings(max_length=128, generate=False), models=["base"], on_update=updates.append)
    assert phases(updates) == [("base", "loss")]


def test_tokens_written_rise_within_a_batch_and_time_left_follows_the_measurements(loaded, monkeypatch):
    monkeypatch.setattr(evaluation, "PROGRESS_EVERY_S", 0.0)  # every token step, not a few a second
    items = [EvalItem("What causes a fever?"), EvalItem("What is sepsis?")]  # short prompts: fast steps
    updates = []
    settings = EvalSettings(max_new_tokens=10, batch_size=1)
    evaluate(loaded, items, settings, on_update=updates.append)
    first_batch = [u for u in updates if u.done == 0]
    written = [u.batch_tokens for u in first_batch]
    assert len(written) > 4 and written == sorted(written) and written[-1] > written[1] > 0
    assert [u.tokens for u in first_batch] == written  # the first batch is all this model has written
    # Nothing said before a few steps are measured; then the most it can take, each answer at its limit.
    assert first_batch[0].eta_s is None and first_batch[-1].eta_s is not None and first_batch[-1].eta_is_bound
    # Once a batch has ended, the batches to come are reckoned at the length it took: a likely figure.
    second_batch = [u for u in updates if u.done == 1 and u.batch_tokens]
    assert second_batch and all(u.eta_s is not None and not u.eta_is_bound for u in second_batch)
    assert second_batch[-1].tokens > first_batch[-1].tokens
    assert updates[-1].done == 2 and updates[-1].eta_s == 0


@pytest.mark.parametrize("progress,line", [
    (EvalProgress("loss", "base", questions=8, done=3, total=8),
     "Evaluating 8 questions: base model, held-out loss, 3/8 rows scored"),
    (EvalProgress("answers", "base", questions=3, done=0, total=3),
     "Evaluating 3 questions: base model, answers 0/3"),
    (EvalProgress("answers", "base", questions=3, done=1, total=3, batch_tokens=12, tokens=212, eta_s=61.0),
     "Evaluating 3 questions: base model, answers 1/3, 212 tokens written, about 2 min left"),
    (EvalProgress("answers", "finetuned", questions=8, done=0, total=8, batch_tokens=1500, tokens=1500,
                  eta_s=840.0, eta_is_bound=True),
     "Evaluating 8 questions: fine-tuned model, answers 0/8, 1,500 tokens written, at most 14 min left"),
    (EvalProgress("answers", "finetuned", questions=1, done=0, total=1, tokens=40, eta_s=20.0),
     "Evaluating 1 question: fine-tuned model, answers 0/1, 40 tokens written, under a minute left"),
])
def test_the_progress_line_says_the_phase_and_the_time_left(progress, line):
    assert eval_progress_line(progress) == line


def test_the_training_dashboard_shows_the_evaluation_of_the_held_out_rows():
    job = TrainingJob(total_steps=10, output_dir="runs/x")
    job.record(dict(step=10, total_steps=10, loss=1.2, learning_rate=1e-4, grad_norm=0.4, tokens_per_s=300.0,
                    elapsed_s=20.0, eta_s=0.0))
    job.evaluating = EvalProgress("answers", "finetuned", questions=8, done=3, total=8, batch_tokens=400,
                                  tokens=1204, eta_s=100.0)
    assert progress_line(job) == ("Trained step 10/10; evaluating 8 held-out questions: fine-tuned model, "
                                  "answers 3/8, 1,204 tokens written, about 2 min left")
    job.evaluating = None
    assert progress_line(job).startswith("Training: step 10/10")
