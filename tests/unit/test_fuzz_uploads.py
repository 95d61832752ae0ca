"""Fuzzed uploads: whatever a visitor uploads, the Dataset tab answers with a preview or one sentence
naming the file, and so do Start (its held-out split) and the Evaluate tab; never a traceback.

Hypothesis writes the files: random and damaged bytes under any name, valid datasets of each supported
shape with a few cells, keys or rows spoiled by values of every type, CSV in foreign dialects, Parquet
with nested, binary and out-of-range columns. Each bug it found stays as an @example of the property
that found it. Derandomized and without an example database: CI sees the same examples every run.
`pytest --hypothesis-show-statistics` shows how far the examples get (previewed, or refused where).
"""

import csv
import io
import itertools
import json
import re
import string
from datetime import timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, example, given, reject, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from finetune.config import DataSettings
from finetune.data.prompts import tokenize_rows
from finetune.data.sources import ColumnMap, DatasetError, eval_items, map_columns, to_examples
from finetune.evaluate.heldout import load_eval_items
from ui.errors import VISITOR_ERRORS
from ui.preview import preview_dataset, read_dataset, read_upload

MAX_LENGTH = 256  # tokens, as the app's Max length field: the preview and training text are cut here
HOLDOUT = 2  # rows Start holds out: smaller files must be refused by name, larger ones split
FUZZ = settings(
    max_examples=100,
    deadline=timedelta(seconds=10),  # generous on two busy cores; only a pathological slowdown trips it
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
)


# ---------------------------------------------------------------------------------------------
# The property


def sendable(*values) -> None:
    """Gradio sends what a handler returns as JSON: every string must be valid UTF-8 (no lone surrogate)."""
    json.dumps(values, ensure_ascii=False, default=str).encode("utf-8")


def assert_refusal(err: Exception, name: str, folder=None) -> None:
    """A message that names the file, can be sent, and keeps the server's folders to itself."""
    message = str(err)
    assert message.strip() and name in message, f"{type(err).__name__} without the file's name: {message!r}"
    assert folder is None or str(folder) not in message, message
    sendable(message)


def check_upload(path, tokenizer, template: str = "chat", columns: dict | None = None) -> str:
    """What the app does with an uploaded file: read it (Dataset tab), preview it with the tokenizer,
    prepare it for Start with rows held out, and read it as evaluation items (Evaluate tab). Each step
    works or refuses with a message naming the file; any other exception fails the test.
    Returns 'previewed', or the preview's refusal."""
    name = path.name
    try:
        raw = read_dataset("upload", str(path))
        sendable(raw.columns, raw.detected())
        shown = preview_dataset(raw, DataSettings(template=template, columns=columns or {}), tokenizer, MAX_LENGTH)
        sendable(shown.summary(), shown.table, shown.segments, shown.histogram)
        outcome = "previewed"
    except VISITOR_ERRORS as err:
        assert_refusal(err, name, path.parent)
        outcome = str(err)
    else:
        try:
            prepared = tokenize_rows(shown.loaded, DataSettings(template=template, holdout_rows=HOLDOUT), tokenizer,
                                     MAX_LENGTH)
            sendable([item.prompt_question for item in prepared.heldout])
        except VISITOR_ERRORS as err:
            assert_refusal(err, name, path.parent)
    if currently_in_test_context():  # 'previewed', or the refusal's first words without its numbers
        words = outcome.split(": ", 1)[-1].split()[:5]
        event(re.sub(r"0x\w+|(?<![\w-])\d+", "N", " ".join(words)))
    try:
        items = load_eval_items(str(path), limit=8)
        sendable([(item.prompt_question, item.reasoning, item.answer, item.gold) for item in items])
    except VISITOR_ERRORS as err:
        assert_refusal(err, name, path.parent)
    return outcome


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A fresh folder per example: the file's name is part of what is checked."""
    root = tmp_path_factory.mktemp("fuzz")
    counter = itertools.count()

    def fresh():
        folder = root / str(next(counter))
        folder.mkdir()
        return folder

    return fresh


# ---------------------------------------------------------------------------------------------
# Strategies: text and values

good_text = st.text(min_size=1, max_size=30).filter(str.strip)
# Text with what broke readers before: line separators JSON allows inside strings, NUL, BOM, halves of
# surrogate pairs (valid in a Python str, not in UTF-8), think tags, blank space.
ODD_PIECES = ["\ud800", "\udfff", "\u2028", "\u2029", "\x85", "\x00", "\ufeff", "\r", "\n", "\t", " ", "<think>",
              "</think>", ",", '"', "é", "患者", "🩺"]
odd_text = st.lists(st.characters() | st.sampled_from(ODD_PIECES), max_size=12).map("".join)
long_text = st.builds(lambda piece, times: piece * times, st.text(min_size=1, max_size=4), st.integers(500, 20_000))
scalars = st.none() | st.booleans() | st.integers() | st.floats() | odd_text | long_text
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(odd_text, kids, max_size=3),
                      max_leaves=8)
KEYS = ["Question", "Complex_CoT", "Response", "question", "reasoning", "answer", "input", "output", "instruction",
        "context", "prompt", "messages", "conversations", "options", "answer_idx", "QUESTION", ""]
keys = st.sampled_from(KEYS) | odd_text


# ---------------------------------------------------------------------------------------------
# Strategies: valid rows of each supported shape, then a few spoiled


CHAT_KEYS = [("role", "content", "user", "assistant"), ("from", "value", "human", "gpt")]  # OpenAI, ShareGPT


@st.composite
def chat_messages(draw, styles=CHAT_KEYS) -> list[dict]:
    role, content, user, assistant = draw(st.sampled_from(styles))
    reply = draw(good_text | st.builds("<think>\n{}\n</think>\n\n{}".format, good_text, good_text))
    system = [{role: "system", content: draw(good_text)}] if draw(st.booleans()) else []
    return [*system, {role: user, content: draw(good_text)}, {role: assistant, content: reply}]


@st.composite
def mcq_row(draw) -> dict:
    texts = draw(st.lists(good_text, min_size=2, max_size=5, unique_by=lambda text: text.strip().lower()))
    pick = draw(st.integers(0, len(texts) - 1))
    listed = draw(st.booleans())
    options = texts if listed else {chr(ord("A") + i): text for i, text in enumerate(texts)}
    answer = draw(st.sampled_from([{"answer_idx": pick}, {"answer_idx": chr(ord("A") + pick)},
                                   {"answer": chr(ord("A") + pick)}, {"answer": texts[pick]}]))
    return {"question": draw(good_text), "options": options, **answer}


SHAPES = {
    "medical-o1": st.fixed_dictionaries({"Question": good_text, "Complex_CoT": good_text, "Response": good_text}),
    "input/output": st.fixed_dictionaries({"input": good_text, "output": good_text}),
    "alpaca": st.fixed_dictionaries({"instruction": good_text, "input": good_text, "output": good_text}),
    "messages": st.fixed_dictionaries({"messages": chat_messages()}),
    "mcq": mcq_row(),  # no answer column: refused by the preview, read by the evaluation
}
spoilers = st.one_of(values, odd_text, st.sampled_from(["", "   ", "<think>open", "</think>"]),
                     st.lists(st.fixed_dictionaries({}, optional={"role": values | st.sampled_from(
                         ["user", "assistant", "gpt", "human", "tool"]), "content": values}), max_size=3),
                     st.lists(values | good_text, max_size=30))  # options-like lists, over 26 too


@st.composite
def datasets(draw) -> tuple[str, list, int]:
    """(shape, rows, spoiled): valid rows of one shape with `spoiled` cells, keys or rows changed."""
    shape = draw(st.sampled_from(sorted(SHAPES)))
    rows = draw(st.lists(SHAPES[shape], min_size=1, max_size=5))
    spoiled = draw(st.integers(0, 2))
    for _ in range(spoiled):
        at = draw(st.integers(0, len(rows) - 1))
        row = rows[at]
        how = draw(st.sampled_from(["cell", "cell", "drop", "add", "row"]))
        if how == "row" or not isinstance(row, dict):
            rows[at] = draw(values | st.dictionaries(keys, values, max_size=4))
        elif how == "drop" and row:
            del row[draw(st.sampled_from(sorted(row)))]
        else:
            key = draw(st.sampled_from(sorted(row)) if how == "cell" and row else keys)
            row[key] = draw(spoilers)
    return shape, rows, spoiled


def json_bytes(document, ensure_ascii: bool) -> bytes:
    # "surrogatepass" writes a lone surrogate as the bytes a careless encoder would: invalid UTF-8.
    return json.dumps(document, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


def deep_list(depth: int) -> list:
    nested: list = []
    for _ in range(depth):
        nested = [nested]
    return nested


# ---------------------------------------------------------------------------------------------
# Strategies: bytes

EXTENSIONS = [".jsonl", ".json", ".csv", ".parquet", ".JSONL", ".Json", ".txt", ".gz", ".jsonl.gz", ""]
file_names = st.one_of(
    st.sampled_from(["data.jsonl", "data.json", "data.csv", "data.parquet", ".jsonl", "cas clinique é.json"]),
    st.builds(str.__add__, st.text(string.ascii_letters + string.digits + "_- ", min_size=1, max_size=12)
              .filter(str.strip), st.sampled_from(EXTENSIONS)),
)
# Bytes that send parsers down unusual paths: structure, line ends, BOMs, NUL, invalid and odd UTF-8,
# escapes of half a surrogate pair, the Parquet magic, and the column names the reader looks for.
PIECES = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"\n", b"\r\n", b"\r", b" ", b"\t", b";", b"\x00",
          b"\xef\xbb\xbf", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xe2\x80\xa8", b"\xc2\x85", b"\\ud800",
          b"\\udc00", b"\\u0000", b"\\", b"null", b"true", b"1e999", b"NaN", b"-0", b"9" * 30, b"PAR1",
          b'"Question"', b'"Complex_CoT"', b'"Response"', b'"messages"', b'"role"', b'"content"', b'"user"',
          b'"assistant"', b'"options"', b'"answer_idx"', b'"<think>x</think>y"', b"Question,Complex_CoT,Response",
          b'"a, b"']
nasty_bytes = st.one_of(
    st.binary(max_size=512),
    st.lists(st.sampled_from(PIECES) | st.binary(max_size=8), max_size=80).map(b"".join),
    st.text(max_size=200).map(lambda text: text.encode("utf-8")),
)
SAMPLE_ROWS = [{"Question": f"Case {i}: fever and a rash?", "Complex_CoT": "Think of measles.", "Response": "Isolate."}
               for i in range(4)]


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


VALID_FILES = {
    "jsonl": "".join(json.dumps(row) + "\n" for row in SAMPLE_ROWS).encode(),
    "json": json.dumps(SAMPLE_ROWS, indent=1).encode(),
    "csv": _csv_text(SAMPLE_ROWS).encode(),
}


@st.composite
def damaged_files(draw) -> tuple[str, bytes]:
    """A valid file with one to three byte ranges overwritten by troublesome pieces."""
    form = draw(st.sampled_from(sorted(VALID_FILES)))
    content = bytearray(VALID_FILES[form])
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(content)))
        content[at:at + draw(st.integers(0, 4))] = draw(st.sampled_from(PIECES))
    return f"damaged.{form}", bytes(content)


# ---------------------------------------------------------------------------------------------
# Random and damaged bytes, under any name


@FUZZ
@given(name=file_names, content=nasty_bytes)
@example(name="deep.json", content=b"[" * 100_000 + b"]" * 100_000)  # was RecursionError
@example(name="deep.jsonl", content=b'{"Question": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")  # RecursionError
@example(name="digits.jsonl", content=b'{"Question": ' + b"7" * 5000 + b', "Response": "x"}\n')  # a bare ValueError
@example(name="half.jsonl", content=b'{"Question": "a\\ud800", "Response": "x"}\n')  # TypeError in the tokenizer
@example(name="halfkey.json", content=b'[{"Question\\udc00": "a", "Response": "x"}]')  # an unsendable message
@example(name="empty.csv", content=b"")
@example(name="bom.json", content=b"\xef\xbb\xbf\xef\xbb\xbf[]")
@example(name="nul.csv", content=b"Question,Response\n\x00,\x00\n")
@example(name="latin1.csv", content="Question,Response\ncafé,b\n".encode("latin-1"))
@example(name="huge.jsonl", content=b'{"Question": "' + b"fever " * 200_000 + b'", "Response": "x"}')
@example(name="huge.csv", content=b"Question,Response\n" + b"x" * 200_000 + b",b\n")
@example(name="data.parquet", content=b"PAR1" + b"\x00" * 64 + b"PAR1")
def test_any_bytes_under_any_name_are_previewed_or_refused_by_name(folders, tokenizer, name, content):
    path = folders() / name
    path.write_bytes(content)
    check_upload(path, tokenizer)


@FUZZ
@given(upload=damaged_files())
@example(upload=("crlf.jsonl", VALID_FILES["jsonl"].replace(b"\n", b"\r\n")))
@example(upload=("sep.jsonl", VALID_FILES["jsonl"].replace(b"fever", b"fever\xe2\x80\xa8")))  # U+2028 in a
# string: was "malformed JSON"
def test_damaged_files_are_previewed_or_refused_by_name(folders, tokenizer, upload):
    name, content = upload
    path = folders() / name
    path.write_bytes(content)
    check_upload(path, tokenizer)


# ---------------------------------------------------------------------------------------------
# Well-formed files of spoiled rows


@FUZZ
@given(dataset=datasets(), form=st.sampled_from(["jsonl", "json", "json-object"]), ensure_ascii=st.booleans(),
       template=st.sampled_from(["chat", "plain"]))
@example(dataset=("medical-o1", [{"Question": "a\ud800", "Complex_CoT": "r", "Response": "x"}] * 3, 1), form="jsonl",
         ensure_ascii=True, template="chat")  # was TypeError from the tokenizer
@example(dataset=("input/output", [{"input": "Q?", "output": "A."}] * 2, 0), form="jsonl", ensure_ascii=True,
         template="chat")  # Start's refusal to hold out 2 of 2 rows did not name the file
@example(dataset=("mcq", [{"question": "Q?", "options": [f"option {i}" for i in range(33)], "answer_idx": 0}] * 3,
                  1), form="json", ensure_ascii=True, template="chat")  # option 33 took option A's letter
@example(dataset=("medical-o1", [{"Question": "a\u2028b", "Complex_CoT": "r\x85", "Response": "c\u2029"}], 0),
         form="jsonl", ensure_ascii=False, template="plain")  # was "malformed JSON on line 1"
@example(dataset=("messages", [{"messages": [{"role": "user", "content": "Q?"},
                                             {"role": "assistant", "content": "<"}]}], 0),
         form="jsonl", ensure_ascii=True, template="chat")  # was "<think> block is never closed"
def test_rows_of_every_shape_spoiled_or_not_are_previewed_or_refused_by_name(folders, tokenizer, dataset, form,
                                                                             ensure_ascii, template):
    shape, rows, spoiled = dataset
    if form == "jsonl":
        content = b"".join(json_bytes(row, ensure_ascii) + b"\n" for row in rows)
    else:
        content = json_bytes({"data": rows} if form == "json-object" else rows, ensure_ascii)
    path = folders() / f"rows.{form.split('-')[0]}"
    path.write_bytes(content)
    outcome = check_upload(path, tokenizer, template)
    if not spoiled and shape != "mcq":  # valid rows of a supported shape are never refused
        assert outcome == "previewed"


@FUZZ
@given(dataset=datasets(), data=st.data())
def test_any_column_mapping_is_previewed_or_refused_by_name(folders, tokenizer, dataset, data):
    """The column pickers can put any column (or none) on any role."""
    path = folders() / "mapped.jsonl"
    path.write_bytes(b"".join(json_bytes(row, True) + b"\n" for row in dataset[1]))
    try:
        columns = read_upload(path).columns
    except DatasetError as err:
        assert_refusal(err, path.name)
        return
    roles = ["question", "reasoning", "answer", "context", "messages"]
    check_upload(path, tokenizer, columns=data.draw(st.dictionaries(st.sampled_from(roles),
                                                                    st.sampled_from(["", *columns]))))


texts = st.text(min_size=1, max_size=60).filter(str.strip)


@FUZZ
@given(rows=st.lists(st.tuples(texts, texts, texts), min_size=1, max_size=5), ensure_ascii=st.booleans(),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), bom=st.booleans())
@example(rows=[("a\u2028b", "r", "c\x85d")], ensure_ascii=False, newline="\n", bom=False)  # was "malformed JSON"
def test_valid_jsonl_reads_back_exactly(folders, rows, ensure_ascii, newline, bom):
    """Not only no crash: a valid file of the supported shape is read as written (cells stripped)."""
    lines = [json.dumps({"Question": q, "Complex_CoT": r, "Response": a}, ensure_ascii=ensure_ascii)
             for q, r, a in rows]
    path = folders() / "valid.jsonl"
    path.write_bytes(("\ufeff" if bom else "").encode() + newline.join(lines).encode("utf-8"))
    assert read_back(path) == [tuple(text.strip() for text in row) for row in rows]


def read_back(path) -> list[tuple[str, str, str]]:
    return [(e.question, e.reasoning, e.answer) for e in map_columns(read_upload(path)).examples]


# ---------------------------------------------------------------------------------------------
# CSV in foreign dialects


@FUZZ
@given(header=st.lists(st.sampled_from(KEYS) | good_text, min_size=1, max_size=4),
       body=st.lists(st.lists(good_text | st.sampled_from(ODD_PIECES[2:]), max_size=5), max_size=4),
       delimiter=st.sampled_from([",", ";", "\t", "|", " ", ":", "\x00"]),
       quotechar=st.sampled_from(['"', "'", "|", "`"]),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC, csv.QUOTE_NONE]),
       escapechar=st.sampled_from([None, "\\", "^"]),
       lineterminator=st.sampled_from(["\r\n", "\n", "\r"]),
       leading=st.sampled_from(["", "\n", "\ufeff", "sep=;\n"]))
@example(header=["Question", "Response"], body=[["a", "b"]], delimiter=",", quotechar='"', quoting=csv.QUOTE_MINIMAL,
         escapechar=None, lineterminator="\n", leading="\n")  # blank first line: blamed line 2's cell count
def test_csv_in_any_dialect_is_previewed_or_refused_by_name(folders, tokenizer, header, body, delimiter, quotechar,
                                                            quoting, escapechar, lineterminator, leading):
    if delimiter == quotechar:
        reject()
    buffer = io.StringIO()
    try:
        writer = csv.writer(buffer, delimiter=delimiter, quotechar=quotechar, quoting=quoting, escapechar=escapechar,
                            lineterminator=lineterminator)
        writer.writerow(header)
        writer.writerows(body)
    except (csv.Error, TypeError, ValueError):  # a dialect that cannot write these cells
        reject()
    path = folders() / "dialect.csv"
    path.write_bytes((leading + buffer.getvalue()).encode("utf-8"))
    check_upload(path, tokenizer)


@FUZZ
@given(rows=st.lists(st.tuples(texts, texts, texts), min_size=1, max_size=5),
       lineterminator=st.sampled_from(["\r\n", "\n"]))
def test_valid_csv_reads_back_exactly(folders, rows, lineterminator):
    if lineterminator == "\n" and any("\r" in text for row in rows for text in row):
        reject()  # Python's writer then leaves a bare \r unquoted, and every reader takes it for a line end
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=lineterminator)
    writer.writerow(["Question", "Complex_CoT", "Response"])
    writer.writerows(rows)
    path = folders() / "valid.csv"
    path.write_bytes(buffer.getvalue().encode("utf-8"))
    assert read_back(path) == [tuple(text.strip() for text in row) for row in rows]


# ---------------------------------------------------------------------------------------------
# Parquet with columns of every type

turn_type = pa.struct([("role", pa.string()), ("content", pa.string())])
PARQUET_KINDS = {
    "string": (pa.string(), good_text),
    "large_string": (pa.large_string(), good_text),
    "binary": (pa.binary(), st.binary(max_size=20)),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
    "float64": (pa.float64(), st.floats()),
    "bool": (pa.bool_(), st.booleans()),
    "list<string>": (pa.list_(pa.string()), st.lists(good_text, max_size=3)),
    "messages": (pa.list_(turn_type), chat_messages(CHAT_KEYS[:1])),
    "struct": (turn_type, st.fixed_dictionaries({"role": good_text, "content": good_text})),
    "map": (pa.map_(pa.string(), pa.int64()), st.lists(st.tuples(good_text, st.integers(0, 9)), max_size=3)),
    "timestamp": (pa.timestamp("s"), st.integers(-(2**40), 2**40)),  # mostly past the years Python can hold
    "date32": (pa.date32(), st.integers(-(2**31), 2**31 - 1)),
    "list<date32>": (pa.list_(pa.date32()), st.lists(st.integers(-(2**31), 2**31 - 1), max_size=2)),
    "decimal": (pa.decimal128(12, 3), st.decimals(-10**8, 10**8, places=3, allow_nan=False)),
    "null": (pa.null(), st.none()),
    "nested": (pa.list_(pa.list_(pa.int32())), st.lists(st.lists(st.integers(0, 9), max_size=2), max_size=2)),
}
PARQUET_SHAPES = [["Question", "Complex_CoT", "Response"], ["input", "output"], ["messages"], []]


@st.composite
def parquet_tables(draw) -> pa.Table:
    """A supported shape's columns (mostly as text) and stray ones, each of any type, some cells null."""
    count = draw(st.integers(1, 4))
    names = draw(st.sampled_from(PARQUET_SHAPES)) + draw(st.lists(st.sampled_from(KEYS) | good_text, max_size=3))
    arrays = []
    for name in names:
        usual = "messages" if name == "messages" else "string"
        kind, strategy = PARQUET_KINDS[draw(st.just(usual) | st.sampled_from(sorted(PARQUET_KINDS)))]
        cells = draw(st.lists(strategy, min_size=count, max_size=count))
        if cells and draw(st.booleans()):  # a null now and then
            cells[draw(st.integers(0, count - 1))] = None
        arrays.append(pa.array(cells, type=kind))
    return pa.Table.from_arrays(arrays, names=names) if arrays else pa.table({})  # duplicate names allowed


@FUZZ
@given(table=parquet_tables(), template=st.sampled_from(["chat", "plain"]))
@example(table=pa.table({"Question": pa.array([], pa.string())}), template="chat")
@example(table=pa.table({"Question": ["Q?"] * 3, "Response": pa.array([b"\xff"] * 3)}), template="chat")
@example(table=pa.Table.from_arrays([pa.array(["Q?"] * 3), pa.array(["A."] * 3), pa.array(["B."] * 3)],
                                    names=["Question", "Response", "Response"]),
         template="chat")  # was "not a readable Parquet file (Multiple matches for FieldRef...)" over 6 lines
@example(table=pa.table({"Question": ["Q?"] * 3, "Response": ["A."] * 3,
                         "seen": pa.array([2**31 - 1] * 3, pa.date32())}),
         template="chat")  # a date past year 9999 in any column: was "not a readable Parquet file"
def test_parquet_with_any_column_types_is_previewed_or_refused_by_name(folders, tokenizer, table, template):
    path = folders() / "typed.parquet"
    pq.write_table(table, path)
    check_upload(path, tokenizer, template)


def _parquet_bytes() -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(SAMPLE_ROWS), sink)
    return sink.getvalue().to_pybytes()


GOOD_PARQUET = _parquet_bytes()


@FUZZ
@given(at=st.integers(0, len(GOOD_PARQUET) - 1), patch=st.binary(min_size=1, max_size=8), truncate=st.booleans())
@example(at=GOOD_PARQUET.index(b"Response"), patch=b"\x80", truncate=False)  # a column name not UTF-8
def test_damaged_parquet_is_refused_by_name(folders, tokenizer, at, patch, truncate):
    damaged = GOOD_PARQUET[:at] if truncate else GOOD_PARQUET[:at] + patch + GOOD_PARQUET[at + len(patch):]
    path = folders() / "damaged.parquet"
    path.write_bytes(damaged)
    check_upload(path, tokenizer)


# ---------------------------------------------------------------------------------------------
# Evaluation items in memory (as held-out rows or a Hub split give them)


@st.composite
def mcq_datasets(draw) -> list:
    rows = draw(st.lists(mcq_row(), min_size=1, max_size=4))
    for _ in range(draw(st.integers(0, 2))):
        row = draw(st.sampled_from(rows))
        row[draw(st.sampled_from(["options", "answer_idx", "answer", "question"]))] = draw(
            spoilers | st.integers(-2, 30) | st.sampled_from(["A", "b", "(C)", "D.", "Z", ""]))
    return rows


@FUZZ
@given(rows=mcq_datasets())
@example(rows=[{"question": "Q?", "options": [f"option {i}" for i in range(33)], "answer_idx": 0}])  # gold's text
# was option 32's: past Z the letters ran on to 'a', which became 'A' and overwrote option A
@example(rows=[{"question": "Q?", "options": {"a": "x", "A": "y"}, "answer": "x"}])  # 'y' silently replaced 'x'
def test_eval_items_of_any_option_types_are_items_or_one_sentence(rows):
    name = "mcq.jsonl"
    try:
        examples = to_examples(rows, ColumnMap(question="question"), name, strict=False)
    except DatasetError as err:
        assert_refusal(err, name)
        return
    try:
        assert_items(rows, eval_items(rows, examples, name))
    except DatasetError as err:
        assert_refusal(err, name)
    # Rows held out of a training set: unusable options are dropped, never refused.
    assert_items(rows, eval_items(rows, examples, name, strict=False))


def assert_items(rows, items) -> None:
    for row, item in zip(rows, items, strict=True):
        sendable(item.prompt_question, item.has_reference)
        if not item.options:
            continue
        assert item.gold in item.options
        listed, index = row.get("options"), row.get("answer_idx")
        if isinstance(listed, list) and type(index) is int and 0 <= index < len(listed):
            assert item.options[item.gold] == listed[index].strip()  # the letter of the option it indexes


# ---------------------------------------------------------------------------------------------
# Exact messages for the problems found


FOUND_PROBLEMS = [  # (file, content, how its message starts: None when it is read fine)
    ("blank.csv", b"\nQuestion,Response\na,b\n", "blank.csv: line 1 is empty; the header row"),
    ("wide.csv", b'Question,Response\n"a\nb",c\nd,e,f\n', "wide.csv: line 4 has more cells than the header"),
    ("long.csv", b"Question,Response\nq," + b"x" * 200_000 + b"\n", "long.csv: malformed CSV on line 2: field"),
    ("deep.json", b"[" * 100_000, "deep.json: the file nests lists or objects too deeply to read"),
    ("digits.jsonl", b'{"a": 1}\n{"a": ' + b"1" * 5000 + b"}\n", "digits.jsonl: line 2 holds a number with more"),
    ("half.jsonl", b'{"Question": "a\\ud800b", "Response": "x"}\n',
     "half.jsonl: row 1, column 'Question' holds \\ud800, half of a UTF-16 surrogate pair"),
    ("pair.jsonl", b'{"Question": "\\ud83e\\ude7a", "Response": "x"}\n', None),  # a whole pair is 🩺: fine
]


@pytest.mark.parametrize(("name", "content", "message"), FOUND_PROBLEMS, ids=[name for name, *_ in FOUND_PROBLEMS])
def test_found_problems_are_named_exactly(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    if message is None:
        assert read_back(tmp_path / name) == [("🩺", "", "x")]
        return
    with pytest.raises(DatasetError) as err:
        read_back(tmp_path / name)
    assert str(err.value).startswith(message)


def test_a_cell_nested_deeper_than_str_goes_is_a_message():
    """json.loads can return a value nested a little deeper than str() then manages from a deeper call.
    Built in memory: hypothesis cannot print an example this deep."""
    rows = [{"question": deep_list(5000), "answer": "a"}]
    with pytest.raises(DatasetError, match=r"deep\.jsonl: row 1, column 'question' nests lists or objects too deeply"):
        to_examples(rows, ColumnMap(question="question", answer="answer"), "deep.jsonl")


def test_an_upload_gone_from_disk_is_a_message(tmp_path):
    with pytest.raises(DatasetError, match=r"gone\.jsonl: no such file; upload it again"):
        read_dataset("upload", str(tmp_path / "gone.jsonl"))


def test_too_many_options_is_a_message():
    rows = [{"question": "Q?", "options": [f"option {i}" for i in range(27)], "answer_idx": 26}]
    with pytest.raises(DatasetError, match="mcq.jsonl, row 1: 'options' has 27 entries; at most 26"):
        eval_items(rows, to_examples(rows, ColumnMap(question="question"), "mcq.jsonl", strict=False), "mcq.jsonl")


def test_a_repeated_parquet_column_is_named(tmp_path):
    path = tmp_path / "twice.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["Q?"]), pa.array(["A."])], names=["Question", "Question"]), path)
    with pytest.raises(DatasetError, match="^twice.parquet: column 'Question' appears more than once; give each"):
        read_upload(path)


def test_a_parquet_column_python_cannot_hold_is_read_as_text(tmp_path):
    path = tmp_path / "dates.parquet"
    pq.write_table(pa.table({"Question": ["Q?"], "Response": ["A."], "seen": pa.array([2**31 - 1], pa.date32())}),
                   path)
    assert read_upload(path).rows == [{"Question": "Q?", "Response": "A.", "seen": "<value out of range: 2147483647>"}]


# ---------------------------------------------------------------------------------------------
# The app itself, with the nastiest files found above

NASTY_UPLOADS = {
    "deep.json": b"[" * 100_000 + b"]" * 100_000,
    "half.jsonl": b'{"Question": "a\\ud800", "Complex_CoT": "r", "Response": "x"}\n' * 3,
    "halfkey.json": b'[{"Question\\udc00": "a", "Response": "x"}]',
    "digits.jsonl": b'{"Question": ' + b"7" * 5000 + b', "Response": "x"}\n',
    "noise.parquet": b"PAR1" + bytes(range(256)) * 4 + b"PAR1",
}


def upload(client, path) -> str:
    """What the Dataset tab shows after an upload: the read's message, else the preview's summary."""
    from gradio_client import handle_file

    *pickers, status = client.predict("upload", handle_file(str(path)), "train[0:500]", api_name="/read_dataset")
    if status:
        return status
    columns = [picker["value"] if isinstance(picker, dict) else picker for picker in pickers]
    summary, *_ = client.predict(*columns, "chat", "", MAX_LENGTH, 1, None, api_name="/preview_dataset")
    return summary


def test_the_app_answers_nasty_uploads_with_a_message_and_keeps_serving(app_server, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_server[0], verbose=False)
    client.predict("embedded", False, MAX_LENGTH, "auto", api_name="/load_model")  # so the preview tokenizes
    for name, content in NASTY_UPLOADS.items():
        (tmp_path / name).write_bytes(content)
        shown = upload(client, tmp_path / name)
        assert shown.startswith(f"⚠ {name}: ") and f"/{name}" not in shown, shown  # no server path either
    line, *_ = client.predict("upload", handle_file(str(tmp_path / "half.jsonl")), 2, 16, "auto",
                              api_name="/evaluate")
    assert line.startswith("⚠ half.jsonl: row 1, column 'Question' holds \\ud800"), line
    good = tmp_path / "good.jsonl"
    good.write_bytes(VALID_FILES["jsonl"])
    assert upload(client, good).startswith("**good.jsonl**: 4 rows")
