"""What a person sees, as text and tables: the model card, the dataset preview's summary, the training
dashboard, and base vs fine-tuned figures. In the order of the tabs.

Pure functions of what the engine returns (a ModelInfo, a DatasetPreview, a TrainingJob snapshot, an
evaluation report or its JSON form from run.json), without Gradio: any number of pages, and a
reloaded one, draw the same picture.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

import pandas as pd

from finetune.data.sources import SAMPLE_FILE
from finetune.evaluate.estimate import duration_words
from finetune.evaluate.heldout import PUBLISHED, EvalProgress, EvalReport, ItemResult, eval_line
from finetune.models.load import LoadedModel, ModelInfo
from finetune.runs import RunSummary
from finetune.train.job import TrainingJob

if TYPE_CHECKING:  # ui.preview builds its summary here: importing it at run time would be a cycle
    from ui.preview import DatasetPreview

# ---------------------------------------------------------------------------------------------------
# Model


def model_markdown(info: ModelInfo, heading: str = "✓ **Loaded.**") -> str:
    """The model card: backend, device, dtype, size, load time, chat template, tokenizer."""
    rows = [
        ("Backend", info.backend), ("Device", info.device), ("Dtype", info.dtype),
        ("Quantization", info.quantization), ("Parameters", f"{info.parameters / 1e6:,.0f} M"),
        ("Memory", f"{info.memory_gb:.2f} GB"), ("Loaded in", f"{info.load_seconds:.1f} s"),
        ("Chat template", "yes" if info.chat_template else "none (the ### template is used)"),
        ("Tokenizer", info.tokenizer_note or "round-trips text unchanged"),
    ]
    table = "\n".join(f"| {key} | {html.escape(str(value))} |" for key, value in rows)
    # The model's name heads the table: a Markdown table needs a header row, and an empty one shows as a blank bar.
    return f"{heading}\n\n| Model | {html.escape(info.name)} |\n|---|---|\n{table}"


def load_failed_markdown(error: str, loaded: LoadedModel | None) -> str:
    """A failed Load leaves the model that was loaded in use: say so, with its card, under the error."""
    if loaded is None:
        return f"⚠ {error}"
    return model_markdown(loaded.info, f"⚠ {error}\n\n**Still loaded, and used by chat and training:**")


# ---------------------------------------------------------------------------------------------------
# Dataset


def dataset_summary(preview: DatasetPreview) -> str:
    """The rows and their mapping, how the hold-out splits them, and (with a tokenizer) their token lengths."""
    mapped = ", ".join(f"{role} ← `{column}`" for role, column in preview.mapping.items())
    lines = [f"**{preview.name}**: {preview.rows} rows; {mapped}."]
    if preview.holdout_error:
        lines.append(f"**{_sentence(preview.holdout_error)}**")
    elif preview.holdout is not None:
        lines.append(preview.holdout.summary)
        if preview.holdout.warning:
            lines.append(f"**{_sentence(preview.holdout.warning)}**")
    if preview.stats is None:
        lines.append("Load a model to see the exact training text and token lengths.")
        return "\n\n".join(lines)
    s = preview.stats
    lines.append(
        f"Tokens per row: median {s.median:g}, 95th percentile {s.p95}, max {s.max}; "
        f"{s.trained_tokens:,} trained tokens in all."
    )
    lines.append(
        f"**{s.truncated} of {s.rows} rows are longer than {s.max_length} tokens and will be truncated**"
        if s.truncated
        else f"No row is longer than the max length ({s.max_length} tokens)."
    )
    if s.dropped:
        lines.append(f"**{s.dropped} rows are left out**: their prompt alone fills the max length.")
    return "\n\n".join(lines)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def length_histogram(lengths: list[int], max_length: int, bins: int = 8) -> list[dict]:
    """Rows per token-length bin up to max_length, plus one bin of the rows that will be truncated."""
    width = -(-max_length // bins)
    counts = [0] * (bins + 1)
    for length in lengths:
        counts[bins if length > max_length else min((max(length, 1) - 1) // width, bins - 1)] += 1
    labels = [f"{i * width + 1}–{min((i + 1) * width, max_length)}" for i in range(bins)] + [f"> {max_length}"]
    return [
        {"tokens": label, "rows": count, "fits": "truncated" if i == bins else "fits"}
        for i, (label, count) in enumerate(zip(labels, counts, strict=True))
    ]


# ---------------------------------------------------------------------------------------------------
# Training: curves, a progress line, a short log, and the runs to resume


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


def progress_html(fraction: float) -> str:
    """The progress bar (styled by the page's CSS: .progress-track, .progress-fill)."""
    percent = round(100 * fraction)
    return (f'<div class="progress-track" role="progressbar" aria-valuenow="{percent}" aria-valuemin="0" '
            f'aria-valuemax="100"><div class="progress-fill" style="width: {percent}%"></div></div>')


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


def resumable_choices(runs: list[RunSummary]) -> list[tuple[str, str]]:
    """The runs a Resume can go on with, as (description, name) choices."""
    return [(run.describe(), run.name) for run in runs if run.resumable]


def interrupted_note(interrupted: list[str]) -> str:
    """For runs the app was killed in the middle of: what happened, and what to do."""
    if not interrupted:
        return ""
    return (f"⚠ The app stopped while training {', '.join(interrupted)}: marked incomplete. Its folder keeps "
            "everything up to the last checkpoint; pick it above and press Resume to go on.")


# ---------------------------------------------------------------------------------------------------
# Evaluation: the figures side by side, one row per question, and one question in full

TITLES = {"base": "Base", "finetuned": "Fine-tuned"}
MODEL_WORDS = {"base": "base model", "finetuned": "fine-tuned model"}
MEASURES = [
    ("heldout_loss", "Held-out loss (reasoning + answer tokens)", "{:.3f}"),
    ("perplexity", "Perplexity", "{:.1f}"),
    ("format_adherence", "Format: closed reasoning, then an answer", "{:.0%}"),
    ("mcq_accuracy", "Multiple-choice accuracy", "{:.0%}"),
    ("mean_reasoning_tokens", "Mean reasoning length (tokens)", "{:.0f}"),
    ("mean_answer_tokens", "Mean answer length (tokens)", "{:.0f}"),
    ("mean_generation_s", "Generation time per question (s)", "{:.1f}"),
    ("n", "Questions", "{}"),
    ("decoder", "Written by", "{}"),
]
QUESTION_HEADERS = ["#", "Question", "Gold", *TITLES.values()]
"""The per-question table's headers before any evaluation (a report brings its own, `question_headers`)."""


def _present(by_model: dict) -> list[str]:
    """The models a report or its figures hold, base first."""
    return [name for name in TITLES if name in by_model]


def metrics_rows(metrics: dict[str, dict]) -> list[list[str]]:
    """[measure, base, fine-tuned] rows; a measure that does not apply (no options, no reference) shows "–"."""
    names = _present(metrics)
    rows = []
    for key, label, style in MEASURES:
        values = [metrics[name].get(key) for name in names]
        if all(value is None for value in values):
            continue
        rows.append([label, *("–" if value is None else style.format(value) for value in values)])
    return rows


def metrics_headers(metrics: dict[str, dict]) -> list[str]:
    return ["Measure", *(TITLES[name] for name in _present(metrics))]


def metrics_frame(metrics: dict | None) -> pd.DataFrame | None:
    """The base vs fine-tuned table of an evaluation's figures (a report's, or a run's from run.json)."""
    figures = {k: v for k, v in (metrics or {}).items() if k in TITLES}
    return pd.DataFrame(metrics_rows(figures), columns=metrics_headers(figures)) if figures else None


def eval_progress_line(progress: EvalProgress, opening: str = "Evaluating", what: str = "questions") -> str:
    """The one status line of a running evaluation, on the Evaluate tab and (opening "Trained step 10/10;
    evaluating", what "held-out questions") on the Train tab:

        Evaluating 3 questions: base model, held-out loss, 1/2 rows scored
        Evaluating 3 questions: fine-tuned model, answers 1/3, 212 tokens written, about 2 min left
    """
    what = what.removesuffix("s") if progress.questions == 1 else what
    parts = [MODEL_WORDS[progress.model]]
    if progress.phase == "loss":
        parts.append(f"held-out loss, {progress.done}/{progress.total} rows scored")
    else:
        parts.append(f"answers {progress.done}/{progress.total}")
        if progress.tokens:
            parts.append(f"{progress.tokens:,} tokens written")
    if progress.eta_s is not None:
        left = duration_words(progress.eta_s).lower()
        parts.append(f"{left.replace('about', 'at most', 1) if progress.eta_is_bound else left} left")
    return f"{opening} {progress.questions:,} {what}: {', '.join(parts)}"


def heldout_caption(figures: dict | None, real_rows_offered: bool) -> str:
    """Where the Train tab's held-out rows came from, and, for the bundled sample's, that they flatter."""
    source = (figures or {}).get("source")
    if not source:
        return ""
    line = f"Held out of this run: {source['rows']} rows of {source['dataset']}, never trained on."
    return " ".join(filter(None, [line, flattery_note(source["dataset"], real_rows_offered)]))


def flattery_note(dataset: str, real_rows_offered: bool) -> str:
    """For rows of the bundled sample, a plain warning that their figures flatter a model trained on it."""
    if dataset != SAMPLE_FILE.name:
        return ""
    where = ("the Evaluate tab's real medical-o1 rows say what it learned" if real_rows_offered
             else "real medical-o1 rows (an upload in the Evaluate tab) would say what it learned")
    return (f"These rows come from the bundled sample the model trained on, so they share its shape and flatter "
            f"the fine-tuned model; {where}.")


def _verdict(result: ItemResult | None) -> str:
    if result is None:
        return ""
    if result.correct is None:
        return "format ✓" if result.format_ok else "format ✗"
    return f"{result.choice or '?'} {'✓' if result.correct else '✗'}"


def question_rows(report: EvalReport) -> list[list]:
    """[#, question, gold, base verdict, fine-tuned verdict] per question."""
    names = _present(report.items)
    if not names:
        return []
    rows = []
    for position, first in enumerate(report.items[names[0]]):
        question = first.question if len(first.question) <= 120 else first.question[:117] + "…"
        verdicts = [_verdict(report.items[n][position] if position < len(report.items[n]) else None) for n in names]
        rows.append([position + 1, question, first.gold or "", *verdicts])
    return rows


def question_headers(report: EvalReport) -> list[str]:
    return ["#", "Question", "Gold", *(TITLES[name] for name in _present(report.items))]


def question_widths(columns: int) -> list[str]:
    """Per-question table: "#" and "Gold" get room for their header, the question the most, each model the rest."""
    models = columns - 3
    return ["7%", f"{100 - 7 - 10 - 16 * models}%", "10%", *["16%"] * models]


def question_detail(report: EvalReport, number: int) -> str:
    """Markdown for question `number` (1-based): the question, the gold answer, each model's reasoning and answer."""
    names = _present(report.items)
    if not names or not 1 <= number <= len(report.items[names[0]]):
        return "Run an evaluation, then pick a question number."
    first = report.items[names[0]][number - 1]
    parts = [f"**Question {number}.** {first.question}"]
    if first.gold:
        parts.append(f"**Gold answer:** {first.gold}")
    for name in names:
        result = report.items[name][number - 1] if number - 1 < len(report.items[name]) else None
        if result is None:
            continue
        verdict = "" if result.correct is None else (" ✓ correct" if result.correct else " ✗ wrong")
        chose = f" · chose **{result.choice}**" if result.choice else (" · no letter found" if result.gold else "")
        parts.append(
            f"### {TITLES[name]}{verdict}{chose}\n"
            f"<details><summary>Reasoning ({result.reasoning_tokens} tokens)</summary>\n\n"
            f"{result.reasoning or '(none)'}\n\n</details>\n\n"
            f"**Answer ({result.answer_tokens} tokens):** {result.answer or '(no answer after the reasoning)'}"
        )
    return "\n\n".join(parts)


def published_markdown() -> str:
    """The published HuatuoGPT-o1 figures, labelled as context rather than as our measurements."""
    head = "| Model | " + " | ".join(PUBLISHED["columns"]) + " |\n" + "|---" * (len(PUBLISHED["columns"]) + 1) + "|"
    rows = "\n".join(f"| {model} | " + " | ".join(f"{v:.1f}" for v in values) + " |"
                     for model, values in PUBLISHED["rows"].items())
    return (f"**For context, not measured here:** accuracy (%) on full medical benchmarks, as published in the "
            f"{PUBLISHED['source'].split(';')[0]}. A small model on a few bundled questions is not comparable.\n\n"
            f"{head}\n{rows}")
