"""Split a reasoning model's output into its thinking and its final answer.

Pure text functions, used on the whole text each time a token arrives. They cope with what a
stream shows on the way: a block whose opening tag the prompt already wrote (R1-distill chat
templates end the prompt with "<think>\\n"), a closing tag only half arrived, a block still open at
the token limit, and no block at all.
"""

from __future__ import annotations

from typing import NamedTuple

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class ThinkSplit(NamedTuple):
    thinking: str
    answer: str
    closed: bool
    """True once the reasoning is over (closing tag seen, or the text has no reasoning block)."""


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is the start of `tag` (a tag still arriving)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


def split_think(
    text: str,
    opened: bool = False,
    open_tag: str = THINK_OPEN,
    close_tag: str = THINK_CLOSE,
) -> ThinkSplit:
    """Return (thinking, answer, closed) for a model's output so far.

    `opened` says the prompt itself ended inside the reasoning block, so the text starts in it.
    """
    body = text.lstrip()
    if body.startswith(open_tag):
        body, opened = body[len(open_tag) :], True
    elif not opened and open_tag.startswith(body) and body:
        return ThinkSplit("", "", False)  # the opening tag is still arriving
    if close_tag in body:
        thinking, answer = body.split(close_tag, 1)
        return ThinkSplit(thinking.strip(), answer.strip(), True)
    if opened:
        cut = _partial_tag_suffix(body, close_tag)
        return ThinkSplit(body[: len(body) - cut].strip(), "", False)
    return ThinkSplit("", text.strip(), True)
