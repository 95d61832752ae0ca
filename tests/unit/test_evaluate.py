"""Evaluation: the chosen letter is read right, items load from each shape, and a tiny eval runs end to end."""

import dataclasses
import json

import pytest
from conftest import SHARED_SAMPLE, needs_shared, trained_looking_adapter

from finetune.data.sources import MCQ_FILE, SAMPLE_FILE, DatasetError, EvalItem, holdout_indices
from finetune.evaluate.heldout import EvalSettings, evaluate, extract_choice, item_rows, load_eval_items, summarize

OPTIONS = {"A": "Benign genetic carrier condition", "B": "Folate deficiency", "C": "Iron deficiency",
           "D": "Parvovirus B19 infection", "E": "Vitamin B12 deficiency"}


@pytest.mark.parametrize("answer,letter", [
    ("The answer is C.", "C"),
    ("Answer: (D)", "D"),
    ("**Answer: D**", "D"),
    ("the correct option is (c), because ...", "C"),
    ("The correct choice is e", "E"),
    ("final answer: b.", "B"),
    ("C. Iron deficiency", "C"),
    ("(B) Folate deficiency fits the smear.", "B"),
    ("D", "D"),
    ("A) Benign genetic carrier condition", "A"),
    ("It is not A; the answer is C.", "C"),  # the last "answer is" wins
    ("This is most likely a parvovirus B19 infection.", "D"),  # the option's text, not its letter
    ("Folate deficiency", "B"),
])
def test_the_chosen_letter_is_read_from_the_answer(answer, letter):
    assert extract_choice(answer, OPTIONS) == letter


@pytest.mark.parametrize("answer", [
    "",
    "I am not sure.",
    "the answer is a folate problem",  # "a" is an article here, not option A
    "A 45-year-old man with anaemia needs more tests.",  # a sentence starting with the article A
    "Iron deficiency or folate deficiency",  # two options named: unanswerable
    "The answer is F.",  # not one of the options
])
def test_an_unanswerable_output_has_no_choice(answer):
    assert extract_choice(answer, OPTIONS) is None


def test_the_longer_option_wins_when_it_contains_the_shorter():
    options = {"A": "Anemia", "B": "Iron deficiency anemia", "C": "Sepsis"}
    assert extract_choice("This is iron deficiency anemia.", options) == "B"


def test_items_from_each_shape(tmp_path):
    bundled = load_eval_items(str(MCQ_FILE))
    assert bundled[0].options and bundled[0].gold in bundled[0].options and not bundled[0].has_reference
    assert bundled[0].prompt_question.startswith("Please answer the following multiple-choice question:\n")
    assert "\nA. " in bundled[0].prompt_question and "\nD. " in bundled[0].prompt_question
    plain = tmp_path / "plain.jsonl"  # Question/Response only: no reasoning, no options
    plain.write_text(json.dumps({"Question": "What is sepsis?", "Response": "A dysregulated response."}) + "\n")
    (item,) = load_eval_items(str(plain))
    assert item.options is None and item.has_reference and item.reasoning == ""
    listed = tmp_path / "listed.jsonl"  # options as a list, the gold as a 0-based index, no answer text
    listed.write_text(json.dumps({"question": "Q?", "options": ["x", "y", "z"], "answer_idx": 2}) + "\n")
    assert load_eval_items(str(listed))[0].gold == "C"


@needs_shared(SHARED_SAMPLE)
def test_medical_o1_rows_are_multiple_choice_items_with_a_reference():
    shared = load_eval_items(str(SHARED_SAMPLE), limit=5)
    assert len(shared) == 5 and all(i.options and i.gold and i.has_reference and i.reasoning for i in shared)


def test_options_without_a_usable_answer_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "options": {"A": "x", "B": "y"}, "answer_idx": "Q"}) + "\n")
    with pytest.raises(DatasetError, match="row 1: has options but no answer_idx"):
        load_eval_items(str(bad))


def test_holdout_is_fixed_and_leaves_rows_to_train():
    assert holdout_indices(64, 8) == holdout_indices(64, 8) and len(set(holdout_indices(64, 8))) == 8
    with pytest.raises(DatasetError, match="nothing would be left"):
        holdout_indices(8, 8)


def test_summary_counts_format_and_accuracy():
    from finetune.evaluate.heldout import ItemResult

    def result(ok, choice, gold="A"):
        return ItemResult(0, "q", gold, "r", "a" if ok else "", ok, choice, choice == gold, 10, 4, 1.0)

    figures = summarize([result(True, "A"), result(True, "B"), result(False, None), result(True, "A")], 2.0, 50)
    assert figures["format_adherence"] == 0.75 and figures["mcq_accuracy"] == 0.5
    assert figures["perplexity"] == pytest.approx(7.39, abs=0.01) and figures["n"] == 4


@pytest.mark.slow
def test_tiny_eval_end_to_end_base_and_finetuned(loaded):
    # Two bundled vignettes (a reference answer, no options) and one bundled multiple-choice question.
    items = load_eval_items(str(SAMPLE_FILE), limit=2) + load_eval_items(str(MCQ_FILE), limit=1)
    trained_looking_adapter(loaded, std=0.05)  # so the two models differ
    progress = []
    report = evaluate(loaded, items, EvalSettings(max_new_tokens=8, batch_size=2, max_length=256),
                      on_progress=lambda *p: progress.append(p))
    base, tuned = report.metrics["base"], report.metrics["finetuned"]
    assert base["n"] == tuned["n"] == 3 and base["mcq_n"] == 1
    assert base["heldout_loss"] > 0 and base["loss_tokens"] > 0  # the two rows with a reference answer
    assert base["heldout_loss"] != tuned["heldout_loss"]
    assert 0 <= base["format_adherence"] <= 1 and 0 <= base["mcq_accuracy"] <= 1
    assert ("base", 2, 3) in progress and ("finetuned", 3, 3) in progress
    rows = item_rows(report)
    assert len(rows) == 3 and rows[2]["gold"] == items[2].gold and "answer" in rows[2]["finetuned"]


@pytest.mark.slow
def test_fast_batched_answers_are_generates_answers(loaded):
    """Greedy answers of the fast decoder, a batch at a time, are those of transformers' generate, for
    base and fine-tuned; the report says which path wrote them."""
    items = load_eval_items(str(SAMPLE_FILE), limit=3)
    trained_looking_adapter(loaded, std=0.3)  # large enough to change the greedy answers
    # The plain template opens the reasoning in the prompt, so an unfinished answer is all reasoning text.
    settings = EvalSettings(max_new_tokens=12, batch_size=2, temperature=0.0, template="plain", max_length=256)
    fast = evaluate(loaded, items, settings)
    slow = evaluate(loaded, items, dataclasses.replace(settings, fast=False))
    for name in ("base", "finetuned"):
        assert all(r.reasoning_tokens > 5 for r in fast.items[name])
        assert [r.reasoning for r in fast.items[name]] == [r.reasoning for r in slow.items[name]]
        assert fast.metrics[name]["decoder"].startswith("fast decoder") and "batch 2" in fast.metrics[name]["decoder"]
        assert slow.metrics[name]["decoder"] == "transformers generate"
    # The fine-tuned answers differ from the base ones: the fast decoder merged the adapter in.
    assert [r.reasoning for r in fast.items["base"]] != [r.reasoning for r in fast.items["finetuned"]]


def test_stop_ends_the_eval_and_says_so(loaded):
    import threading

    stop = threading.Event()
    items = [EvalItem(f"What is condition {i}?") for i in range(4)]
    report = evaluate(loaded, items, EvalSettings(max_new_tokens=4, batch_size=1), stop=stop,
                      on_progress=lambda *p: stop.set())
    assert report.stopped and report.metrics["base"]["n"] == 1
