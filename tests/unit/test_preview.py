"""The Dataset tab's engine: uploads are checked once, columns can be re-mapped, and the preview shows
exactly what a run trains on, with the truncated rows counted."""

import json

import pytest
from conftest import SHARED_SAMPLE, needs_shared

from finetune.config import DataSettings
from finetune.data.prompts import prepare_dataset
from finetune.data.sources import DatasetError, read_source
from ui.presenters import length_histogram
from ui.preview import preview_dataset, read_dataset, read_upload


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_wrong_file_type_is_refused_by_name(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("Question: ...")
    with pytest.raises(DatasetError, match=r"notes\.txt: unsupported file type '\.txt'.*\.jsonl"):
        read_upload(notes)


def test_oversized_upload_is_refused_before_reading(tmp_path):
    big = write_jsonl(tmp_path / "big.jsonl", [{"question": "q" * 1000, "answer": "a"}] * 1200)
    with pytest.raises(DatasetError, match=r"big\.jsonl: 1 MB is over the 0\.5 MB upload limit"):
        read_upload(big, max_mb=0.5)


def test_no_upload_yet_says_so():
    with pytest.raises(DatasetError, match="No file uploaded yet"):
        read_dataset("upload", None)


def test_missing_column_names_the_role_and_lists_the_columns(tmp_path):
    raw = read_upload(write_jsonl(tmp_path / "cases.jsonl", [{"prompt_text": "q", "Complex_CoT": "r"}]))
    assert raw.detected() == {"reasoning": "Complex_CoT"}
    with pytest.raises(DatasetError, match=r"missing column for the question and the answer; columns found: "
                                           r"prompt_text, Complex_CoT"):
        preview_dataset(raw, DataSettings())


def test_columns_the_detection_missed_can_be_mapped_by_hand(tmp_path):
    rows = [{"case": "Fever and rash?", "why": "Think of meningococcus.", "plan": "Ceftriaxone now."}]
    raw = read_upload(write_jsonl(tmp_path / "odd.jsonl", rows))
    shown = preview_dataset(raw, DataSettings(columns={"question": "case", "reasoning": "why", "answer": "plan"}))
    assert shown.mapping == {"question": "case", "reasoning": "why", "answer": "plan"}
    assert shown.table == [["Fever and rash?", "Think of meningococcus.", "Ceftriaxone now."]]
    assert shown.stats is None and "Load a model" in shown.summary()


def test_preview_text_is_the_training_text_with_only_the_completion_trained(tokenizer):
    raw = read_source("sample")
    shown = preview_dataset(raw, DataSettings(template="plain"), tokenizer, max_length=2048, row_index=2)
    prepared = prepare_dataset(DataSettings(template="plain"), tokenizer, 2048)
    row = prepared.rows[2]
    assert "".join(text for text, _ in shown.segments) == row.prompt + row.completion
    trained = [text for text, is_trained in shown.segments if is_trained]
    assert trained == [row.completion]
    assert "### Thinking Process:" in row.prompt and "### Clinical Assessment:" in row.completion


def test_truncated_rows_are_counted_and_binned_apart(tokenizer):
    shown = preview_dataset(read_source("sample"), DataSettings(), tokenizer, max_length=384)
    prepared = prepare_dataset(DataSettings(), tokenizer, 384)
    over = sum(length > 384 for length in prepared.lengths)
    assert over > 0 and shown.stats.truncated == over
    assert f"{over} of {shown.stats.rows} rows are longer than 384 tokens" in shown.summary()
    bins = {b["tokens"]: b for b in shown.histogram}
    assert bins["> 384"] == {"tokens": "> 384", "rows": over, "fits": "truncated"}
    assert sum(b["rows"] for b in shown.histogram) == len(prepared.lengths)


def test_histogram_bins_cover_each_length_once():
    bins = length_histogram([1, 64, 65, 512, 513, 9000], max_length=512, bins=8)
    assert [b["tokens"] for b in bins][:2] == ["1–64", "65–128"] and bins[-1]["tokens"] == "> 512"
    assert [b["rows"] for b in bins] == [2, 1, 0, 0, 0, 0, 0, 1, 2]


@needs_shared(SHARED_SAMPLE)
def test_real_medical_o1_rows_preview(tokenizer, tmp_path):
    raw = read_upload(SHARED_SAMPLE)
    shown = preview_dataset(raw, DataSettings(), tokenizer, max_length=1024)
    assert shown.mapping == {"question": "Question", "reasoning": "Complex_CoT", "answer": "Response"}
    assert shown.rows == len(raw.rows) and shown.stats.rows + shown.stats.dropped == len(raw.rows)
