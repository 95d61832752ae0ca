"""Chat panes: a streamed reply as chat messages, and base vs fine-tuned for the same question.

Messages are plain dicts in the chat "messages" format ({"role", "content", "metadata"}), which
Gradio's Chatbot shows as they are: a message with a metadata title is a collapsible bubble, open
while its status is "pending" and closed once it is "done".

    for panes in stream_chat(loaded, "What is the antidote for heparin?", GenerationSettings()):
        print(panes["base"][-1]["content"], "|", panes["tuned"][-1]["content"])
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

from finetune.models import LoadedModel
from inference.generate import GenerationSettings, Reply, stream_reply

PANES = {"base": False, "tuned": True}
"""Pane name -> whether the LoRA adapter is on. Base is the same weights with the adapter off."""
REASONING_TITLE = "Reasoning"
NOTE = "ℹ️ "
"""Starts the app's own notes in a pane, which are never fed back to the model as answers."""
NO_ADAPTER = NOTE + "No fine-tuned adapter yet: train one in the Train tab, then ask again."
STOPPED = NOTE + "Stopped before the end."
UPDATE_SECONDS = 1 / 15
"""A pane is re-sent at most this often while it streams (and always when its reasoning closes and at its
end). The page re-renders a whole message on every update: one per token would re-render a 4,000-token
reasoning 4,000 times as it grows."""


def reply_messages(reply: Reply, max_new_tokens: int | None = None) -> list[dict]:
    """The assistant messages for a reply so far: a reasoning bubble (if any) and the answer."""
    messages = []
    if reply.thinking or not reply.thinking_done:
        thinking_over = reply.thinking_done or reply.done
        tokens = reply.thinking_tokens if reply.thinking_tokens is not None else reply.tokens
        seconds = reply.thinking_seconds if reply.thinking_seconds is not None else reply.seconds
        messages.append(
            {
                "role": "assistant",
                "content": reply.thinking or "…",
                "metadata": {
                    "title": REASONING_TITLE,
                    "log": f"{tokens:,} tokens",
                    "duration": round(seconds, 1),
                    "status": "done" if thinking_over else "pending",
                },
            }
        )
    answer = reply.answer or (_missing_answer(reply, max_new_tokens) if reply.done else "")
    if answer:
        messages.append({"role": "assistant", "content": answer})
    if reply.stopped and reply.answer:
        messages.append({"role": "assistant", "content": STOPPED})
    return messages


def _missing_answer(reply: Reply, max_new_tokens: int | None) -> str:
    if reply.stopped:
        return NOTE + "Stopped before the final answer."
    if not reply.thinking_done and max_new_tokens and reply.tokens >= max_new_tokens:
        return NOTE + (
            f"No final answer: the reasoning was still going at the limit of {max_new_tokens} new tokens. "
            "Raise “Max new tokens”."
        )
    return NOTE + "The model ended without a final answer."


def conversation(messages: Sequence[dict]) -> list[tuple[str, str]]:
    """Earlier (question, answer) turns of a pane, from its messages; reasoning bubbles and notes left out."""
    turns: list[tuple[str, str]] = []
    question, answer = None, ""
    for message in messages:
        content = _text(message.get("content"))
        if message.get("role") == "user":
            if question is not None and answer:
                turns.append((question, answer))
            question, answer = content, ""
        elif not (message.get("metadata") or {}).get("title") and not content.startswith(NOTE):
            answer = f"{answer}\n\n{content}" if answer else content
    if question is not None and answer:
        turns.append((question, answer))
    return turns


def _text(content) -> str:
    """Message content as text: a string, or a list of {'type': 'text', 'text': ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def stream_chat(
    loaded: LoadedModel,
    question: str,
    settings: GenerationSettings,
    panes: Sequence[str] = ("base", "tuned"),
    histories: dict[str, Sequence[tuple[str, str]]] | None = None,
    stop: threading.Event | None = None,
    replies: dict[str, Reply] | None = None,
    every: float = UPDATE_SECONDS,
) -> Iterator[dict[str, list[dict]]]:
    """Answer one question in each pane, one after the other (they share the weights), same seed.

    Yields {pane: assistant messages so far} as text arrives, at most once in `every` seconds, and
    always for a pane's first text, when its reasoning closes and at its end. Setting `stop` ends the
    reply being written (it says so) and skips the panes not started yet. `replies`, if given, gets
    each pane's latest Reply (for `speed_summary`).
    """
    question = question.strip()
    if not question:
        raise ValueError("Type a question first.")
    unknown = [pane for pane in panes if pane not in PANES]
    if unknown:
        raise ValueError(f"unknown chat pane(s) {unknown}; use {list(PANES)}")
    histories = histories or {}
    shown: dict[str, list[dict]] = {pane: [] for pane in panes}
    for pane in panes:
        if stop is not None and stop.is_set():
            break
        if PANES[pane] and not loaded.has_adapter:
            shown[pane] = [{"role": "assistant", "content": NO_ADAPTER}]
            yield dict(shown)
            continue
        sent_at, thinking_done = None, None
        for reply in stream_reply(loaded, question, settings, PANES[pane], stop, histories.get(pane, ())):
            if replies is not None:
                replies[pane] = reply
            now = time.monotonic()
            if reply.done or reply.thinking_done != thinking_done or sent_at is None or now - sent_at >= every:
                sent_at, thinking_done = now, reply.thinking_done
                shown[pane] = reply_messages(reply, settings.max_new_tokens)
                yield dict(shown)


PANE_TITLES = {"base": "Base", "tuned": "Fine-tuned"}


def speed_summary(replies: dict[str, Reply]) -> str:
    """One line: tokens, time and speed of each finished reply, and the decoding path that wrote them."""
    parts = [f"{PANE_TITLES[pane]}: {r.tokens} tokens in {r.seconds:.1f} s "
             f"({r.tokens / max(r.seconds, 1e-6):.0f} tokens/s)" for pane, r in replies.items() if r.done]
    decoders = sorted({r.decoder for r in replies.values() if r.done and r.decoder})
    return " · ".join(parts + decoders)
