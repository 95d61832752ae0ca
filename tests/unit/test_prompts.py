"""Training text: the prompt is exactly what chat sends, only reasoning and answer are trained,
R1 templates (prompt ending in <think>) are handled, and truncation is counted, never silent."""

import copy

import pytest
from conftest import R1_TEMPLATE

from finetune.data.prompts import (
    IGNORE_INDEX,
    PLAIN_CLOSE,
    build_prompt,
    preview_row,
    tokenize_example,
    tokenize_examples,
)
from finetune.data.sources import Example

EXAMPLE = Example("Crushing chest pain, ST elevation in II, III, aVF. Next step?", "Inferior MI, likely RCA.", "PCI.")


@pytest.fixture
def r1_tokenizer(tokenizer):
    r1 = copy.deepcopy(tokenizer)
    r1.chat_template = R1_TEMPLATE
    return r1


def trained_text(tokenizer, row) -> str:
    return "".join(text for text, trained in preview_row(tokenizer, row) if trained)


def test_chat_template_trains_think_block_answer_and_end_of_turn(tokenizer):
    row = tokenize_example(tokenizer, EXAMPLE, "chat", max_length=512)
    assert row.prompt == build_prompt(tokenizer, EXAMPLE.question, "chat")  # same prompt as inference
    assert row.prompt.endswith("<|im_start|>assistant\n")
    assert trained_text(tokenizer, row) == "<think>\nInferior MI, likely RCA.\n</think>\n\nPCI.<|im_end|>"
    prompt_len = len(tokenizer(row.prompt, add_special_tokens=False)["input_ids"])
    assert row.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert row.labels[prompt_len:] == row.input_ids[prompt_len:]


def test_r1_template_prompt_already_opens_think(r1_tokenizer):
    row = tokenize_example(r1_tokenizer, EXAMPLE, "chat", max_length=512)
    assert row.prompt.endswith("<｜Assistant｜><think>\n")
    trained = trained_text(r1_tokenizer, row)
    assert trained.startswith("Inferior MI")  # no second <think>
    assert trained.endswith("</think>\n\nPCI.<｜end▁of▁sentence｜>")


def test_row_without_reasoning_trains_answer_only(tokenizer, r1_tokenizer):
    bare = Example(EXAMPLE.question, "", "PCI.")
    assert trained_text(tokenizer, tokenize_example(tokenizer, bare, "chat", 512)) == "PCI.<|im_end|>"
    # R1 prompt opened the block: close it empty, as R1 models do for questions without reasoning.
    assert trained_text(r1_tokenizer, tokenize_example(r1_tokenizer, bare, "chat", 512)).startswith("</think>")


def test_plain_template_is_the_seeds_layout(tokenizer):
    row = tokenize_example(tokenizer, EXAMPLE, "plain", max_length=512)
    assert row.prompt.startswith("### Role:\n")
    assert "### Question:\nCrushing chest pain" in row.prompt
    assert row.prompt.endswith("### Thinking Process:\n")
    assert trained_text(tokenizer, row) == f"Inferior MI, likely RCA.\n{PLAIN_CLOSE}\n\nPCI.<|im_end|>"


def test_truncation_is_counted_and_prompt_only_rows_dropped(tokenizer):
    long = Example(EXAMPLE.question, "step " * 300, "PCI.")
    huge_prompt = Example("symptom " * 400, "r", "a")
    prepared = tokenize_examples(tokenizer, [EXAMPLE, long, huge_prompt], "chat", max_length=128)
    assert prepared.stats.truncated == 1 and prepared.stats.dropped == 1 and prepared.stats.rows == 2
    assert max(len(r.input_ids) for r in prepared.rows) == 128
    assert prepared.stats.max > 128  # lengths before truncation are reported
    assert prepared.stats.trained_tokens == sum(sum(x != IGNORE_INDEX for x in r.labels) for r in prepared.rows)


def test_preview_segments_reassemble_the_exact_training_text(tokenizer):
    row = tokenize_example(tokenizer, EXAMPLE, "chat", max_length=512)
    segments = preview_row(tokenizer, row)
    assert [trained for _, trained in segments] == [False, True]
    assert "".join(text for text, _ in segments) == tokenizer.decode(row.input_ids)
