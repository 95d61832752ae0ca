"""What a person comparing base and fine-tuned sees: the figures side by side, one row per question,
and one question in full. Pure functions of an evaluation report (or its JSON form, from run.json).
"""

from __future__ import annotations

from finetune.data.sources import SAMPLE_FILE
from finetune.evaluate.estimate import duration_words
from finetune.evaluate.heldout import PUBLISHED, EvalProgress, EvalReport, ItemResult

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
]


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
