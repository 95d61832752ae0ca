"""What fine-tuning changed, measured on rows the model never trained on: base vs fine-tuned.

    items = load_eval_items("../shared/data/medical_o1_sample.jsonl", limit=20)
    report = evaluate(loaded, items, EvalSettings(), on_update=lambda p: print(eval_progress_line(p)))  # ui.presenters
    report.metrics["base"]["format_adherence"], report.metrics["finetuned"]["mcq_accuracy"]

Measures, for the model with its adapter off ("base") and on ("finetuned"):
- held-out loss and perplexity on the reasoning and answer tokens (rows that have both);
- format adherence: the share of generations with a closed reasoning block and a non-empty answer;
- multiple-choice accuracy, the HuatuoGPT-o1 way: the question and its lettered options in one
  prompt, free generation, then the chosen letter read from the answer (never the reasoning);
- mean reasoning and answer length in tokens, and generation time.

Generation samples as DeepSeek advises for R1 models (temperature 0.6, top-p 0.95) from a fixed
seed, so a run repeats exactly and base and fine-tuned see the same random numbers.

While it runs, `evaluate` reports an `EvalProgress` (the phase under way, answers done, tokens written
within the batch being generated, time left from the rates measured so far) a few times a second;
`ui.presenters.eval_progress_line` says it in words for the Train and Evaluate tabs.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from finetune.bounds import SEED_MAX, check_ranges, ranged
from finetune.config import ADAPTER_ON, EVAL_MAX_NEW_TOKENS, MAX_LENGTH_RANGE, Side
from finetune.data.prompts import (
    IGNORE_INDEX,
    build_prompt,
    effective_template,
    prompt_opens_reasoning,
    reasoning_tags,
    tokenize_examples,
)
from finetune.data.sources import (
    READ_LIMITS,
    DatasetError,
    EvalItem,
    Example,
    ReadLimits,
    eval_items,
    read_source,
    resolve_columns,
    to_examples,
)
from finetune.data.think import split_think
from finetune.generate.fast_decode import Sampling, decoder_for
from finetune.generate.reply import GENERATE, StopOnEvent, check_room
from finetune.models.adapters import adapter_switched
from finetune.models.load import LoadedModel

MODELS = ADAPTER_ON
"""Name in the report -> whether the LoRA adapter is on."""
ModelName = Side
EvalPhase = Literal["loss", "answers"]
"""What an evaluation is doing: scoring the reference answers (held-out loss), or writing answers."""
PROGRESS_EVERY_S = 0.25
"""The least time between two progress reports within a phase (a report per token would be noise)."""
MIN_STEPS_FOR_ETA = 4
"""Generation steps measured before a time left is said: the first step also encodes the prompts."""
PUBLISHED = {
    "source": "HuatuoGPT-o1 paper (Chen et al., 2024); published figures, not measured here",
    "columns": ["MedQA", "MedMCQA", "PubMedQA"],
    "rows": {
        "HuatuoGPT-o1-8B": [72.6, 60.4, 79.2],
        "Llama-3.1-8B-Instruct": [58.7, 56.0, 75.2],
    },
}


@dataclass
class EvalSettings:
    limit: int | None = ranged(None, 1, 100_000, optional=True)
    """Evaluate at most this many items (the first ones); None: all."""
    max_new_tokens: int = ranged(EVAL_MAX_NEW_TOKENS["cuda"], 1, 131_072)
    """Per answer: room for an R1 model's reasoning and its answer (`for_device` on CPU: a demo's)."""
    batch_size: int = ranged(8, 1, 256)
    """Questions generated together."""
    temperature: float = ranged(0.6, 0.0, 2.0, whole=False)
    """DeepSeek's advice for R1 models (0.6, top-p 0.95): greedy decoding makes small models loop and never
    close their reasoning. 0: greedy. With `seed` fixed, a run repeats exactly."""
    top_p: float = ranged(0.95, 0.05, 1.0, whole=False)
    seed: int = ranged(0, 0, SEED_MAX)
    template: str = "chat"
    """The template the adapter was trained with (see `finetune.runs.read_run_template`)."""
    system_prompt: str = ""
    max_length: int = ranged(2048, *MAX_LENGTH_RANGE)
    """Rows are cut to this many tokens for the held-out loss, as in training."""
    generate: bool = True
    """False: held-out loss only (seconds instead of minutes on a CPU)."""
    fast: bool = True
    """Write the answers with the fast decoder, a batch at a time (`finetune.generate.fast_decode`), where the
    model allows and it fits; False: transformers' generate on the loaded model."""

    def __post_init__(self) -> None:
        check_ranges(self)

    @classmethod
    def for_device(cls, device: str, **overrides) -> EvalSettings:
        """The defaults with the device's answer length (`finetune.config.EVAL_MAX_NEW_TOKENS`)."""
        return cls(**{"max_new_tokens": EVAL_MAX_NEW_TOKENS["cuda" if device == "cuda" else "cpu"], **overrides})


@dataclass
class ItemResult:
    index: int
    question: str
    gold: str | None
    reasoning: str
    answer: str
    format_ok: bool
    choice: str | None
    correct: bool | None
    reasoning_tokens: int
    answer_tokens: int
    seconds: float


@dataclass(frozen=True)
class EvalProgress:
    """Where a running evaluation is, for a status line (`ui.presenters.eval_progress_line`)."""

    phase: EvalPhase
    model: ModelName
    questions: int
    """Items in this evaluation."""
    done: int
    """Loss: rows scored so far; answers: questions this model has answered."""
    total: int
    """Loss: rows with a reference answer; answers: `questions`."""
    batch_tokens: int = 0
    """Tokens written so far in the batch of answers being generated (every question of it together)."""
    tokens: int = 0
    """Tokens this model has written in all its answers so far, the batch under way included."""
    elapsed_s: float = 0.0
    """Since the evaluation began."""
    eta_s: float | None = None
    """Seconds left for the whole evaluation at the rates measured in it; None until there is a measurement."""
    eta_is_bound: bool = False
    """The time left counts answers still to come at their token limit (no batch has finished yet to say
    how long answers run): it is then the most it takes, not a likely figure."""


@dataclass
class EvalReport:
    metrics: dict[str, dict] = field(default_factory=dict)
    """{"base": {...}, "finetuned": {...}}: see `summarize`."""
    items: dict[str, list[ItemResult]] = field(default_factory=dict)
    stopped: bool = False

    def as_dict(self) -> dict:
        return {**self.metrics, "stopped": self.stopped}


# ---------------------------------------------------------------------------------------------
# Items


def load_eval_items(source: str, columns: dict[str, str] | None = None, limit: int | None = None,
                    limits: ReadLimits = READ_LIMITS) -> list[EvalItem]:
    """Read evaluation items from a preset or a file (see `finetune.data.sources.eval_items`), within `limits`."""
    raw = read_source(source, limits=limits)
    rows = raw.rows[:limit] if limit else raw.rows
    mapping = resolve_columns(raw.columns, columns or {}, raw.name, need_answer="options" not in raw.columns)
    items = eval_items(rows, to_examples(rows, mapping, raw.name, strict=False), raw.name)
    if not items:
        raise DatasetError(f"{raw.name}: no rows to evaluate")
    return items


# ---------------------------------------------------------------------------------------------
# Reading the chosen letter

_ANSWER_IS = re.compile(
    r"(?:answer|option|choice)\s*(?:is|would be|:)?\s*[:\-]?\s*(?:option\s*)?([\(\[]?)([A-Za-z])([\)\]]?)(?![\w'])",
    re.IGNORECASE,
)
_LEADING_LETTER = re.compile(r"^\W{0,3}([A-Z])(?:\s*[\.\):\]]|\s*$|\s+-\s)")


def _ends_phrase(text: str, end: int) -> bool:
    rest = text[end:].lstrip(" ")
    return not rest or rest[0] in ".,;:!\n"


def extract_choice(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an answer chose, or None when it cannot be told (counted as wrong).

    Reads, in this order: "the answer is C" / "Answer: (C)" / "option C" (the last such phrase
    wins); an answer that starts with the letter ("C.", "(C)", "C) ..."); the text of exactly one
    option (the longest, when one option's text holds another's).
    """
    text = answer.replace("**", "").replace("*", "").strip()
    if not text:
        return None
    # A lowercase letter counts only in brackets or at the end of a phrase: "the answer is a ..." is an article.
    phrases = [m.group(2).upper() for m in _ANSWER_IS.finditer(text)
               if m.group(2).isupper() or m.group(1) or m.group(3) or _ends_phrase(text, m.end())]
    phrases = [letter for letter in phrases if letter in options]
    if phrases:
        return phrases[-1]
    leading = _LEADING_LETTER.match(text)
    if leading and leading.group(1) in options:
        return leading.group(1)
    lowered = text.lower()
    named = [letter for letter, option in options.items() if option and option.lower() in lowered]
    if len(named) == 1:
        return named[0]
    if named:
        longest = max(named, key=lambda letter: len(options[letter]))
        if all(options[other].lower() in options[longest].lower() for other in named):
            return longest
    return None


# ---------------------------------------------------------------------------------------------
# Measuring


def held_out_loss(loaded: LoadedModel, items: Sequence[EvalItem], settings: EvalSettings,
                  use_adapter: bool, on_row: Callable[[int, int], None] | None = None) -> tuple[float | None, int]:
    """Mean loss per trained token (reasoning and answer) over the items that have a reference answer;
    `on_row(done, total)` after each row."""
    examples = [Example(i.question, i.reasoning, i.answer) for i in items if i.has_reference]
    if not examples:
        return None, 0
    data = tokenize_examples(loaded.tokenizer, examples, settings.template, settings.max_length, settings.system_prompt)
    total, count = 0.0, 0
    model = loaded.model
    with loaded.lock, adapter_switched(loaded, use_adapter), torch.inference_mode():
        model.eval()
        device = next(model.parameters()).device
        for done, row in enumerate(data.rows, start=1):
            ids = torch.tensor([row.input_ids], device=device)
            labels = torch.tensor([row.labels], device=device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            targets = labels[0, 1:]
            losses = torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
            total += float(losses)
            count += int((targets != IGNORE_INDEX).sum())
            if on_row is not None:
                on_row(done, len(data.rows))
    return (total / count if count else None), count


def generate_answers(
    loaded: LoadedModel,
    items: Sequence[EvalItem],
    settings: EvalSettings,
    use_adapter: bool,
    stop: threading.Event | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    decoders: list[str] | None = None,
) -> list[ItemResult]:
    """Answers to the items, a batch at a time; `on_batch(done)` after each batch, and
    `on_step(steps, tokens)` after each token step of a batch: steps so far, and tokens written so far
    by the batch's questions that have not yet ended. `decoders` gets the decoding path of each batch."""
    tokenizer = loaded.tokenizer
    template = effective_template(settings.template, tokenizer)
    open_tag, close_tag = reasoning_tags(template)
    results: list[ItemResult] = []
    decoders = [] if decoders is None else decoders
    rows = min(settings.batch_size, len(items))  # the fast decoder's batch: a last, smaller batch reuses it
    for start in range(0, len(items), settings.batch_size):
        if stop is not None and stop.is_set():
            break
        batch = items[start : start + settings.batch_size]
        prompts = [build_prompt(tokenizer, item.prompt_question, template, settings.system_prompt) for item in batch]
        began = time.perf_counter()
        with loaded.lock, adapter_switched(loaded, use_adapter), torch.inference_mode():
            torch.manual_seed(settings.seed + start)
            texts, decoder = _generate_batch(loaded, prompts, settings, use_adapter, rows, stop, on_step)
            decoders.append(decoder)
        seconds = (time.perf_counter() - began) / len(batch)
        for offset, (item, prompt, text) in enumerate(zip(batch, prompts, texts, strict=True)):
            opened = prompt_opens_reasoning(prompt, template)
            split = split_think(text, opened=opened, open_tag=open_tag, close_tag=close_tag)
            has_block = opened or text.lstrip().startswith(open_tag)
            choice = extract_choice(split.answer, item.options) if item.options and split.closed else None
            results.append(ItemResult(
                index=start + offset,
                question=item.question,
                gold=item.gold,
                reasoning=split.thinking,
                answer=split.answer if split.closed else "",
                format_ok=has_block and split.closed and bool(split.answer),
                choice=choice,
                correct=(choice == item.gold) if item.options else None,
                reasoning_tokens=_count_tokens(tokenizer, split.thinking),
                answer_tokens=_count_tokens(tokenizer, split.answer if split.closed else ""),
                seconds=round(seconds, 2),
            ))
        if on_batch is not None:
            on_batch(len(results))
    return results


def _generate_batch(loaded: LoadedModel, prompts: list[str], settings: EvalSettings, use_adapter: bool,
                    rows: int, stop: threading.Event | None,
                    on_step: Callable[[int, int], None] | None = None) -> tuple[list[str], str]:
    """The answers to one batch of prompts, and which decoding path wrote them (the fast decoder: one of
    `rows` rows, when the model allows and it fits)."""
    from transformers import StoppingCriteriaList  # heavy: this module is imported at the app's start

    tokenizer = loaded.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # new tokens follow every prompt directly
    try:
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    check_room(loaded, inputs["input_ids"].shape[1], settings.max_new_tokens)
    decoder = None
    if settings.fast:
        tokens_needed = inputs["input_ids"].shape[1] + settings.max_new_tokens
        decoder = decoder_for(loaded, use_adapter, tokens_needed, batch=rows)
    if decoder is not None:
        # Each prompt without its left padding: the fast decoder reads each prompt on its own.
        unpadded = [ids[mask.bool()] for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True)]
        sampling = Sampling(settings.temperature, settings.top_p)
        answers = decoder.generate_batch(unpadded, settings.max_new_tokens, sampling, set(_end_ids(loaded)),
                                         stop, on_step)
        texts = tokenizer.batch_decode(answers, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return texts, decoder.description
    inputs = inputs.to(next(loaded.model.parameters()).device)
    criteria = StoppingCriteriaList([StopOnEvent(stop)] if stop is not None else [])
    if on_step is not None:
        criteria.append(_CountTokens(inputs["input_ids"].shape[1], _end_ids(loaded), on_step))
    sampling = settings.temperature > 0
    output = loaded.model.generate(**inputs, max_new_tokens=settings.max_new_tokens, do_sample=sampling,
                                   temperature=settings.temperature if sampling else None,
                                   top_p=settings.top_p if sampling else None,
                                   pad_token_id=tokenizer.pad_token_id, stopping_criteria=criteria or None)
    new = output[:, inputs["input_ids"].shape[1]:]
    # No clean-up: it is for WordPiece tokenizers, and a BPE one ignores it with a warning in the log.
    return tokenizer.batch_decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False), GENERATE


def _end_ids(loaded: LoadedModel) -> list[int]:
    """The tokens that end an answer (generate pads a finished answer with the pad token afterwards)."""
    ends = getattr(loaded.model.generation_config, "eos_token_id", None)
    if ends is None:
        ends = loaded.tokenizer.eos_token_id
    return [ends] if isinstance(ends, int) else list(ends or [])


class _CountTokens:
    """A stopping criterion that stops nothing: generate calls it after every token step, so it counts the
    tokens written so far (an answer's end token counted, the padding after it not) for progress."""

    def __init__(self, prompt_length: int, end_ids: list[int], on_step: Callable[[int, int], None]):
        self.prompt_length = prompt_length
        self.end_ids = end_ids
        self.on_step = on_step
        self.tokens = 0
        self.ended = None

    def __call__(self, input_ids, scores, **kwargs):
        if self.ended is None:
            self.ended = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        self.tokens += int((~self.ended).sum())
        if self.end_ids:
            self.ended |= torch.isin(input_ids[:, -1], torch.tensor(self.end_ids, device=input_ids.device))
        self.on_step(input_ids.shape[1] - self.prompt_length, self.tokens)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0


def summarize(results: Sequence[ItemResult], loss: float | None, loss_tokens: int,
              decoders: Sequence[str] = ()) -> dict:
    """The figures of one model: held-out loss and perplexity, format adherence, MCQ accuracy, lengths, time,
    and the decoding path(s) that wrote the answers."""
    n = len(results)
    graded = [r for r in results if r.correct is not None]

    def mean(values) -> float | None:
        values = list(values)
        return round(sum(values) / len(values), 1) if values else None

    return {
        "heldout_loss": round(loss, 4) if loss is not None else None,
        "perplexity": round(math.exp(loss), 2) if loss is not None else None,
        "loss_tokens": loss_tokens,
        "format_adherence": round(sum(r.format_ok for r in results) / n, 3) if n else None,
        "mcq_accuracy": round(sum(bool(r.correct) for r in graded) / len(graded), 3) if graded else None,
        "mcq_answered": sum(r.choice is not None for r in graded),
        "n": n,
        "mcq_n": len(graded),
        "mean_reasoning_tokens": mean(r.reasoning_tokens for r in results),
        "mean_answer_tokens": mean(r.answer_tokens for r in results),
        "mean_generation_s": mean(r.seconds for r in results) if n else None,
        "decoder": "; ".join(dict.fromkeys(decoders)) or None,
    }


def evaluate(
    loaded: LoadedModel,
    items: Sequence[EvalItem],
    settings: EvalSettings,
    models: Sequence[str] | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    on_update: Callable[[EvalProgress], None] | None = None,
) -> EvalReport:
    """Measure base and (when the model has an adapter) fine-tuned on the same items.

    `on_update(progress)` when a phase begins, a few times a second within it (tokens written within a
    batch of answers) and when a batch ends; `on_progress(model, done, total)` after each batch of
    answers. A phase that does not apply (no reference answers: no held-out loss) is never reported.
    `stop` ends it early, and the report says so (its figures then cover what was done).
    """
    if models is None:
        models = ["base", "finetuned"] if loaded.has_adapter else ["base"]
    items = list(items)[: settings.limit] if settings.limit else list(items)
    tracker = _ProgressTracker(items, list(models), settings, on_update)
    report = EvalReport()
    for name in models:
        if stop is not None and stop.is_set():
            break
        use_adapter = MODELS[name]
        loss, loss_tokens = None, 0
        if tracker.loss_rows:
            tracker.begin(name, "loss")
            loss, loss_tokens = held_out_loss(loaded, items, settings, use_adapter, on_row=tracker.row_scored)
        results, decoders = [], []
        if settings.generate:
            def batch_done(done: int, name=name) -> None:
                tracker.batch_done(done)
                if on_progress is not None:
                    on_progress(name, done, len(items))

            tracker.begin(name, "answers")
            results = generate_answers(loaded, items, settings, use_adapter, stop, batch_done, tracker.step,
                                       decoders)
        tracker.model_done()
        report.metrics[name] = summarize(results, loss, loss_tokens, decoders)
        report.items[name] = results
    report.stopped = bool(stop is not None and stop.is_set())
    return report


class _ProgressTracker:
    """Turns the phases, rows, batches and token steps of one `evaluate` into `EvalProgress` reports, and
    reckons the time left from what this evaluation has measured: seconds per scored row, seconds per
    generation step, and steps per finished batch (a batch runs until its longest answer ends)."""

    def __init__(self, items: list[EvalItem], models: list[str], settings: EvalSettings,
                 report: Callable[[EvalProgress], None] | None):
        self.report_to = report
        self.questions = len(items)
        # What held_out_loss scores: its rows are the items with a reference answer.
        self.loss_rows = sum(item.has_reference for item in items)
        self.models = models
        self.settings = settings
        self.batches = math.ceil(self.questions / settings.batch_size) if settings.generate else 0
        self.began = time.perf_counter()
        self.model: str = models[0] if models else "base"
        self.phase: EvalPhase = "loss"
        self.phase_began = self.began
        self.models_done = 0
        self.done = 0
        self.total = 0
        self.loss_seconds, self.rows_scored = 0.0, 0
        self.answer_seconds, self.steps_finished = 0.0, 0
        self.batch_steps: list[int] = []
        """Steps each finished batch took."""
        self.model_batches = 0
        """Batches this model has finished."""
        self.steps, self.batch_tokens, self.tokens = 0, 0, 0
        self.tokens_finished = 0
        """This model's tokens in its finished batches."""
        self.last_report = 0.0

    # Events -------------------------------------------------------------------------------------

    def begin(self, model: str, phase: EvalPhase) -> None:
        self.model, self.phase, self.phase_began = model, phase, time.perf_counter()
        self.done, self.total = 0, self.loss_rows if phase == "loss" else self.questions
        self.steps = self.batch_tokens = 0
        if phase == "answers":
            self.tokens = self.tokens_finished = self.model_batches = 0
        self._report(force=True)

    def row_scored(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if done == total:
            self._end_phase()
        self._report(force=done == total)

    def step(self, steps: int, batch_tokens: int) -> None:
        self.steps, self.batch_tokens = steps, batch_tokens
        self.tokens = self.tokens_finished + batch_tokens
        self._report()

    def batch_done(self, done: int) -> None:
        self.batch_steps.append(self.steps)
        self.model_batches += 1
        self.steps_finished += self.steps
        self.tokens_finished = self.tokens
        self.done, self.steps, self.batch_tokens = done, 0, 0
        self._report(force=True)

    def model_done(self) -> None:
        if self.phase == "answers":
            self._end_phase()
        self.models_done += 1

    def _end_phase(self) -> None:
        seconds = time.perf_counter() - self.phase_began
        if self.phase == "loss":
            self.loss_seconds, self.rows_scored = self.loss_seconds + seconds, self.rows_scored + self.total
        else:
            self.answer_seconds += seconds
        self.phase_began = time.perf_counter()  # counted once, whatever comes next

    # Reports -------------------------------------------------------------------------------------

    def _report(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.report_to is None or (not force and now - self.last_report < PROGRESS_EVERY_S):
            return
        self.last_report = now
        eta, bound = self._time_left(now)
        self.report_to(EvalProgress(
            phase=self.phase, model=self.model, questions=self.questions, done=self.done, total=self.total,
            batch_tokens=self.batch_tokens if self.phase == "answers" else 0,
            tokens=self.tokens if self.phase == "answers" else 0,
            elapsed_s=round(now - self.began, 1), eta_s=None if eta is None else round(eta, 1),
            eta_is_bound=bound,
        ))

    def _time_left(self, now: float) -> tuple[float | None, bool]:
        """Seconds left and whether they are a bound, or (None, False) while a rate it needs is unmeasured."""
        in_phase = now - self.phase_began
        models_left = len(self.models) - self.models_done  # this one included
        rows, loss_seconds = self.rows_scored, self.loss_seconds
        steps, generating = self.steps_finished, self.answer_seconds
        batches_left = self.batches * models_left  # the batch under way included
        if self.phase == "loss":
            rows_left = self.loss_rows * models_left - self.done
            rows, loss_seconds = rows + self.done, loss_seconds + in_phase
        else:
            rows_left = self.loss_rows * (models_left - 1)
            batches_left -= self.model_batches
            steps, generating = steps + self.steps, generating + in_phase
        left = 0.0
        if rows_left:
            if not rows:
                return None, False
            left += rows_left * loss_seconds / rows
        if not batches_left:
            return left, False
        if steps < MIN_STEPS_FOR_ETA:
            return None, False
        per_step = generating / steps
        limit = self.settings.max_new_tokens
        if self.batch_steps:  # answers end before their limit: count the batches to come at the length measured
            expected = min(sum(self.batch_steps) / len(self.batch_steps), limit)
            return left + (max(expected - self.steps, 0) + (batches_left - 1) * expected) * per_step, False
        return left + ((limit - self.steps) + (batches_left - 1) * limit) * per_step, True


def save_items(items: Sequence[EvalItem], path) -> None:
    """Write items as JSON Lines in the medical-o1 shape, which `load_eval_items` reads back."""
    lines = []
    for item in items:
        row = {"Question": item.question, "Complex_CoT": item.reasoning, "Response": item.answer}
        if item.options:
            row |= {"options": item.options, "answer_idx": item.gold}
        lines.append(json.dumps(row, ensure_ascii=False))
    Path(path).write_text("\n".join(lines) + "\n")


def item_rows(report: EvalReport) -> list[dict]:
    """One row per question for a drill-down: gold, and each model's reasoning, answer and verdict."""
    names = list(report.items)
    if not names:
        return []
    rows = []
    for position, first in enumerate(report.items[names[0]]):
        row = {"index": first.index, "question": first.question, "gold": first.gold}
        for name in names:
            if position < len(report.items[name]):
                row[name] = asdict(report.items[name][position])
        rows.append(row)
    return rows


def eval_line(metrics: dict[str, dict]) -> str:
    """One line for the Train tab: held-out loss and format, base → fine-tuned."""
    base, fine_tuned = metrics.get("base", {}), metrics.get("finetuned", {})
    parts = []
    if base.get("heldout_loss") is not None and fine_tuned.get("heldout_loss") is not None:
        change = (fine_tuned["heldout_loss"] - base["heldout_loss"]) / base["heldout_loss"]
        parts.append(f"held-out loss {base['heldout_loss']:.3f} → {fine_tuned['heldout_loss']:.3f} ({change:+.0%})")
    for key, label in (("format_adherence", "format"), ("mcq_accuracy", "multiple-choice accuracy")):
        if base.get(key) is not None and fine_tuned.get(key) is not None:
            parts.append(f"{label} {base[key]:.0%} → {fine_tuned[key]:.0%}")
    return " · ".join(parts)
