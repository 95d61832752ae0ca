"""The Evaluate tab's estimate: questions × models × tokens ÷ rate, said in words with how it was reckoned."""

import pytest

from finetune.evaluate.estimate import (
    DecodeRate,
    duration_words,
    estimate_line,
    eval_seconds,
    guessed_rate,
    measured_rate,
)

CHAT = DecodeRate(110, "measured in chat")


@pytest.mark.parametrize("questions,models,tokens,rate,words", [
    (40, 2, 2048, 110, "About 25 min"),  # 1,489 s
    (8, 1, 512, 20, "About 4 min"),  # 205 s, rounded up
    (2, 2, 16, 20, "Under a minute"),
    (44, 2, 4096, 20, "About 5 h 1 min"),  # 18,022 s
    (60, 1, 1000, 50, "About 20 min"),  # exactly 1,200 s
    (36, 2, 1000, 20, "About 1 h"),  # exactly 3,600 s
])
def test_the_time_is_questions_times_models_times_tokens_over_the_rate(questions, models, tokens, rate, words):
    assert eval_seconds(questions, models, tokens, rate) == pytest.approx(questions * models * tokens / rate)
    assert duration_words(eval_seconds(questions, models, tokens, rate)) == words


def test_the_line_says_how_it_was_reckoned():
    assert estimate_line(40, 2, 2048, CHAT) == (
        "About 25 min on this machine (40 questions × 2 models × up to 2,048 tokens at ~110 tokens/s measured in chat)")
    assert estimate_line(1, 1, 16, DecodeRate(2.5, "measured in the last evaluation")) == (
        "Under a minute on this machine (1 question × 1 model × up to 16 tokens at ~2 tokens/s measured in the last "
        "evaluation)")


@pytest.mark.parametrize("device,weights_gb,low,high", [
    ("cpu", 0.54, 15, 22),  # the embedded 135M model in float32: 16-20 tokens/s measured on 2 cores
    ("cpu", 16.0, 0.4, 1),  # an 8B model in 16 bits on CPU: slow
    ("cpu", 0.0, 60, 60),  # no size known: capped
    ("cuda", 5.5, 30, 30),  # an 8B model in 4-bit: transformers' generate is launch-bound (21-44 measured)
    ("cuda:0", 1.2, 30, 30),
    ("cuda", 140.0, 7, 8),  # a 70B model in 16 bits: bound by reading its weights
])
def test_a_guess_from_the_model_size_and_device_says_it_is_one(device, weights_gb, low, high):
    rate = guessed_rate(device, weights_gb)
    assert low <= rate.tokens_per_s <= high
    assert rate.source.startswith("guessed from the model's size") and "nothing measured yet" in rate.source


def test_a_measured_rate_needs_a_real_generation():
    assert measured_rate(4000, 8.0, "chat") == DecodeRate(500.0, "measured in chat")
    assert measured_rate(3, 0.1, "chat") is None and measured_rate(100, 0.0, "chat") is None
    with pytest.raises(ValueError):
        DecodeRate(0, "measured in chat")
