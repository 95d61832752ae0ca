"""About how long an evaluation will take on this machine, said before it starts.

    rate = DecodeRate(110, "measured in chat")
    estimate_line(questions=40, models=2, max_new_tokens=2048, rate=rate)
    # 'About 25 min on this machine (40 questions × 2 models × up to 2,048 tokens at ~110 tokens/s measured in chat)'

Every answer is counted at its limit of new tokens, so the figure is what the run takes at most when
its rate holds: R1 models often answer sooner, and evaluation generates a batch of questions together,
which a rate measured in chat (one reply at a time) does not see. The rate measured in the last
evaluation on the same model (all the tokens it wrote over its generation time) does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WEIGHT_READ_GB_PER_S = {"cuda": 1000.0, "cpu": 10.0}
"""Memory speed a token's pass over the weights reaches, by device: batch-1 decoding reads every weight
once per token. CPU: what the embedded 135M model (0.54 GB in float32) decodes at on two cores
(docs/benchmarks.md, "CPU")."""
TOKENS_PER_S_CAP = {"cuda": 30.0, "cpu": 60.0}
"""Per-token overheads bound small models: transformers' generate on a GPU ran about as fast for a 1.5B as
for an 8B model in 4-bit (docs/benchmarks.md, "Chat"), bound by kernel launches, not by the weights."""


@dataclass(frozen=True)
class DecodeRate:
    tokens_per_s: float
    source: str
    """How it was found, said after the figure: "measured in chat", "guessed from ..."."""

    def __post_init__(self) -> None:
        if not self.tokens_per_s > 0:
            raise ValueError(f"a decode rate must be positive, not {self.tokens_per_s}")


def guessed_rate(device: str, weights_gb: float) -> DecodeRate:
    """A rate from the model's size and the device, before anything was measured on it."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    rate = min(WEIGHT_READ_GB_PER_S[kind] / max(weights_gb, 0.01), TOKENS_PER_S_CAP[kind])
    where = "a GPU" if kind == "cuda" else "CPU"
    return DecodeRate(rate, f"guessed from the model's size ({weights_gb:.1f} GB) on {where}, nothing measured yet")


def measured_rate(tokens: int, seconds: float, where: str) -> DecodeRate | None:
    """The rate of a finished generation, or None when it was too short to tell (a few tokens, no time)."""
    if tokens < 8 or seconds <= 0:
        return None
    return DecodeRate(tokens / seconds, f"measured in {where}")


def eval_seconds(questions: int, models: int, max_new_tokens: int, tokens_per_s: float) -> float:
    """Seconds to write every answer at its limit: questions × models × tokens ÷ rate."""
    return questions * models * max_new_tokens / tokens_per_s


def duration_words(seconds: float) -> str:
    """'under a minute', 'About 12 min', 'About 2 h 5 min' (rounded up to whole minutes)."""
    if seconds < 60:
        return "Under a minute"
    minutes = math.ceil(seconds / 60)
    if minutes < 60:
        return f"About {minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"About {hours} h {rest} min" if rest else f"About {hours} h"


def estimate_line(questions: int, models: int, max_new_tokens: int, rate: DecodeRate) -> str:
    """One sentence for the Evaluate tab: the time, then how it was reckoned."""
    seconds = eval_seconds(questions, models, max_new_tokens, rate.tokens_per_s)
    question_word = "question" if questions == 1 else "questions"
    model_word = "model" if models == 1 else "models"
    return (f"{duration_words(seconds)} on this machine ({questions:,} {question_word} × {models} {model_word} × "
            f"up to {max_new_tokens:,} tokens at ~{rate.tokens_per_s:,.0f} tokens/s {rate.source})")
