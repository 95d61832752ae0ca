"""The ### template follows the dataset's voice (medical as the seeds wrote it, or neutral), a run trained
neutral is prompted and split neutral, and the hold-out is sized to the data and said out loud."""

import re

import pytest

from finetune.config import TEMPLATE_LABELS, TEMPLATES, DataSettings
from finetune.data.prompts import (
    PLAIN_TEMPLATES,
    build_completion,
    build_prompt,
    effective_template,
    is_plain_template,
    prompt_opens_reasoning,
    reasoning_tags,
    suggested_template,
    tokenize_example,
)
from finetune.data.sources import (
    HOLDOUT_CAP,
    MIN_TRAIN_ROWS,
    DatasetError,
    Example,
    RawRows,
    holdout_indices,
    holdout_plan,
    read_source,
)
from finetune.data.think import split_think
from finetune.runs import run_template
from finetune.train.recipe import RecipeError, default_recipe, with_changes
from ui.preview import preview_dataset

MEDICAL_WORDS = re.compile(r"medic|clinic|diagnos|treatment|patient|assessment", re.IGNORECASE)
EXAMPLE = Example("Which gas fills most of a semiconductor fab's clean-room air?", "Air is mostly N2.", "Nitrogen.")


class NoChatTemplate:
    """A base model's tokenizer: no chat template, so both ### templates and the fallback show."""

    chat_template = None
    eos_token = "</s>"


def test_the_vocabulary_is_written_once_and_labelled_for_the_ui():
    assert TEMPLATES == ("chat", "plain", "plain-neutral") and list(TEMPLATE_LABELS) == list(TEMPLATES)
    assert [t for t in TEMPLATES if is_plain_template(t)] == list(PLAIN_TEMPLATES)
    for template, words in PLAIN_TEMPLATES.items():  # each ### label names its own headers
        assert words.reasoning.strip("#: ") in TEMPLATE_LABELS[template]
        assert words.answer.strip("#: ") in TEMPLATE_LABELS[template]
    with pytest.raises(ValueError, match="template must be one of chat, plain, plain-neutral, not 'neutral'"):
        DataSettings(template="neutral")
    with pytest.raises(RecipeError, match="data: template must be one of"):
        with_changes(default_recipe("cpu"), {"data": {"template": "medical"}})
    assert with_changes(default_recipe("cpu"), {"data": {"template": "plain-neutral"}}).data.template == "plain-neutral"


def test_the_medical_template_is_byte_for_byte_the_seeds():
    prompt = build_prompt(NoChatTemplate(), "Q?", "plain", history=[("Earlier?", "Yes.")])
    assert prompt == (
        "### Role:\nYou are a medical expert with advanced knowledge in clinical reasoning, diagnostics, and "
        "treatment planning. Think through the question step by step, then give your clinical assessment.\n\n"
        "### Question:\nEarlier?\n\n### Clinical Assessment:\nYes.\n\n### Question:\nQ?\n\n### Thinking Process:\n"
    )
    assert build_completion(EXAMPLE, prompt, "plain", "</s>") == (
        "Air is mostly N2.\n### Clinical Assessment:\n\nNitrogen.</s>")
    assert effective_template("chat", NoChatTemplate()) == "plain"  # the fallback is unchanged too


def test_the_neutral_prompt_and_training_text_say_nothing_medical(tokenizer):
    row = tokenize_example(tokenizer, EXAMPLE, "plain-neutral", max_length=512)
    assert row.prompt == build_prompt(tokenizer, EXAMPLE.question, "plain-neutral")
    assert row.prompt.startswith("### Role:\nYou are an expert.") and row.prompt.endswith("### Reasoning:\n")
    assert row.completion == "Air is mostly N2.\n### Answer:\n\nNitrogen.<|im_end|>"
    assert not MEDICAL_WORDS.search(row.prompt + row.completion)
    chat = build_prompt(NoChatTemplate(), "Q?", "plain-neutral", history=[("Earlier?", "Yes.")])
    assert "### Answer:\nYes." in chat and not MEDICAL_WORDS.search(chat)


def test_a_run_trained_neutral_is_prompted_and_split_neutral():
    template = run_template({"dataset": {"template": "plain-neutral"}})  # what chat's and eval's "auto" read
    prompt = build_prompt(NoChatTemplate(), "Q?", template)
    open_tag, close_tag = reasoning_tags(template)
    assert (open_tag, close_tag) == ("### Reasoning:", "### Answer:") and prompt_opens_reasoning(prompt, template)
    thinking, answer, closed = split_think("Air is mostly N2.\n### Answer:\n\nNitrogen.", opened=True,
                                           open_tag=open_tag, close_tag=close_tag)
    assert (thinking, answer, closed) == ("Air is mostly N2.", "Nitrogen.", True)
    assert reasoning_tags("plain") == ("### Thinking Process:", "### Clinical Assessment:")


def test_the_suggested_template_follows_the_dataset():
    fab = RawRows("fab.jsonl", [{"question": "Why anneal a wafer?", "answer": "To repair the lattice."}] * 4,
                  ["question", "answer"])
    clinic = RawRows("cases.csv", [{"q": "A 45-year-old has chest pain. Diagnosis?", "a": "MI."}] * 4, ["q", "a"])
    hub = RawRows("FreedomIntelligence/medical-o1-reasoning-SFT:zh", [{"Question": "发热"}], ["Question"])
    assert suggested_template(read_source("sample")) == "plain"
    assert suggested_template(hub) == suggested_template(clinic) == "plain"
    assert suggested_template(fab) == "plain-neutral" and suggested_template(fab, "plain") == "plain-neutral"
    assert suggested_template(fab, "chat") == suggested_template(clinic, "chat") == "chat"  # chat stays chat


@pytest.mark.parametrize(("total", "held"), [(20, 2), (160, 16), (5000, HOLDOUT_CAP), (17, 0), (3, 0)])
def test_the_automatic_holdout_is_sized_to_the_data(total, held):
    plan = holdout_plan(total, None)
    assert (plan.held, plan.train, plan.automatic) == (held, total - held, True)
    assert len(holdout_indices(total, None)) == held


def test_an_explicit_holdout_wins_and_warns_when_it_takes_too_much():
    assert (holdout_plan(160, 8).held, holdout_plan(160, 8).automatic) == (8, False)  # a number wins
    assert holdout_plan(5000, 200).held == 200 and not holdout_plan(160, 8).warning
    assert holdout_plan(160, 0).held == 0 and holdout_indices(64, 8) == holdout_indices(64, 8)
    small = holdout_plan(20, 8, "up.jsonl")  # what the fixed 8 did to a 20-row upload
    assert small.train == 12 and small.warning == (
        f"up.jsonl: holding out 8 of 20 rows leaves only 12 rows to train on, and a run learns little from "
        f"fewer than {MIN_TRAIN_ROWS}: hold out fewer, or leave it automatic.")
    assert "40 of 100 rows (40%) are held out" in holdout_plan(100, 40).warning
    assert holdout_plan(12, None).warning == (
        f"only 12 rows to train on; a run learns little from fewer than {MIN_TRAIN_ROWS}.")
    with pytest.raises(DatasetError, match=r"^up\.jsonl: cannot hold out 20 of 20 rows: nothing would be left to "
                                           r"train on; hold out fewer, or leave the hold-out automatic$"):
        holdout_plan(20, 20, "up.jsonl")


def test_the_preview_says_what_is_held_out_and_what_is_left(tokenizer):
    raw = read_source("sample")
    rows = len(raw.rows)
    shown = preview_dataset(raw, DataSettings(holdout_rows=8))
    assert f"8 rows held out for evaluation, {rows - 8} left to train." in shown.summary()
    auto = preview_dataset(raw, DataSettings(holdout_rows=None), tokenizer, max_length=1024)
    held = rows // 10
    assert (f"{held} rows held out for evaluation (automatic: 10% of the rows, 2 to 50), {rows - held} left to "
            "train.") in auto.summary()
    assert auto.stats.rows == rows - held  # the lengths are those of the rows that train
    too_many = preview_dataset(raw, DataSettings(holdout_rows=rows)).summary()
    assert f"**Cannot hold out {rows} of {rows} rows: nothing would be left to train on" in too_many
    few = RawRows("few.jsonl", [{"question": f"q{i}", "answer": "a"} for i in range(10)], ["question", "answer"])
    summary = preview_dataset(few, DataSettings(holdout_rows=None)).summary()
    assert "No rows held out (too few rows to spare any): all 10 train" in summary
    assert "**Only 10 rows to train on; a run learns little from fewer than 16.**" in summary


def test_a_recipe_keeps_the_automatic_holdout(tmp_path):
    from finetune.train.recipe import load_recipe, save_recipe

    recipe = with_changes(default_recipe("cpu"), {"data": {"template": "plain-neutral"}})
    assert recipe.data.holdout_rows is None  # what the Train tab and the CLI start from
    save_recipe(recipe, tmp_path / "recipe.yaml")
    assert "holdout_rows: null" in (tmp_path / "recipe.yaml").read_text()
    again = load_recipe(tmp_path / "recipe.yaml", "cpu").data
    assert (again.holdout_rows, again.template) == (None, "plain-neutral")
