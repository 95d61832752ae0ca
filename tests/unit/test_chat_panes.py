"""Chat panes: reasoning in its own bubble (open while thinking, closed after), the answer apart,
earlier turns fed back as answers only, and base vs fine-tuned for the same question."""

import copy
import threading

from conftest import R1_TEMPLATE

from finetune.data.prompts import build_prompt
from finetune.generate.chat import (
    MODEL_NOTES,
    NO_ADAPTER,
    NOT_STARTED,
    NOTE,
    REASONING_TITLE,
    STOPPED,
    conversation,
    queued_note,
    reply_messages,
    status_line,
    stream_chat,
)
from finetune.generate.reply import GenerationSettings, Reply

GREEDY = GenerationSettings(max_new_tokens=10, temperature=0.0)


def reply(thinking="", answer="", thinking_done=True, done=False, **extra):
    return Reply(thinking, answer, thinking_done, done, tokens=40, seconds=3.0, **extra)


def test_reasoning_bubble_is_open_while_thinking_and_closed_with_its_length_and_time_after():
    thinking = reply_messages(reply("Inferior MI, so", thinking_done=False))
    assert thinking == [
        {
            "role": "assistant",
            "content": "Inferior MI, so",
            "metadata": {"title": REASONING_TITLE, "log": "40 tokens", "duration": 3.0, "status": "pending"},
        }
    ]
    answered = reply_messages(
        reply("Inferior MI.", "Give fluids.", thinking_seconds=2.04, thinking_tokens=31, done=True)
    )
    bubble, answer = answered
    assert bubble["metadata"] == {"title": REASONING_TITLE, "log": "31 tokens", "duration": 2.0, "status": "done"}
    assert answer == {"role": "assistant", "content": "Give fluids."}


def test_a_model_that_does_not_think_gets_no_bubble():
    assert reply_messages(reply(answer="Epinephrine.", done=True)) == [
        {"role": "assistant", "content": "Epinephrine."}
    ]


def test_reasoning_cut_at_the_token_limit_says_so_in_place_of_the_answer():
    messages = reply_messages(reply("Still weighing", thinking_done=False, done=True), max_new_tokens=40)
    assert messages[0]["metadata"]["status"] == "done"
    assert messages[1]["content"].startswith(NOTE) and "limit of 40 new tokens" in messages[1]["content"]
    ended = reply_messages(reply("Hmm", thinking_done=False, done=True), max_new_tokens=256)
    assert ended[1]["content"] == NOTE + "The model ended without a final answer."
    stopped = reply_messages(reply("Still", thinking_done=False, done=True, stopped=True))
    assert stopped[1]["content"] == NOTE + "Stopped before the final answer."
    cut = reply_messages(reply("Done thinking.", "Give prota", done=True, stopped=True))
    assert [m["content"] for m in cut[1:]] == ["Give prota", STOPPED]


def test_history_keeps_answers_and_drops_reasoning_and_notes():
    messages = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "thinking", "metadata": {"title": REASONING_TITLE}},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": NO_ADAPTER},
        {"role": "user", "content": [{"type": "text", "text": "Q3"}]},
        {"role": "assistant", "content": "A3"},
    ]
    assert conversation(messages) == [("Q1", "A1"), ("Q3", "A3")]


def test_follow_up_prompt_carries_the_earlier_turn(tokenizer):
    prompt = build_prompt(tokenizer, "And the dose?", history=[("Antidote for heparin?", "Protamine.")])
    assert prompt.index("Antidote for heparin?") < prompt.index("Protamine.") < prompt.index("And the dose?")
    plain = build_prompt(tokenizer, "And the dose?", "plain", history=[("Antidote?", "Protamine.")])
    assert "### Question:\nAntidote?\n\n### Clinical Assessment:\nProtamine." in plain
    assert plain.endswith("### Question:\nAnd the dose?\n\n### Thinking Process:\n")


def test_without_an_adapter_the_tuned_pane_says_so_and_base_still_answers(loaded):
    updates = list(stream_chat(loaded, "What is sepsis?", GREEDY))
    final = updates[-1]
    assert final["base"][-1]["content"] and final["finetuned"] == [{"role": "assistant", "content": NO_ADAPTER}]
    assert all("base" in update for update in updates)


def test_both_panes_show_reasoning_apart_from_the_answer_for_an_r1_prompt(loaded):
    from finetune.config import LoraSettings
    from finetune.models.adapters import attach_fresh_adapter

    loaded.tokenizer = copy.deepcopy(loaded.tokenizer)
    loaded.tokenizer.chat_template = R1_TEMPLATE  # the prompt ends inside <think>, like R1-distill models
    attach_fresh_adapter(loaded, LoraSettings(r=4, gradient_checkpointing=False))
    final = list(stream_chat(loaded, "What is sepsis?", GREEDY))[-1]
    for pane in ("base", "finetuned"):
        bubble, answer = final[pane]
        assert bubble["metadata"]["title"] == REASONING_TITLE and bubble["content"]
        assert "metadata" not in answer and answer["content"].startswith(NOTE)  # 10 tokens: still thinking
    # A fresh adapter is zero-initialised: with the same seed the two panes match exactly.
    assert final["base"][0]["content"] == final["finetuned"][0]["content"]


def test_a_long_stream_is_sent_at_most_every_so_often_and_always_at_its_turns_and_end(monkeypatch):
    """4,000 tokens in a few milliseconds: a handful of updates, not 4,000; the bubble's close and the end
    always go out."""
    import finetune.generate.chat
    from finetune.models.load import LoadedModel

    def fast_stream(loaded, question, settings, use_adapter, stop, history):
        for n in range(1, 4001):
            yield Reply(" ".join(["word"] * n), "", False, False, n, n / 1e4)
        yield Reply(" ".join(["word"] * 4000), "A", True, False, 4001, 0.41, 0.4, 4000)
        yield Reply(" ".join(["word"] * 4000), "An answer.", True, True, 4003, 0.42, 0.4, 4000)

    monkeypatch.setattr(finetune.generate.chat, "stream_reply", fast_stream)
    loaded = LoadedModel.__new__(LoadedModel)  # no model is read: only its adapter flag
    monkeypatch.setattr(LoadedModel, "has_adapter", property(lambda self: False))
    updates = list(stream_chat(loaded, "Why?", GREEDY, panes=("base",)))
    assert len(updates) < 50
    bubble = updates[0]["base"][0]
    assert bubble["metadata"]["status"] == "pending" and bubble["content"] == "word"  # the first text at once
    closed = [u for u in updates if len(u["base"]) == 2 and u["base"][1]["content"] == "A"]
    assert closed and closed[0]["base"][0]["metadata"]["status"] == "done"  # the close, though 10 µs later
    bubble, answer = updates[-1]["base"]
    assert bubble["metadata"]["log"] == "4,000 tokens" and answer["content"] == "An answer."
    assert len(list(stream_chat(loaded, "Why?", GREEDY, panes=("base",), every=0))) == 4002


def test_the_later_pane_says_it_is_queued_from_the_first_update_and_a_stop_leaves_it_not_started(monkeypatch):
    """The status line says where each pane is all along (the prompt being read included), then the speeds."""
    import finetune.generate.chat
    from finetune.models.load import LoadedModel

    stop = threading.Event()

    def stopped_stream(loaded, question, settings, use_adapter, stop_event, history):
        yield Reply("", "", False, False, 0, 0.2, phase="reading")
        yield Reply("Weighing", "", False, False, 30, 2.0)
        stop.set()  # the visitor presses Stop while the base model thinks
        yield Reply("Weighing", "", False, True, 31, 2.1, stopped=True)

    monkeypatch.setattr(finetune.generate.chat, "stream_reply", stopped_stream)
    loaded = LoadedModel.__new__(LoadedModel)
    monkeypatch.setattr(LoadedModel, "has_adapter", property(lambda self: True))
    replies, updates, lines = {}, [], []
    for update in stream_chat(loaded, "Why?", GREEDY, stop=stop, replies=replies):
        updates.append(update)
        lines.append(status_line(replies))
    assert updates[0] == {"base": [{"role": "assistant", "content": MODEL_NOTES["reading"]}],
                          "finetuned": [{"role": "assistant", "content": queued_note("base")}]}
    assert queued_note("base") == NOTE + "Waiting: the base model answers first…"
    assert lines[:2] == ["Base: reading the question… · Fine-tuned: queued",
                         "Base: thinking… 30 tokens, 15 tokens/s · Fine-tuned: queued"]
    assert updates[-1]["finetuned"] == [{"role": "assistant", "content": NOT_STARTED}]
    assert lines[-1] == "Base: 31 tokens in 2.1 s (15 tokens/s)"  # the speed line, as before


def test_a_reply_on_its_way_says_where_it_is_in_the_status_line():
    waiting = {"base": Reply("", "", False, False, 0, 3.0, phase="waiting"), "finetuned": reply(phase="queued")}
    assert status_line(waiting).startswith("Base: waiting for the model (another visitor's reply")
    answering = {"base": reply("Inferior MI.", "Give", thinking_done=True)}
    assert status_line(answering) == "Base: answering… 40 tokens, 13 tokens/s"
    assert status_line({"base": reply(phase="reading")}) == "Base: reading the question… 3 s"
    assert status_line({"finetuned": reply(phase="no adapter")}) == "Fine-tuned: no adapter yet"
    assert reply_messages(reply(phase="waiting")) == [{"role": "assistant", "content": MODEL_NOTES["waiting"]}]
