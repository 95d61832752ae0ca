"""Streaming chat keeps reasoning and answer apart, and can be stopped."""

import copy
import threading

from conftest import R1_TEMPLATE

from finetune.generate.reply import GenerationSettings, stream_reply


def test_r1_prompt_streams_into_the_thinking_until_it_closes(loaded):
    loaded.tokenizer = copy.deepcopy(loaded.tokenizer)
    loaded.tokenizer.chat_template = R1_TEMPLATE  # prompt ends with "<think>\n", like R1-distill models
    replies = list(stream_reply(loaded, "What is sepsis?", GenerationSettings(max_new_tokens=12, temperature=0)))
    assert len(replies) > 2 and replies[-1].done and not any(r.done for r in replies[:-1])
    final = replies[-1]
    assert final.tokens == 12
    # The base model never writes </think>: everything it said is reasoning, still open at the limit.
    assert final.thinking and final.answer == "" and not final.thinking_done
    grown = [len(r.thinking) for r in replies]
    assert grown == sorted(grown)


def test_chatml_model_without_think_gives_a_plain_answer(loaded):
    final = list(stream_reply(loaded, "What is sepsis?", GenerationSettings(max_new_tokens=10, temperature=0)))[-1]
    assert final.answer and final.thinking == "" and final.thinking_done


def test_same_seed_same_sampled_answer(loaded):
    settings = GenerationSettings(max_new_tokens=12, temperature=0.6, top_p=0.95, seed=7)
    answers = [list(stream_reply(loaded, "Define anemia.", settings))[-1].answer for _ in range(2)]
    assert answers[0] == answers[1]


def test_stop_ends_generation_early(loaded):
    stop = threading.Event()
    replies = []
    for reply in stream_reply(loaded, "Explain heart failure.", GenerationSettings(max_new_tokens=200), stop=stop):
        replies.append(reply)
        stop.set()
    assert replies[-1].done and replies[-1].stopped and replies[-1].tokens < 200


def test_r1_defaults():
    settings = GenerationSettings()
    assert (settings.temperature, settings.top_p, settings.system_prompt) == (0.6, 0.95, "")
    assert settings.max_new_tokens >= 1024


def test_abandoned_stream_stops_and_frees_the_model(loaded):
    replies = stream_reply(loaded, "Explain heart failure.", GenerationSettings(max_new_tokens=1000, temperature=0))
    next(replies)
    replies.close()  # e.g. the page was closed mid-answer
    assert loaded.lock.acquire(timeout=10)  # it ended, instead of running 1000 tokens on (~50 s)
    loaded.lock.release()


def test_defaults_leave_room_for_r1_reasoning_on_a_gpu_and_stay_short_on_cpu():
    from finetune.config import TrainSettings
    from finetune.evaluate.heldout import EvalSettings
    from finetune.generate.reply import CHAT_MAX_NEW_TOKENS

    gpu, cpu = GenerationSettings.for_device("cuda"), GenerationSettings.for_device("cpu")
    assert gpu.max_new_tokens >= 4096 + 512  # a 4,000-token reasoning and its answer
    assert 650 < cpu.max_new_tokens < gpu.max_new_tokens  # the bundled sample's reasoning and answer
    assert GenerationSettings().max_new_tokens == gpu.max_new_tokens == CHAT_MAX_NEW_TOKENS["cuda"]
    assert GenerationSettings.for_device("cpu", max_new_tokens=32, seed=3).max_new_tokens == 32
    assert EvalSettings.for_device("cuda").max_new_tokens >= 4096 > EvalSettings.for_device("cpu").max_new_tokens
    # The end-of-run evaluation uses the same lengths as the Evaluate tab and `python -m finetune eval`.
    for device in ("cuda", "cpu"):
        assert TrainSettings.for_device(device).eval_max_new_tokens == EvalSettings.for_device(device).max_new_tokens


def test_a_reply_that_would_overflow_the_context_says_what_to_lower(loaded):
    import pytest

    from finetune.generate.reply import ContextTooLong, check_room, context_limit

    assert context_limit(loaded) == 8192  # SmolLM2-135M
    check_room(loaded, 100, 8092)  # fits exactly
    with pytest.raises(ContextTooLong) as raised:
        next(stream_reply(loaded, "What is sepsis?", GenerationSettings(max_new_tokens=8190)))
    message = str(raised.value)
    assert "“Max new tokens” (8,190)" in message and "limit of 8,192" in message
    prompt = int(message.split("prompt (")[1].split(" tokens")[0])
    assert f"set “Max new tokens” to {8192 - prompt:,} or less" in message
    with pytest.raises(ContextTooLong, match="The prompt alone is 9,000 tokens"):
        check_room(loaded, 9000, 16)
    assert loaded.lock.acquire(timeout=1)  # nothing started
    loaded.lock.release()


def test_a_reply_says_at_once_where_it_is_while_another_holds_the_model(loaded):
    free = stream_reply(loaded, "What is sepsis?", GenerationSettings(max_new_tokens=4, temperature=0))
    first = next(free)
    assert (first.phase, first.tokens, first.done) == ("reading", 0, False)  # before the prompt is read
    free.close()
    replies = stream_reply(loaded, "What is sepsis?", GenerationSettings(max_new_tokens=4, temperature=0))
    with loaded.lock:  # another visitor's reply, say
        first, heartbeat = next(replies), next(replies)  # the second half a second later, no text yet
    assert (first.phase, heartbeat.phase, heartbeat.tokens) == ("waiting", "waiting", 0)
    rest = list(replies)
    assert rest[-1].done and rest[-1].tokens == 4 and {r.phase for r in rest} <= {"reading", "writing"}
