"""Examples to training text: the prompt the model will see at inference, and the part it learns.

Three templates (finetune.config.TEMPLATES):
- 'chat': the model's own chat template. The assistant turn is "<think>\\n{cot}\\n</think>\\n\\n{answer}".
  R1-distill templates already end the prompt with "<think>\\n"; then the completion starts inside
  the block. (We never render the assistant turn through the template: R1 templates cut everything
  before </think> out of assistant messages, which would drop the reasoning we want to train.)
- 'plain': the seeds' "### Role / ### Question / ### Thinking Process / ### Clinical Assessment", with
  their medical role; 'plain-neutral': the same layout in a neutral voice ("### Reasoning / ### Answer"),
  for data that is not medical. PLAIN_TEMPLATES holds the words of each; `suggested_template` picks one.

Prompt and completion are tokenized separately, exactly as inference tokenizes the prompt, and the
prompt tokens get label -100 so only the reasoning and answer are trained.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from finetune.config import DataSettings
from finetune.data.sources import (
    MEDICAL_O1,
    SAMPLE_FILE,
    EvalItem,
    Example,
    HoldoutPlan,
    LoadedRows,
    RawRows,
    eval_items,
    holdout_indices,
    holdout_plan,
    load_examples,
)
from finetune.data.think import THINK_CLOSE, THINK_OPEN

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PlainTemplate:
    """The words of one ### template: the default role and the headers before question, reasoning, answer."""

    role: str
    question: str
    reasoning: str
    """Opens the reasoning: the prompt ends with it, as an R1 chat prompt ends with <think>."""
    answer: str
    """Closes the reasoning and opens the answer."""


PLAIN_TEMPLATES = {
    "plain": PlainTemplate(  # the seeds' text, byte for byte: runs trained on it prompt and split the same
        role="You are a medical expert with advanced knowledge in clinical reasoning, diagnostics, and treatment "
        "planning. Think through the question step by step, then give your clinical assessment.",
        question="### Question:",
        reasoning="### Thinking Process:",
        answer="### Clinical Assessment:",
    ),
    "plain-neutral": PlainTemplate(
        role="You are an expert. Think through the question step by step, then give your answer.",
        question="### Question:",
        reasoning="### Reasoning:",
        answer="### Answer:",
    ),
}
"""Each ### template (a value of finetune.config.TEMPLATES) and its words."""
PLAIN_ROLE = PLAIN_TEMPLATES["plain"].role
PLAIN_OPEN = PLAIN_TEMPLATES["plain"].reasoning
PLAIN_CLOSE = PLAIN_TEMPLATES["plain"].answer
_SENTINEL = "\u2063SENTINEL\u2063"


def is_plain_template(template: str) -> bool:
    """A ### template ('plain', 'plain-neutral') rather than the model's chat template."""
    return template in PLAIN_TEMPLATES


def reasoning_tags(template: str) -> tuple[str, str]:
    """The markers around the reasoning in a model's output, for the given training template."""
    words = PLAIN_TEMPLATES.get(template)
    return (words.reasoning, words.answer) if words else (THINK_OPEN, THINK_CLOSE)


def effective_template(template: str, tokenizer) -> str:
    """'chat' needs a chat template; a base model without one falls back to the seeds' ### template."""
    return template if is_plain_template(template) or getattr(tokenizer, "chat_template", None) else "plain"


_CLINICAL = re.compile(r"\b(patients?|diagnos\w*|clinical|symptoms?|diseases?|\d+-year-old)\b", re.IGNORECASE)
"""Words of clinical text, not of others ("treatment" is not one: wafers and water get heat treatment too)."""


def reads_medical(raw: RawRows | LoadedRows, rows: int = 20) -> bool:
    """Whether a dataset is medical, cheaply: the bundled sample and medical-o1 are; any other is when at least
    half of its first `rows` rows use a clinical word (patient, diagnosis, symptom, 45-year-old...)."""
    if raw.name == SAMPLE_FILE.name or raw.name.startswith(MEDICAL_O1):
        return True
    first = raw.rows[:rows]
    clinical = sum(bool(_CLINICAL.search(" ".join(map(str, row.values())))) for row in first)
    return bool(first) and 2 * clinical >= len(first)


def suggested_template(raw: RawRows | LoadedRows, current: str = "plain") -> str:
    """The template to offer once a dataset is read: the chat template stays; a ### template takes the
    dataset's voice, 'plain' (medical) for medical data, 'plain-neutral' for any other."""
    if not is_plain_template(current):
        return current
    return "plain" if reads_medical(raw) else "plain-neutral"


def build_prompt(
    tokenizer, question: str, template: str = "chat", system_prompt: str = "", history: Sequence[tuple[str, str]] = ()
) -> str:
    """The prompt text, identical for training and inference.

    `history` holds earlier (question, answer) turns of a chat. Answers only: like DeepSeek's own
    chat, earlier reasoning is not fed back.
    """
    template = effective_template(template, tokenizer)
    if is_plain_template(template):
        words = PLAIN_TEMPLATES[template]
        role = system_prompt or words.role
        turns = "".join(f"{words.question}\n{q}\n\n{words.answer}\n{a}\n\n" for q, a in history)
        return f"### Role:\n{role}\n\n{turns}{words.question}\n{question}\n\n{words.reasoning}\n"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for earlier_question, earlier_answer in history:
        messages.append({"role": "user", "content": earlier_question})
        messages.append({"role": "assistant", "content": earlier_answer})
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_opens_reasoning(prompt: str, template: str) -> bool:
    """True when the prompt itself ends inside the reasoning block (R1 templates, plain template)."""
    open_tag, _ = reasoning_tags(template)
    return prompt.rstrip().endswith(open_tag)


def end_of_turn(tokenizer, template: str) -> str:
    """What the template writes after an assistant message (e.g. '<|im_end|>'); the model must learn it."""
    if is_plain_template(effective_template(template, tokenizer)):
        return tokenizer.eos_token or ""
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    tail = rendered.split(_SENTINEL, 1)[1].rstrip("\n") if _SENTINEL in rendered else ""
    return tail or (tokenizer.eos_token or "")


def build_completion(example: Example, prompt: str, template: str, eot: str) -> str:
    """The trained text: reasoning block (if any), answer, end of turn. `template` is the effective one."""
    open_tag, close_tag = reasoning_tags(template)
    opened = prompt_opens_reasoning(prompt, template)
    if not example.reasoning:
        # No reasoning to teach: an empty block keeps the output shape that the prompt started.
        block = f"{close_tag}\n\n" if opened else ""
        return f"{block}{example.answer}{eot}"
    head = "" if opened else f"{open_tag}\n"
    return f"{head}{example.reasoning}\n{close_tag}\n\n{example.answer}{eot}"


@dataclass
class TokenizedRow:
    input_ids: list[int]
    labels: list[int]
    prompt: str
    completion: str
    full_length: int
    """Tokens before truncation."""

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


def tokenize_example(
    tokenizer, example: Example, template: str, max_length: int, system_prompt: str = "", eot: str | None = None
) -> TokenizedRow:
    template = effective_template(template, tokenizer)
    prompt = build_prompt(tokenizer, example.question, template, system_prompt)
    eot = end_of_turn(tokenizer, template) if eot is None else eot
    completion = build_completion(example, prompt, template, eot)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + completion_ids)[:max_length]
    return TokenizedRow(input_ids, labels, prompt, completion, len(prompt_ids) + len(completion_ids))


@dataclass
class LengthStats:
    rows: int
    min: int
    mean: float
    median: float
    p95: int
    max: int
    truncated: int
    """Rows longer than max_length: cut to max_length, still trained."""
    dropped: int
    """Rows whose prompt alone fills max_length: nothing left to learn, left out."""
    trained_tokens: int
    max_length: int


@dataclass
class PreparedDataset:
    """Everything a run trains on, plus what the preview shows about it."""

    name: str
    template: str
    rows: list[TokenizedRow]
    stats: LengthStats
    lengths: list[int] = field(repr=False)
    columns: dict[str, str] = field(default_factory=dict)
    heldout: list[EvalItem] = field(default_factory=list)
    """Rows kept out of training, for the evaluation at the end of the run."""
    holdout: HoldoutPlan | None = None
    """How the rows were split (held out, left to train, any warning); None for rows tokenized as they are."""

    def to_hf_dataset(self):
        from datasets import Dataset  # heavy (pyarrow): only when a run starts

        return Dataset.from_dict(
            {"input_ids": [row.input_ids for row in self.rows], "labels": [row.labels for row in self.rows]}
        )


def tokenize_examples(
    tokenizer, examples: list[Example], template: str, max_length: int, system_prompt: str = "", name: str = ""
) -> PreparedDataset:
    template = effective_template(template, tokenizer)
    eot = end_of_turn(tokenizer, template)
    tokenized = [tokenize_example(tokenizer, ex, template, max_length, system_prompt, eot) for ex in examples]
    kept = [row for row in tokenized if any(label != IGNORE_INDEX for label in row.labels)]
    lengths = [row.full_length for row in tokenized]
    ordered = sorted(lengths)
    stats = LengthStats(
        rows=len(kept),
        min=ordered[0],
        mean=round(statistics.fmean(lengths), 1),
        median=statistics.median(lengths),
        p95=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
        max=ordered[-1],
        truncated=sum(row.truncated for row in kept),
        dropped=len(tokenized) - len(kept),
        trained_tokens=sum(sum(label != IGNORE_INDEX for label in row.labels) for row in kept),
        max_length=max_length,
    )
    return PreparedDataset(name, template, kept, stats, lengths)


def preview_row(tokenizer, row: TokenizedRow) -> list[tuple[str, bool]]:
    """The exact text of one training row as (segment, trained) pairs, after truncation."""
    segments: list[tuple[str, bool]] = []
    start = 0
    trained = [label != IGNORE_INDEX for label in row.labels]
    for i in range(1, len(trained) + 1):
        if i == len(trained) or trained[i] != trained[start]:
            segments.append((tokenizer.decode(row.input_ids[start:i]), trained[start]))
            start = i
    return segments


def prepare_dataset(data: DataSettings, tokenizer, max_length: int) -> PreparedDataset:
    """Read, map and tokenize a dataset: exactly what a run will train on."""
    return tokenize_rows(
        load_examples(data.source, data.columns, data.split, data.max_rows), data, tokenizer, max_length
    )


def tokenize_rows(rows: LoadedRows, data: DataSettings, tokenizer, max_length: int) -> PreparedDataset:
    """Tokenize rows already read (the CLI reads and checks them before the model loads), less the
    `data.holdout_rows` held out for evaluation (None: as many as `holdout_plan` sizes for the data)."""
    plan = holdout_plan(len(rows.examples), data.holdout_rows, rows.name)
    held = holdout_indices(len(rows.examples), plan.held, name=rows.name)  # in row order
    kept = set(range(len(rows.examples))) - set(held)
    train = [example for i, example in enumerate(rows.examples) if i in kept]
    prepared = tokenize_examples(tokenizer, train, data.template, max_length, data.system_prompt, rows.name)
    prepared.columns = rows.mapping.as_dict()
    prepared.holdout = plan
    prepared.heldout = eval_items([rows.rows[i] for i in held], [rows.examples[i] for i in held], rows.name,
                                  strict=False)
    return prepared
