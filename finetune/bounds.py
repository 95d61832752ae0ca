"""The range of every number and the length of every text a visitor sets, written once.

The settings dataclasses check their fields against the ranges in `__post_init__` (`check_ranges`),
the app's widgets take their minimum and maximum from them (`range_of`), and the app's handlers turn
what arrives from the page or the HTTP API (a number, a numeric string, None, inf, a list) into a
checked value with `number_from` / `text_from`, naming the field when they cannot.

    max_steps: int | None = ranged(60, 1, 100_000)
    steps = number_from(raw, "Max steps", range_of(TrainSettings, "max_steps"))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

SEED_MAX = 2**32 - 1
"""numpy's seeds stop here, and transformers seeds numpy with the run's seed."""


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    whole: bool = True
    """A whole number (steps, ranks, seeds) rather than any real one (rates)."""
    optional: bool = False
    """None is a value too (e.g. max_steps None: train for `epochs`)."""


def ranged(default, low: float, high: float, whole: bool = True, optional: bool = False):
    """A dataclass field whose value must lie in [low, high] (or be None, if `optional`)."""
    return field(default=default, metadata={"range": Range(low, high, whole, optional)})


def range_of(settings_class, name: str) -> Range:
    """The range of one field of a settings dataclass, for a widget's minimum and maximum."""
    for item in fields(settings_class):
        if item.name == name:
            return item.metadata["range"]
    raise KeyError(f"{settings_class.__name__} has no field {name!r}")


def check_ranges(settings) -> None:
    """ValueError naming the first field of `settings` outside its range (or not a finite number)."""
    for item in fields(settings):
        bound = item.metadata.get("range")
        value = getattr(settings, item.name)
        if bound is not None and not (value is None and bound.optional):
            check_number(value, item.name, bound)


def check_number(value, label: str, bound: Range) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{label} must be a number, not {shorten(repr(value))}")
    if not math.isfinite(value):
        raise ValueError(f"{label} must be a finite number, not {value}")
    if bound.whole and value != int(value):
        raise ValueError(f"{label} must be a whole number, not {value:g}")
    if not bound.low <= value <= bound.high:
        raise ValueError(f"{label} must be between {_figure(bound.low)} and {_figure(bound.high)}, "
                         f"not {_figure(value)}")


def number_from(value, label: str, bound: Range) -> int | float | None:
    """A visitor's value for a number field (a number, or text that reads as one) as a checked number."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text) if text else None
        except ValueError:
            raise ValueError(f"{label} must be a number, not {shorten(repr(text))}") from None
    if value is None:
        if bound.optional:  # an empty box: the setting's automatic choice
            return None
        raise ValueError(f"{label}: a number is needed")
    check_number(value, label, bound)
    return int(value) if bound.whole else float(value)


def text_from(value, label: str, max_chars: int) -> str:
    """A visitor's value for a text field as text: a string (None reads as empty) of at most `max_chars`
    characters, every one encodable (a lone surrogate from the API is not text)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{label} must be text, not {type(value).__name__}")
    if len(value) > max_chars:
        raise ValueError(f"{label} is {len(value):,} characters long; the limit here is {max_chars:,}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{label} holds {value[err.start].encode('unicode_escape').decode()}, half of a UTF-16 "
                         "surrogate pair, which is not text") from None
    return value


def shorten(text: str, chars: int = 60) -> str:
    """At most `chars` characters of a visitor's text, to echo it back in a message."""
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _figure(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


@dataclass(frozen=True)
class TextLimits:
    """The longest text a visitor may send in each field (the operator may change the first three).

    Every character costs time before the first token: a 10,000-character message held the shared
    model for minutes on two cores, and a prompt's length is prefilled in one step Stop cannot cut."""

    message: int = 4_000
    """A chat question: a long clinical vignette is 500-2,000 characters (about 1,000 tokens at most)."""
    conversation: int = 24_000
    """The question with the pane's earlier turns: a few R1 answers of some thousand characters each."""
    system_prompt: int = 2_000
    model_id: int = 200
    """Hub ids are at most 96 characters a side."""
    name: int = 64
    """Run and export folder names."""
    repo_id: int = 200
    token: int = 512
    split: int = 64
    """A Hub slice such as train[0:500]."""

    def __post_init__(self) -> None:
        for item in fields(self):
            if getattr(self, item.name) < 1:
                raise ValueError(f"the {item.name} length limit must be at least 1, not {getattr(self, item.name)}")
