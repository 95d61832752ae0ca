"""Reading datasets: every supported shape maps to question/reasoning/answer, and every bad input
gets one sentence naming the file, the line or row, and the column."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune.data.sources import MCQ_FILE, SAMPLE_FILE, DatasetError, load_examples, read_records

ROW = {
    "Question": "Chest pain, ST elevation II, III, aVF. Next step?",
    "Complex_CoT": "Inferior MI.",
    "Response": "PCI.",
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_bundled_sample_is_large_enough_and_labelled():
    vignettes = read_records(SAMPLE_FILE)
    mcq = read_records(MCQ_FILE)
    assert len(vignettes) >= 60 and all(r["Question"] and r["Complex_CoT"] and r["Response"] for r in vignettes)
    assert len(mcq) >= 40 and all(r["answer"] in r["options"] for r in mcq)
    assert "not medical advice" in (SAMPLE_FILE.parent / "README.md").read_text().lower()


def test_sample_preset_maps_medical_o1_columns():
    loaded = load_examples("sample")
    assert loaded.mapping.as_dict() == {"question": "Question", "reasoning": "Complex_CoT", "answer": "Response"}
    assert loaded.examples[0].reasoning == read_records(SAMPLE_FILE)[0]["Complex_CoT"]


def test_bundled_sample_has_medical_o1s_shape_and_lettered_answers_the_evaluation_reads():
    import re
    import statistics
    from collections import Counter

    from finetune.data.sources import MCQ_INSTRUCTION
    from finetune.evaluate.heldout import extract_choice

    rows = read_records(SAMPLE_FILE)
    open_rows = [r for r in rows if not r["Question"].startswith(MCQ_INSTRUCTION)]
    assert 1800 <= statistics.median(len(r["Complex_CoT"]) for r in open_rows) <= 2800  # medical-o1: about 2,260
    assert 400 <= statistics.median(len(r["Response"]) for r in open_rows) <= 900  # medical-o1: about 620
    openings = Counter(r["Complex_CoT"].split(".")[0] for r in rows)
    assert len(openings) > len(rows) / 2 and openings.most_common(1)[0][1] < len(rows) / 10
    lettered = [r for r in rows if r["Question"].startswith(MCQ_INSTRUCTION)]
    assert len(lettered) >= len(rows) / 5
    for row in lettered:
        options = dict(re.findall(r"^([A-D])\. (.+)$", row["Question"], re.M))
        assert list(options) == ["A", "B", "C", "D"], row["Question"]
        assert extract_choice(row["Response"], options) is not None, row["Response"][:80]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"question": "Q?", "reasoning": "R.", "answer": "A."}, ("Q?", "R.", "A.")),
        ({"input": "Q?", "output": "A."}, ("Q?", "", "A.")),  # no reasoning column: no think block trained
        ({"instruction": "Q?", "input": "Extra context.", "output": "A."}, ("Q?\n\nExtra context.", "", "A.")),
        (
            {
                "messages": [
                    {"role": "user", "content": "Q?"},
                    {"role": "assistant", "content": "<think>\nR.\n</think>\n\nA."},
                ]
            },
            ("Q?", "R.", "A."),
        ),
    ],
)
def test_column_shapes_are_detected(tmp_path, row, expected):
    loaded = load_examples(str(write_jsonl(tmp_path / "d.jsonl", [row])))
    example = loaded.examples[0]
    assert (example.question, example.reasoning, example.answer) == expected


def test_column_override_wins_over_detection(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"case": "Q?", "why": "R.", "verdict": "A.", "answer": "wrong"}])
    loaded = load_examples(str(path), columns={"question": "case", "reasoning": "why", "answer": "verdict"})
    assert (loaded.examples[0].question, loaded.examples[0].answer) == ("Q?", "A.")


def test_json_csv_and_parquet_files_read_the_same(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"data": [ROW]}))
    (tmp_path / "d.csv").write_text(
        'Question,Complex_CoT,Response\n"Chest pain, ST elevation II, III, aVF. Next step?",Inferior MI.,PCI.\n'
    )
    pq.write_table(pa.Table.from_pylist([ROW]), tmp_path / "d.parquet")
    for name in ("d.json", "d.csv", "d.parquet"):
        example = load_examples(str(tmp_path / name)).examples[0]
        assert (example.question, example.reasoning, example.answer) == tuple(ROW.values()), name


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", b"", "empty.jsonl: the file is empty"),
        ("bad.jsonl", b'{"Question": "a", "Response": "b"}\n{"Question": oops}\n', "malformed JSON on line 2"),
        ("latin1.jsonl", '{"Question": "café", "Response": "b"}\n'.encode("latin-1"), "not UTF-8 text"),
        ("data.txt", b"hello", "unsupported file type '.txt'"),
        ("list.jsonl", b'["a", "b"]\n', "line 1 is a JSON list, expected an object"),
        ("cells.csv", b"Question,Response\na,b,c\n", "line 2 has more cells than the header"),
    ],
)
def test_unreadable_files_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DatasetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_examples(str(tmp_path / name))


def test_missing_columns_lists_the_columns_found(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"title": "x", "body": "y"}])
    with pytest.raises(DatasetError) as err:
        load_examples(str(path))
    assert "missing column for the question and the answer" in str(err.value)
    assert "columns found: title, body" in str(err.value)


def test_empty_cell_names_row_and_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROW, {**ROW, "Response": "  "}])
    with pytest.raises(DatasetError, match="row 2, column 'Response' is empty"):
        load_examples(str(path))


def test_unclosed_think_in_messages_is_reported(tmp_path):
    row = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>never closed"}]}
    with pytest.raises(DatasetError, match="row 1, column 'messages'.*never closed"):
        load_examples(str(write_jsonl(tmp_path / "d.jsonl", [row])))


def test_override_naming_an_absent_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROW])
    with pytest.raises(DatasetError, match="column 'Answer' \\(for answer\\) not found; columns found: Question"):
        load_examples(str(path), columns={"answer": "Answer"})


@pytest.mark.slow
def test_hub_dataset_offline_gives_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetError, match="FreedomIntelligence/medical-o1-reasoning-SFT"):
        load_examples("medical-o1")
