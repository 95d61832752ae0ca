"""What an upload may become once read: rows, cells, characters and decoded size are bounded in every
format while the file is read (Parquet: from its metadata first), so a small file cannot expand into
gigabytes of the shared app's memory, and a refused one leaves nothing behind."""

import csv
import io
import json
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from finetune.data import sources as data_module
from finetune.data.sources import DatasetError, ReadLimits, read_hub_dataset, read_records
from finetune.evaluate.heldout import load_eval_items
from ui.preview import read_upload

LIMIT_MESSAGES = {  # how each refusal names its limit
    "rows": r"more than {:,} rows \(the limit here is {:,}\)",
    "cells": r"more than {:,} cells, rows times columns \(the limit here is {:,}\)",
    "characters": r"its text comes to more than {:,} characters \(the limit here is {:,}\)",
    "decoded_mb": r"decompresses to more than {:,} MB \(the limit here is {:,} MB\)",
}
UPLOAD_ADVICE = "; upload a smaller file or split it$"


def refusal(name: str, limit: str, value: int) -> str:
    return "^" + name.replace(".", r"\.") + ": " + LIMIT_MESSAGES[limit].format(value, value) + UPLOAD_ADVICE


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """The most the process's resident memory rose above its start while the block ran, sampled."""

    def __enter__(self):
        self.start = self.peak = resident_mb()
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample)
        self._sampler.start()
        return self

    def _sample(self):
        while not self._done.is_set():
            self.peak = max(self.peak, resident_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._done.set()
        self._sampler.join()
        self.peak = max(self.peak, resident_mb())
        self.rise, self.left = self.peak - self.start, resident_mb() - self.start


def parquet_bomb(path: Path, rows: int = 5_000_000) -> Path:
    """Millions of identical rows, dictionary-encoded and compressed: a few dozen KB on disk (and over
    1 GB of Python rows when read in full, as the app did)."""
    column = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array(["What is sepsis? " * 4]))
    pq.write_table(pa.table({"Question": column, "Response": column}), path, compression="zstd")
    return path


# ---------------------------------------------------------------------------------------------
# The limits themselves


def test_the_limits_have_their_defaults_and_refuse_a_value_below_one():
    assert ReadLimits() == ReadLimits(rows=100_000, cells=2_000_000, characters=200_000_000, decoded_mb=512)
    for field in ("rows", "cells", "characters", "decoded_mb"):
        for wrong in (0, -1, 2.5, True, None):
            with pytest.raises(ValueError, match=f"the read limit {field} must be a whole number of at least 1"):
                ReadLimits(**{field: wrong})


# ---------------------------------------------------------------------------------------------
# Parquet


def test_a_parquet_bomb_is_refused_from_its_metadata_and_memory_stays(tmp_path):
    bomb = parquet_bomb(tmp_path / "bomb.parquet")
    assert bomb.stat().st_size < 100_000
    with PeakMemory() as memory, pytest.raises(DatasetError, match=refusal("bomb.parquet", "rows", 100_000)):
        read_upload(bomb)
    assert memory.rise < 200 and memory.left < 200, (memory.rise, memory.left)  # read whole: 1.1 GB, 200 MB kept


def test_parquet_whose_metadata_understates_is_stopped_batch_by_batch(tmp_path, monkeypatch):
    """Metadata can lie: rows, cells and decoded bytes are counted again as the batches come."""
    bomb = parquet_bomb(tmp_path / "bomb.parquet")
    monkeypatch.setattr(data_module, "_check_parquet_metadata", lambda *args: None)  # as if it said nothing
    with PeakMemory() as memory, pytest.raises(DatasetError, match=refusal("bomb.parquet", "rows", 100_000)):
        read_records(bomb)
    assert memory.rise < 200, memory.rise
    with pytest.raises(DatasetError, match=refusal("bomb.parquet", "cells", 1_000)):
        read_records(bomb, ReadLimits(cells=1_000))


def test_parquet_text_past_the_characters_limit_is_refused_while_read(tmp_path):
    """40 cells of 6M characters: 240M in all, past the 200M limit, from a file of a few KB whose metadata
    (rows, cells, size uncompressed: the value is stored once) is well within the limits. Text is read as
    dictionaries, so the value is held once while its rows are counted."""
    path = tmp_path / "long.parquet"
    text = pa.DictionaryArray.from_arrays(pa.array([0] * 40, pa.int32()), pa.array(["fever and rash " * 400_000]))
    pq.write_table(pa.table({"Question": text, "Response": ["ok"] * 40}), path, compression="zstd")
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_rows == 40 and metadata.row_group(0).total_byte_size < 10 * 2**20
    with PeakMemory() as memory, pytest.raises(DatasetError, match=refusal("long.parquet", "characters", 200_000_000)):
        read_records(path)
    assert memory.rise < 200, memory.rise  # decoded in full: 240 MB of Arrow text, as much again in Python


def test_parquet_limits_are_checked_on_the_metadata_and_files_within_them_read_as_before(tmp_path):
    path = tmp_path / "cases.parquet"
    rows = [{"Question": f"q{n}", "Response": "a" * 100, "turns": [n, n]} for n in range(20)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    characters = sum(len(row["Question"]) + len(row["Response"]) for row in rows)  # 2,050
    # Cells: 20 rows of 3 columns, but the lists' 40 values count too (each becomes a Python object): 80.
    assert read_records(path) == read_records(path, ReadLimits(rows=20, cells=80, characters=characters)) == rows
    with pytest.raises(DatasetError, match=refusal("cases.parquet", "rows", 19)):
        read_records(path, ReadLimits(rows=19))
    with pytest.raises(DatasetError, match=refusal("cases.parquet", "cells", 79)):
        read_records(path, ReadLimits(cells=79))
    with pytest.raises(DatasetError, match=refusal("cases.parquet", "characters", characters - 1)):
        read_records(path, ReadLimits(characters=characters - 1))


def test_a_parquet_column_of_long_lists_counts_each_value_as_a_cell(tmp_path):
    """Ten rows of one column, but 100,000 values: each would be a Python object."""
    path = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"Question": ["q"] * 10, "scores": [[0] * 10_000] * 10}), path)
    with pytest.raises(DatasetError, match=refusal("lists.parquet", "cells", 50_000)):
        read_records(path, ReadLimits(cells=50_000))


def test_parquet_decompressing_past_the_size_limit_is_refused(tmp_path):
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"Question": [os.urandom(600_000).hex() for _ in range(2)]}), path)  # 2.3 MB of text
    with pytest.raises(DatasetError, match=refusal("wide.parquet", "decoded_mb", 1)):
        read_records(path, ReadLimits(decoded_mb=1))


# ---------------------------------------------------------------------------------------------
# Text formats


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.name.endswith("wrapped.json"):
        path.write_text(json.dumps({"info": "cases", "data": rows}))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(text.getvalue())
    return path


FORMATS = ["cases.jsonl", "cases.json", "cases-wrapped.json", "cases.csv"]
ROWS = [{"Question": f"question {n}", "Complex_CoT": "reasoning " * 10, "Response": f"answer {n}"} for n in range(30)]
CELLS = 90
CHARACTERS = sum(len(text) for row in ROWS for text in row.values())  # JSON counts each row as written: more


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize(("limit", "value"), [("rows", 29), ("cells", 89), ("characters", CHARACTERS - 1)])
def test_each_text_format_is_refused_past_each_limit_naming_it(tmp_path, name, limit, value):
    path = write(tmp_path / name, ROWS)
    with pytest.raises(DatasetError, match=refusal(name, limit, value)):
        read_records(path, ReadLimits(**{limit: value}))
    assert read_records(path, ReadLimits(rows=30, cells=CELLS)) == read_records(path) == ROWS  # at the limits


def test_a_text_file_past_the_decoded_size_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = write(tmp_path / "cases.jsonl", ROWS * 400)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read"))
    with pytest.raises(DatasetError, match=r"^cases\.jsonl: more than 1 MB of text \(the limit here is 1 MB\);"):
        read_records(path, ReadLimits(decoded_mb=1))


def test_a_json_of_a_million_empty_rows_is_refused_without_building_them(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("[" + ",".join(["{}"] * 1_000_000) + "]")
    with PeakMemory() as memory, pytest.raises(DatasetError, match=refusal("empty.json", "rows", 1_000)):
        read_records(path, ReadLimits(rows=1_000))
    assert memory.rise < 40, memory.rise  # a million dicts at once are over 70 MB


@pytest.mark.parametrize(("name", "content"), [
    ("nested.json", json.dumps([{"Question": [[]] * 5_000, "Response": "a"}])),
    ("nested-wrapped.json", json.dumps({"data": [{"Question": "q", "Response": {str(n): n for n in range(5_000)}}]})),
    ("nested.jsonl", json.dumps({"Question": [{}] * 5_000, "Response": "a"}) + "\n"),
], ids=["json", "wrapped-json", "jsonl"])
def test_json_values_nested_in_one_row_count_as_cells_before_any_is_built(tmp_path, monkeypatch, name, content):
    """One row of two cells can nest millions of values, each a Python object: counted before decoding."""
    (tmp_path / name).write_text(content)
    monkeypatch.setattr(data_module._DECODER, "raw_decode", lambda *args: pytest.fail("decoded"))
    monkeypatch.setattr(data_module.json, "loads", lambda *args: pytest.fail("decoded"))
    with pytest.raises(DatasetError, match=refusal(name, "cells", 1_000)):
        read_records(tmp_path / name, ReadLimits(rows=10, cells=1_000))


def test_a_csv_line_of_more_cells_than_the_limit_is_refused_before_it_is_split(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(",".join(f"c{n}" for n in range(5_000)) + "\nq,a\n")  # the header alone: 5,000 names
    with pytest.raises(DatasetError, match=refusal("wide.csv", "cells", 1_000)):
        read_records(path, ReadLimits(cells=1_000))


# The hand-read JSON keeps json's own messages: the same error at the same line and column.
MALFORMED = ['[{"a": 1},\n{"a": oops}]', "[1 2]", "[1,]", "[", "[1", "[1]x", ' [1] \n ]', '{"data": [1], "x"}',
             '{"data" [1]}', '{"data": [1],}', '{"data": [1]', "{", '{"a": 1 "b": 2}', '{"a":\n[{"b": nope}]}',
             "[{}, {}] []", '{"a": "\x01"}', '[{"a": "b\\x"}]', "\ufeff[]", "[" * 100_000]


@pytest.mark.parametrize("text", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_json_reads_with_jsons_own_message(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text("\ufeff" + text)  # the reader takes one BOM off, as utf-8-sig does
    with pytest.raises(DatasetError) as err:
        read_records(path)
    try:
        json.loads(text)
    except json.JSONDecodeError as expected:
        assert str(err.value) == f"bad.json: malformed JSON on line {expected.lineno}: {expected.msg} " \
                                 f"(column {expected.colno})"
    except RecursionError:
        assert str(err.value) == "bad.json: the file nests lists or objects too deeply to read"


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
                           max_leaves=10)


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(document=json_values | st.lists(json_values, max_size=4) | st.dictionaries(st.text(), json_values, max_size=4),
       cut=st.integers(0, 400), spaces=st.sampled_from(["", " ", "\n", " \r\n\t"]))
@example(document={"data": [{"a": [1, {"b": "c"}]}], "n": 2}, cut=400, spaces=" \r\n\t")
def test_the_hand_read_json_is_json(document, cut, spaces):
    """Whole, or cut short anywhere: the same value as json.loads, or the same error at the same place."""
    text = json.dumps(document, indent=1 if spaces else None).replace("\n", "\n" + spaces)[:cut]
    tally = data_module._Tally("t.json", ReadLimits())
    try:
        expected = json.loads(text)
    except json.JSONDecodeError as err:
        with pytest.raises(json.JSONDecodeError) as got:
            data_module._json_document(text, tally)
        assert (got.value.msg, got.value.pos) == (err.msg, err.pos)
    else:
        assert data_module._json_document(text, tally) == expected


@pytest.mark.parametrize("text", ['{"data": [1], "data": 2}', '{"data": 2, "data": [{}]}', " [ ] ", '{"a": {"b": []}}'])
def test_the_hand_read_json_keeps_the_last_of_repeated_keys_as_json_does(text):
    assert data_module._json_document(text, data_module._Tally("t.json", ReadLimits())) == json.loads(text)


# ---------------------------------------------------------------------------------------------
# Hub slices and the evaluation reader


@pytest.mark.parametrize(("limits", "message"), [
    (ReadLimits(rows=10), r"more than 10 rows \(the limit here is 10\)"),
    (ReadLimits(cells=80), r"more than 80 cells, rows times columns \(the limit here is 80\)"),
    (ReadLimits(characters=CHARACTERS - 1), f"its text comes to more than {CHARACTERS - 1:,} characters "
                                            rf"\(the limit here is {CHARACTERS - 1:,}\)"),
], ids=["rows", "cells", "characters"])
def test_a_hub_slice_past_the_limits_is_refused_before_its_rows_become_python(monkeypatch, limits, message):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: dataset)
    monkeypatch.setattr(data_module, "hub_reachable", lambda: True)
    monkeypatch.setattr(dataset, "to_list", lambda: pytest.fail("the rows were built"))
    with pytest.raises(DatasetError, match=rf"^Dataset org/cases \(en, train\): {message}; "
                                           r"pick a smaller slice, e\.g\. train\[0:500\]$"):
        read_hub_dataset("org/cases", "en", "train", limits)
    monkeypatch.undo()
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: dataset)
    monkeypatch.setattr(data_module, "hub_reachable", lambda: True)
    assert read_hub_dataset("org/cases", "en", "train", ReadLimits(rows=30, cells=90)) == ROWS


def test_the_evaluation_reader_is_bounded_too(tmp_path):
    path = write(tmp_path / "questions.jsonl", ROWS)
    with pytest.raises(DatasetError, match=refusal("questions.jsonl", "rows", 5)):
        load_eval_items(str(path), limits=ReadLimits(rows=5))
    assert len(load_eval_items(str(path))) == 30
    with pytest.raises(DatasetError, match=refusal("bomb.parquet", "rows", 100_000)):  # the default limits
        load_eval_items(str(parquet_bomb(tmp_path / "bomb.parquet")))


def test_a_hub_slice_past_the_decoded_size_is_refused_on_its_arrow_data(monkeypatch):
    import datasets

    dataset = datasets.Dataset.from_list([{"Question": "q" * 700_000, "Response": "a"}] * 2)  # 1.3 MB of Arrow
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: dataset)
    monkeypatch.setattr(data_module, "hub_reachable", lambda: True)
    monkeypatch.setattr(dataset, "to_list", lambda: pytest.fail("the rows were built"))
    with pytest.raises(DatasetError, match=r"^Dataset org/cases \(en, train\): decompresses to more than 1 MB "
                                           r"\(the limit here is 1 MB\); pick a smaller slice, e\.g\. train\[0:500\]$"):
        read_hub_dataset("org/cases", "en", "train", ReadLimits(decoded_mb=1))
