"""Chat panes: a streamed reply as chat messages, and base vs fine-tuned for the same question.

Messages are plain dicts in the chat "messages" format ({"role", "content", "metadata"}), which
Gradio's Chatbot shows as they are: a message with a metadata title is a collapsible bubble, open
while its status is "pending" and closed once it is "done".

    replies = {}
    for panes in stream_chat(loaded, "What is the antidote for heparin?", GenerationSettings(), replies=replies):
        print(panes["base"][-1]["content"], "|", panes["finetuned"][-1]["content"], "|", status_line(replies))

The panes answer one after the other (one model, one reply at a time): the later pane shows at once
that it is queued, and `status_line` says where each pane is (queued, reading the question, thinking,
answering, done).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from finetune.config import ADAPTER_ON
from finetune.generate.reply import GenerationSettings, Reply, stream_reply
from finetune.models.load import LoadedModel

PANES = ADAPTER_ON
"""Pane name -> whether the LoRA adapter is on. Base is the same weights with the adapter off."""
REASONING_TITLE = "Reasoning"
NOTE = "ℹ️ "
"""Starts the app's own notes in a pane, which are never fed back to the model as answers."""
NO_ADAPTER = NOTE + "No fine-tuned adapter yet: train one in the Train tab, then ask again."
STOPPED = NOTE + "Stopped before the end."
NOT_STARTED = NOTE + "Not started: stopped before its turn."
MODEL_NOTES = {
    "waiting": NOTE + "Waiting for the model: another visitor's reply (or an export) is using it…",
    "reading": NOTE + "Reading the question…",
}
"""What a pane shows before the model's first token (`Reply.phase`)."""
UPDATE_SECONDS = 1 / 15
"""A pane is re-sent at most this often while it streams (and always when its reasoning closes and at its
end). The page re-renders a whole message on every update: one per token would re-render a 4,000-token
reasoning 4,000 times as it grows."""


def reply_messages(reply: Reply, max_new_tokens: int | None = None) -> list[dict]:
    """The assistant messages for a reply so far: a reasoning bubble (if any) and the answer."""
    if not reply.done and reply.phase in MODEL_NOTES:
        return [{"role": "assistant", "content": MODEL_NOTES[reply.phase]}]
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


def queued_note(first: str) -> str:
    """What a pane waiting for its turn shows, `first` being the pane that answers first."""
    return NOTE + f"Waiting: the {PANE_TITLES[first].lower()} model answers first…"


def stream_chat(
    loaded: LoadedModel,
    question: str,
    settings: GenerationSettings,
    panes: Sequence[str] = ("base", "finetuned"),
    histories: dict[str, Sequence[tuple[str, str]]] | None = None,
    stop: threading.Event | None = None,
    replies: dict[str, Reply] | None = None,
    every: float = UPDATE_SECONDS,
) -> Iterator[dict[str, list[dict]]]:
    """Answer one question in each pane, one after the other (they share the weights), same seed.

    Yields {pane: assistant messages so far} as text arrives, at most once in `every` seconds, and
    always for a pane's first text, when its reasoning closes, when its phase changes and at its end.
    A pane waiting for its turn says so from the first update. Setting `stop` ends the reply being
    written (it says so) and marks the panes not started yet. `replies`, if given, gets each pane's
    latest Reply, in pane order, a placeholder (`Reply.phase` "queued", "not started", "no adapter") for a
    pane not answering: what `status_line` and `speed_summary` read.
    """
    question = question.strip()
    if not question:
        raise ValueError("Type a question first.")
    unknown = [pane for pane in panes if pane not in PANES]
    if unknown:
        raise ValueError(f"unknown chat pane(s) {unknown}; use {list(PANES)}")
    histories = histories or {}
    replies = {} if replies is None else replies
    answering = [pane for pane in panes if loaded.has_adapter or not PANES[pane]]
    shown: dict[str, list[dict]] = {}
    for pane in panes:
        if pane not in answering:
            replies[pane], shown[pane] = _placeholder("no adapter"), [_note(NO_ADAPTER)]
        elif pane == answering[0]:
            replies[pane], shown[pane] = _placeholder("waiting"), []
        else:
            replies[pane], shown[pane] = _placeholder("queued"), [_note(queued_note(answering[0]))]
    for pane in answering:
        if stop is not None and stop.is_set():
            replies[pane], shown[pane] = _placeholder("not started"), [_note(NOT_STARTED)]
            yield dict(shown)
            continue
        sent_at, thinking_done, phase = None, None, None
        for reply in stream_reply(loaded, question, settings, PANES[pane], stop, histories.get(pane, ())):
            replies[pane] = reply
            now = time.monotonic()
            if (reply.done or reply.thinking_done != thinking_done or reply.phase != phase or sent_at is None
                    or now - sent_at >= every):
                sent_at, thinking_done, phase = now, reply.thinking_done, reply.phase
                shown[pane] = reply_messages(reply, settings.max_new_tokens)
                yield dict(shown)
    if not answering:
        yield dict(shown)  # the fine-tuned pane alone, with no adapter: its note is the only update


def _placeholder(phase: str) -> Reply:
    return Reply("", "", False, False, 0, 0.0, phase=phase)


def _note(text: str) -> dict:
    return {"role": "assistant", "content": text}


PANE_TITLES = {"base": "Base", "finetuned": "Fine-tuned"}
PANE_PHASES = {"queued": "queued", "not started": "not started (stopped)", "no adapter": "no adapter yet",
               "waiting": "waiting for the model (another visitor's reply or an export is using it)…"}


def status_line(replies: dict[str, Reply]) -> str:
    """One line on where each pane is: "Base: thinking… 312 tokens, 14 tokens/s · Fine-tuned: queued";
    once every pane is over, `speed_summary`."""
    if all(reply.done or reply.phase in ("not started", "no adapter") for reply in replies.values()):
        final = speed_summary(replies)
        if final:
            return final
    return " · ".join(f"{PANE_TITLES[pane]}: {_pane_status(reply)}" for pane, reply in replies.items())


def _pane_status(reply: Reply) -> str:
    if reply.done:
        return _speed(reply)
    if reply.phase in PANE_PHASES:
        return PANE_PHASES[reply.phase]
    if reply.phase == "reading":
        return "reading the question…" + (f" {reply.seconds:.0f} s" if reply.seconds >= 1 else "")
    doing = "answering" if reply.thinking_done else "thinking"
    return f"{doing}… {reply.tokens:,} tokens, {reply.tokens / max(reply.seconds, 1e-6):.0f} tokens/s"


def _speed(reply: Reply) -> str:
    return f"{reply.tokens} tokens in {reply.seconds:.1f} s ({reply.tokens / max(reply.seconds, 1e-6):.0f} tokens/s)"


def speed_summary(replies: dict[str, Reply]) -> str:
    """One line: tokens, time and speed of each finished reply, and the decoding path that wrote them."""
    parts = [f"{PANE_TITLES[pane]}: {_speed(r)}" for pane, r in replies.items() if r.done]
    decoders = sorted({r.decoder for r in replies.values() if r.done and r.decoder})
    return " · ".join(parts + decoders)


@dataclass(frozen=True)
class ChatRuns:
    """Which run's adapter the fine-tuned pane answers with, and which others it could: the Chat tab's picker."""

    runs: list[str]
    """Runs with a saved adapter trained on the loaded model, newest first."""
    current: str | None
    """The run whose saved adapter is on the model; None: none (or one not saved to a run yet)."""
    adapter_on: bool
    """An adapter is on the model: the fine-tuned pane answers (also with an adapter no run saved)."""
    training: str | None = None
    """The run training now, if any: its adapter is the one on the model, still changing."""

    @property
    def title(self) -> str:
        """The fine-tuned pane's label: it names the run that answers."""
        if self.training:
            return f"Fine-tuned: {self.training} (training…)"
        if self.current:
            return f"Fine-tuned: {self.current} (LoRA on)"
        if self.adapter_on:
            return "Fine-tuned: LoRA on (an adapter no run has saved)"
        return "Fine-tuned: no adapter yet"
