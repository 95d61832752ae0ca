"""What a person watching a run sees: curves, a progress line, a short log.

Pure functions of a `TrainingJob` snapshot, so any number of pages (and a reloaded one) draw the
same picture from the job's history.
"""

from __future__ import annotations

import math

from finetune.evaluate.heldout import eval_line
from finetune.train.job import TrainingJob
from ui.eval_view import eval_progress_line


def smoothed(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with TensorBoard's start-up correction (no pull towards zero)."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight**i))
    return out


def loss_rows(metrics: list[dict], weight: float = 0.8) -> list[dict]:
    """Long-format rows for a plot: each step's raw loss and its smoothed curve (a diverged run's last,
    non-finite loss is left out: it would turn the smoothed curve to NaN)."""
    metrics = [m for m in metrics if math.isfinite(m["loss"])]
    curve = smoothed([m["loss"] for m in metrics], weight)
    raw = [{"step": m["step"], "loss": m["loss"], "curve": "raw"} for m in metrics]
    smooth = [
        {"step": m["step"], "loss": round(v, 5), "curve": "smoothed"} for m, v in zip(metrics, curve, strict=True)
    ]
    return raw + smooth


def optimizer_rows(metrics: list[dict]) -> list[dict]:
    """Learning rate and gradient norm per step (grad norm is missing on steps where it was not finite)."""
    return [
        {"step": m["step"], "value": m[key], "series": label}
        for m in metrics
        for key, label in (("learning_rate", "learning rate"), ("grad_norm", "grad norm"))
        if m.get(key) is not None and math.isfinite(m[key])
    ]


def progress_fraction(job: TrainingJob | None) -> float:
    if job is None or not job.total_steps:
        return 0.0
    step = job.metrics[-1]["step"] if job.metrics else 0
    return 1.0 if job.status == "done" else min(step / job.total_steps, 1.0)


def progress_line(job: TrainingJob | None) -> str:
    """One line: where the run is, how fast, how long to go; or how it ended and what to do."""
    if job is None:
        return "No training run yet."
    p = job.progress()
    last = job.metrics[-1] if job.metrics else {}
    where = f"step {p['step']}/{p['total_steps']}"
    if job.status == "running":
        if not job.metrics:
            return f"Starting: preparing the model and the first step ({p['elapsed_s']:.0f} s)…"
        if p["evaluating"] is not None:
            return eval_progress_line(p["evaluating"], opening=f"Trained {where}; evaluating",
                                      what="held-out questions")
        speed = f"{last['tokens_per_s']:,.0f} tokens/s" if last.get("tokens_per_s") else ""
        eta = f"ETA {_duration(p['eta_s'])}" if p["eta_s"] is not None else ""
        parts = [f"Training: {where}", f"loss {p['loss']:.3f}", speed, eta, f"elapsed {_duration(p['elapsed_s'])}"]
        return " · ".join(part for part in parts if part)
    if job.status == "failed":
        return f"Failed at {where}. {job.error}"
    result = job.result or {}
    verb = "Stopped" if job.status == "stopped" else "Done"
    losses = ""
    if result.get("loss_first") is not None:
        losses = f" · loss {result['loss_first']:.3f} → {result['loss_last']:.3f}"
    runtime = _duration(result.get("runtime_s", 0))
    evaluated = f" · {eval_line(result['eval'])}" if result.get("eval") else ""
    fp8 = " · FP8 base matmuls" if result.get("fp8_matmuls") else ""
    return f"{verb} at {where}{losses} · {runtime}{fp8} · adapter saved to {result.get('adapter')}{evaluated}"


def log_lines(job: TrainingJob | None, last: int = 12) -> str:
    """The last few steps as text lines, newest last."""
    if job is None:
        return ""
    lines = [
        f"step {m['step']:>4}/{m['total_steps']}  loss {m['loss']:.4f}  lr {m['learning_rate']:.2e}  "
        f"grad {m['grad_norm']:.3f}  {m['tokens_per_s']:,.0f} tok/s"
        for m in job.metrics[-last:]
    ]
    if not job.running:
        lines.append(progress_line(job))
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
