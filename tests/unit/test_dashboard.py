"""The training dashboard: raw and smoothed loss, progress with ETA, and a failure that says what to do."""

import pytest

from finetune.train.job import TrainingJob
from ui.presenters import log_lines, loss_rows, optimizer_rows, progress_fraction, progress_line, smoothed


def step(n, loss, total=10, **extra):
    metrics = dict(step=n, total_steps=total, loss=loss, learning_rate=1e-3, grad_norm=0.5, tokens_per_s=200.0,
                   elapsed_s=2.0 * n, eta_s=2.0 * (total - n))
    metrics.update(extra)
    return metrics


def test_smoothing_follows_the_trend_without_starting_at_zero():
    assert smoothed([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    curve = smoothed([4.0, 0.0, 4.0, 0.0, 4.0, 0.0])
    assert curve[0] == pytest.approx(4.0) and max(curve[2:]) - min(curve[2:]) < 4.0


def test_loss_rows_hold_a_raw_and_a_smoothed_point_per_step():
    rows = loss_rows([step(1, 3.0), step(2, 2.0)])
    assert [(r["step"], r["curve"]) for r in rows] == [(1, "raw"), (2, "raw"), (1, "smoothed"), (2, "smoothed")]
    assert rows[1]["loss"] == 2.0 and 2.0 < rows[3]["loss"] < 3.0


def test_grad_norm_that_was_not_finite_is_left_out_of_the_plot():
    rows = optimizer_rows([step(1, 3.0), step(2, 2.0, grad_norm=float("nan"))])
    assert [(r["step"], r["series"]) for r in rows] == [(1, "learning rate"), (1, "grad norm"), (2, "learning rate")]


def test_progress_line_while_running_after_a_stop_and_after_a_failure():
    job = TrainingJob(total_steps=10, output_dir="runs/x")
    assert progress_line(job).startswith("Starting")
    job.record(step(4, 2.5))
    assert progress_line(job).startswith("Training: step 4/10 · loss 2.500 · 200 tokens/s · ETA 12 s")
    assert progress_fraction(job) == pytest.approx(0.4)
    job.finish("stopped", result={"loss_first": 3.0, "loss_last": 2.5, "runtime_s": 75, "adapter": "runs/x/adapter"})
    assert progress_line(job) == (
        "Stopped at step 4/10 · loss 3.000 → 2.500 · 1 min 15 s · adapter saved to runs/x/adapter"
    )
    failed = TrainingJob(total_steps=10, output_dir="runs/y")
    failed.finish("failed", error="Out of memory. Lower the micro-batch size (now 8)")
    assert progress_line(failed) == "Failed at step 0/10. Out of memory. Lower the micro-batch size (now 8)"
    assert log_lines(failed).endswith("Lower the micro-batch size (now 8)")


def test_the_held_out_caption_names_the_rows_and_warns_only_for_the_bundled_sample():
    from ui.presenters import heldout_caption

    own = heldout_caption({"source": {"dataset": "ward_notes.csv", "rows": 4}}, real_rows_offered=True)
    assert own == "Held out of this run: 4 rows of ward_notes.csv, never trained on."
    bundled = heldout_caption({"source": {"dataset": "clinical_vignettes.jsonl", "rows": 8}}, real_rows_offered=True)
    assert "flatter the fine-tuned model; the Evaluate tab's real medical-o1 rows say what it learned" in bundled
    assert heldout_caption(None, True) == heldout_caption({"base": {}}, True) == ""
