"""Read chain-of-thought datasets into one shape: Example(question, reasoning, answer).

Sources: our bundled sample, medical-o1-reasoning-SFT from the Hub, or a user's file
(.jsonl, .json, .csv, .parquet). Columns are detected by name and can be overridden. Every problem
is reported as one DatasetError sentence naming the file, line or row, and column.

What a file may become once read is bounded (`ReadLimits`: rows, cells, characters, decoded size), and
checked while it is read, before it is held in full: a Parquet file by its metadata, then batch by batch;
JSON by its values, then row by row; a Hub slice on its memory-mapped Arrow data.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from finetune.data.think import THINK_OPEN, split_think
from finetune.hub import hub_offline_mode, hub_reachable

SAMPLE_DIR = Path(__file__).parent / "sample_data"
SAMPLE_FILE = SAMPLE_DIR / "clinical_vignettes.jsonl"
MCQ_FILE = SAMPLE_DIR / "clinical_mcq.jsonl"
REAL_ROWS = Path(__file__).resolve().parents[3] / "shared" / "data" / "medical_o1_sample.jsonl"
"""Real medical-o1 rows (HuatuoGPT-o1, with options), where ../shared is present: none of them bundled
or trained on, so they say what a run on the bundled sample learned (`FINETUNE_REAL_ROWS` moves it)."""
MEDICAL_O1 = "FreedomIntelligence/medical-o1-reasoning-SFT"
MCQ_INSTRUCTION = "Please answer the following multiple-choice question:"
HUB_PRESETS = {
    "medical-o1": (MEDICAL_O1, "en"),
    "medical-o1-en": (MEDICAL_O1, "en"),
    "medical-o1-zh": (MEDICAL_O1, "zh"),
}
FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet")

# Candidate column names per role, in order of preference, matched case-insensitively.
COLUMN_CANDIDATES = {
    "messages": ("messages", "conversations", "conversation"),
    "question": ("question", "instruction", "input", "prompt", "problem", "query"),
    "context": ("context",),
    "reasoning": ("complex_cot", "reasoning", "cot", "chain_of_thought", "thinking", "thought", "rationale"),
    "answer": ("response", "answer", "output", "completion", "solution"),
}


class DatasetError(ValueError):
    """A dataset problem, worded for the person who supplied the data."""


@dataclass
class Example:
    question: str
    reasoning: str
    answer: str


@dataclass
class EvalItem:
    """One held-out question: its reference reasoning and answer, and its options if it is multiple-choice."""

    question: str
    reasoning: str = ""
    answer: str = ""
    options: dict[str, str] | None = None
    gold: str | None = None
    """The correct option's letter."""

    @property
    def prompt_question(self) -> str:
        """What the model is asked: the question, with its lettered options for a multiple-choice item."""
        if not self.options:
            return self.question
        lines = [f"{letter}. {text}" for letter, text in self.options.items()]
        return "\n".join([MCQ_INSTRUCTION, self.question, *lines])

    @property
    def has_reference(self) -> bool:
        """A reference answer to compute the loss on (a bare option letter is not one)."""
        return bool(self.answer) and not (self.options and self.answer.strip() in self.options)


@dataclass
class ColumnMap:
    """Which column plays which role. `messages` replaces question/reasoning/answer."""

    question: str | None = None
    reasoning: str | None = None
    answer: str | None = None
    context: str | None = None
    messages: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


ROLES = tuple(ColumnMap.__dataclass_fields__)
"""The column roles a user can map: question, reasoning, answer, context, messages."""


# ---------------------------------------------------------------------------------------------
# Read limits: what an upload may become once read, whatever its size on disk


@dataclass(frozen=True)
class ReadLimits:
    """The most a dataset may become once read, checked before it is held in full.

    A file's size on disk says little: a Parquet file of 20 KB can decompress to millions of rows, and
    read in full that held over 1 GB of the app's memory. Each reader counts as it goes and refuses
    past the first limit, naming it."""

    rows: int = 100_000
    """medical-o1 English is about 19.7k rows, and a short LoRA run trains on a few thousand at most."""
    cells: int = 2_000_000
    """Rows times the columns present: 100,000 rows of 20 columns. For JSON, values nested in a cell
    count as cells too (each is a Python object); for Parquet, the values of each nested column."""
    characters: int = 200_000_000
    """All the text in all the cells: medical-o1 English comes to about 70M characters."""
    decoded_mb: int = 512
    """Parquet: the data uncompressed (its metadata's, then as read); text formats: the file's size. A GPU
    Space has tens of GB of RAM, shared with the model; 512 MB of data is several times medical-o1."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"the read limit {item.name} must be a whole number of at least 1, not {value!r}")

    def check(self, name: str, rows: int = 0, cells: int = 0, characters: int = 0, mb: float = 0.0,
              advice: str = "upload a smaller file or split it") -> None:
        """DatasetError naming `name` and the first limit that `rows`, `cells`, `characters` or `mb` is past."""
        if rows > self.rows:
            over = f"more than {self.rows:,} rows (the limit here is {self.rows:,})"
        elif cells > self.cells:
            over = f"more than {self.cells:,} cells, rows times columns (the limit here is {self.cells:,})"
        elif characters > self.characters:
            over = f"its text comes to more than {self.characters:,} characters (the limit here is {self.characters:,})"
        elif mb > self.decoded_mb:
            over = f"decompresses to more than {self.decoded_mb:,} MB (the limit here is {self.decoded_mb:,} MB)"
        else:
            return
        raise DatasetError(f"{name}: {over}; {advice}")


READ_LIMITS = ReadLimits()
"""The limits every reader applies unless it is given others."""


@dataclass
class _Tally:
    """What a reader has read so far, refused as soon as it is past one of `limits`."""

    name: str
    limits: ReadLimits
    rows: int = 0
    cells: int = 0
    characters: int = 0
    mb: float = 0.0

    def add(self, rows: int = 1, cells: int = 0, characters: int = 0, mb: float = 0.0) -> None:
        self.rows += rows
        self.cells += cells
        self.characters += characters
        self.mb += mb
        self.limits.check(self.name, self.rows, self.cells, self.characters, self.mb)


def _bare(err: DatasetError) -> DatasetError:
    """`err` without its traceback and context: they hold the reader's frames, and with them every row read
    so far, for as long as anyone keeps the message; a refused file's rows must be freed at once."""
    err.__context__ = None
    return err.with_traceback(None)


# ---------------------------------------------------------------------------------------------
# Reading files


def read_records(path: str | Path, limits: ReadLimits = READ_LIMITS) -> list[dict]:
    """Read a .jsonl/.json/.csv/.parquet file into a list of row dicts, refusing one past `limits`."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DatasetError(f"{name}: unsupported file type '{suffix or 'none'}'; use one of {', '.join(FILE_TYPES)}")
    try:
        if suffix == ".parquet":
            rows = _read_parquet(path, _Tally(name, limits))
        else:
            text = _read_text(path, limits)
            if not text.strip():
                raise DatasetError(f"{name}: the file is empty")
            parse = {".jsonl": _parse_jsonl, ".json": _parse_json, ".csv": _parse_csv}[suffix]
            rows = parse(text, _Tally(name, limits))
    except DatasetError as err:
        raise _bare(err) from None
    if not rows:
        raise DatasetError(f"{name}: the file has no rows")
    return rows


def _read_text(path: Path, limits: ReadLimits) -> str:
    size_mb = path.stat().st_size / 2**20
    if size_mb > limits.decoded_mb:
        raise DatasetError(f"{path.name}: more than {limits.decoded_mb:,} MB of text (the limit here is "
                           f"{limits.decoded_mb:,} MB); upload a smaller file or split it")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DatasetError(
            f"{path.name}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); save the file as UTF-8"
        ) from None


# Line breaks as editors count them. Not str.splitlines(): it also breaks at U+2028, U+2029 and U+0085,
# which JSON allows unescaped inside a string, and so would cut valid rows in two.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")  # what json itself skips between tokens
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_DECODER = json.JSONDecoder()


def _lines(text: str) -> Iterator[str]:
    """The lines of `text`, one at a time: a list of them all would copy a large file once more."""
    start = 0
    for line_break in _LINE_BREAK.finditer(text):
        yield text[start:line_break.start()]
        start = line_break.end()
    yield text[start:]


@contextmanager
def _json_errors(name: str, where: str, line: int = 1) -> Iterator[None]:
    """Every failure of json as one DatasetError; `where` names the part read ('line 3', 'the file')
    and `line` is the file's line that the text read starts on."""
    try:
        yield
    except DatasetError:
        raise
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{name}: malformed JSON on line {line + err.lineno - 1}: {err.msg} (column {err.colno})"
        ) from None
    except RecursionError:
        raise DatasetError(f"{name}: {where} nests lists or objects too deeply to read") from None
    except ValueError:  # json's one other failure: an integer past Python's conversion limit
        raise DatasetError(
            f"{name}: {where} holds a number with more than {sys.get_int_max_str_digits()} digits"
        ) from None


def _load_json(text: str, name: str, where: str, line: int = 1):
    with _json_errors(name, where, line):
        return json.loads(text)


def _check_json_values(text: str, tally: _Tally) -> None:
    """Refuse JSON that holds more values than the limits allow, before any is built. Rows are counted
    as they are read, but one row can nest millions of values (`[{"q": [{}, {}, ...]}]`), each a Python
    object: outside strings, every value but the first follows a comma or opens a list or object."""
    structure = _JSON_STRING.sub("", text)
    values = structure.count(",") + structure.count("[") + structure.count("{")
    del structure
    # A flat file within the limits has up to cells + rows of them (a comma between rows), and a few more
    # for an object around its list: twice that never refuses one, and still bounds what a file can build.
    if values > 2 * (tally.limits.cells + tally.limits.rows):
        tally.limits.check(tally.name, cells=values)


def _parse_jsonl(text: str, tally: _Tally) -> list[dict]:
    name = tally.name
    _check_json_values(text, tally)
    rows = []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        row = _load_json(line, name, f"line {number}", number)
        if not isinstance(row, dict):
            raise DatasetError(f"{name}: line {number} is a JSON {type(row).__name__}, expected an object")
        tally.add(cells=len(row), characters=len(line))
        rows.append(row)
    return rows


def _parse_json(text: str, tally: _Tally) -> list[dict]:
    name = tally.name
    _check_json_values(text, tally)
    with _json_errors(name, "the file"):
        data = _json_document(text, tally)
    if isinstance(data, dict):
        # {"data": [...]} / {"train": [...]}: take the one list of rows it holds.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DatasetError(f"{name}: expected a list of objects, or an object holding one such list")
        data = lists[0]
    if not isinstance(data, list):
        raise DatasetError(f"{name}: expected a list of objects, found a JSON {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DatasetError(f"{name}: row {number} is a JSON {type(row).__name__}, expected an object")
    return data


def _json_document(text: str, tally: _Tally):
    """json.loads(text), but a list at the top, or in an object at the top, is read item by item and
    counted as it goes, so a file of a million rows is refused without building them. The errors are
    json's own, at the same places."""
    start = _JSON_SPACE.match(text).end()
    if text.startswith("[", start):
        data, end = _json_rows(text, start, tally)
    elif text.startswith("{", start):
        data, end = _json_object(text, start, tally)
    else:  # a lone value, or not JSON at all: json words it
        return json.loads(text)
    end = _JSON_SPACE.match(text, end).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return data


def _json_rows(text: str, start: int, tally: _Tally) -> tuple[list, int]:
    """The list that opens at `start`, each item counted (its cells, its length in the file) as it is read;
    and where the list ends."""
    items: list = []
    at = _JSON_SPACE.match(text, start + 1).end()
    if text.startswith("]", at):
        return items, at + 1
    while True:
        item, end = _DECODER.raw_decode(text, at)
        tally.add(cells=len(item) if isinstance(item, dict) else 1, characters=end - at)
        items.append(item)
        at, closed = _after_item(text, end, "]")
        if closed:
            return items, at


def _json_object(text: str, start: int, tally: _Tally) -> tuple[dict, int]:
    """The object that opens at `start`, its lists read by `_json_rows` (the rows are one of them);
    and where it ends."""
    found: dict = {}
    at = _JSON_SPACE.match(text, start + 1).end()
    if text.startswith("}", at):
        return found, at + 1
    while True:
        if not text.startswith('"', at):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, at)
        key, at = json.decoder.scanstring(text, at + 1)
        at = _JSON_SPACE.match(text, at).end()
        if not text.startswith(":", at):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, at)
        at = _JSON_SPACE.match(text, at + 1).end()
        found[key], at = _json_rows(text, at, tally) if text.startswith("[", at) else _DECODER.raw_decode(text, at)
        at, closed = _after_item(text, at, "}")
        if closed:
            return found, at


def _after_item(text: str, end: int, closer: str) -> tuple[int, bool]:
    """Past what follows an item of a list or object: (the next item's start, False) after a comma, or
    (the end of the container, True) after `closer`; json's own error for anything else."""
    at = _JSON_SPACE.match(text, end).end()
    if text.startswith(closer, at):
        return at + 1, True
    if not text.startswith(",", at):
        raise json.JSONDecodeError("Expecting ',' delimiter", text, at)
    return _JSON_SPACE.match(text, at + 1).end(), False


def _csv_lines(text: str, tally: _Tally) -> Iterator[str]:
    """The file's lines for the CSV reader, refusing one that alone would split into more cells than the
    limit: the reader builds a row's cells, the header's too, before we see them."""
    for line in io.StringIO(text, newline=""):
        tally.limits.check(tally.name, cells=line.count(",") + 1)
        yield line


def _parse_csv(text: str, tally: _Tally) -> list[dict]:
    name = tally.name
    reader = csv.DictReader(_csv_lines(text, tally))
    # The line the reader is on (where a row ends: a quoted cell can span lines); DictReader's own
    # line_num lags behind when a row fails.
    lines = reader.reader
    rows = []
    try:
        if reader.fieldnames is None:
            raise DatasetError(f"{name}: the file has no header row")
        if not reader.fieldnames:  # a blank first line reads as a header of no columns
            raise DatasetError(f"{name}: line 1 is empty; the header row (the column names) must come first")
        for row in reader:
            if None in row:
                raise DatasetError(f"{name}: line {lines.line_num} has more cells than the header has columns")
            tally.add(cells=len(row), characters=sum(len(cell) for cell in row.values() if isinstance(cell, str)))
            rows.append(row)
    except csv.Error as err:
        raise DatasetError(f"{name}: malformed CSV on line {lines.line_num}: {err}") from None
    return rows


PARQUET_BATCH_ROWS = 4096
"""Rows decoded at a time, each batch counted before the next: what a file can make the reader hold
beyond the limits, whatever its metadata says."""


def _read_parquet(path: Path, tally: _Tally) -> list[dict]:
    import pyarrow as pa  # heavy: only for Parquet and Arrow files

    try:
        with _parquet_errors(path):
            table = _read_parquet_table(path, tally)
    except DatasetError as err:
        err = _bare(err)  # which frees the batches read so far,
        pa.default_memory_pool().release_unused()  # and this gives their memory back at once
        raise err from None
    rows = _table_rows(table, path.name)
    del table
    pa.default_memory_pool().release_unused()
    return rows


def _table_rows(table, name: str) -> list[dict]:
    import pyarrow as pa  # heavy: only for Parquet and Arrow files

    rows: list[dict] = [{} for _ in range(table.num_rows)]
    for column, values in zip(table.column_names, table.columns, strict=True):
        try:
            cells = values.to_pylist()
        except Exception:  # e.g. a date past year 9999: Arrow holds it, Python's datetime cannot
            try:
                cells = values.cast(pa.string()).to_pylist()  # as text, like any other cell
            except Exception as err:
                raise DatasetError(f"{name}: column '{column}' cannot be read ({err})") from None
        for row, cell in zip(rows, cells, strict=True):
            row[column] = cell
    return rows


def _read_parquet_table(path: Path, tally: _Tally):
    """The file as an Arrow table, refused by its metadata before any data is read, then batch by batch."""
    import pyarrow as pa  # heavy: only for Parquet and Arrow files
    import pyarrow.parquet as pq  # heavy, as above

    with pq.ParquetFile(path) as parquet:  # not pq.read_table: it fails on a repeated column name
        names = parquet.schema_arrow.names  # decoded here: a damaged file's names may not be UTF-8
        repeated = [column for column, count in Counter(names).items() if count > 1]
        if repeated:
            raise DatasetError(
                f"{path.name}: column '{repeated[0]}' appears more than once; give each column its own name")
        _check_parquet_metadata(parquet.metadata, len(names), tally)
        text_columns = _text_columns(parquet.schema)
    # Text read as dictionaries: a value repeated in a million rows is held once, and counted per row.
    with pq.ParquetFile(path, read_dictionary=text_columns) as parquet:
        batches = []
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, use_threads=False):
            tally.add(rows=batch.num_rows, cells=batch.num_rows * batch.num_columns,
                      characters=sum(_text_length(column) for column in batch.columns), mb=batch.nbytes / 2**20)
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=parquet.schema_arrow if not batches else None)


def _check_parquet_metadata(metadata, columns: int, tally: _Tally) -> None:
    """Refuse by what the footer says, before reading any data: rows, cells (and the values of nested
    columns, each a Python object), and the size uncompressed."""
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    values = sum(group.column(j).num_values for group in groups for j in range(group.num_columns))
    tally.limits.check(tally.name, rows=metadata.num_rows, cells=max(metadata.num_rows * columns, values),
                       mb=sum(group.total_byte_size for group in groups) / 2**20)


def _text_columns(schema) -> list[str]:
    """The paths of the columns that hold text or bytes (nested ones too), which Arrow can read as dictionaries."""
    leaves = (schema.column(i) for i in range(len(schema)))
    return [leaf.path for leaf in leaves
            if leaf.physical_type == "BYTE_ARRAY" and leaf.logical_type.type in ("STRING", "NONE")]


@contextmanager
def _parquet_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except DatasetError:
        raise
    except Exception as err:  # pyarrow raises several types for a damaged file
        # Its first line, without the server's folders: Arrow quotes the whole path.
        reason = (str(err).replace(str(path), path.name).splitlines() or [type(err).__name__])[0]
        raise DatasetError(f"{path.name}: not a readable Parquet file ({reason})") from None


def _text_length(array) -> int:
    """Characters of text (bytes of binary) in an Arrow array or chunked array, nested values included,
    counted without making Python objects of them."""
    import pyarrow as pa  # heavy: only for Parquet and Arrow files
    import pyarrow.compute as pc  # heavy, as above

    if isinstance(array, pa.ChunkedArray):
        return sum(_text_length(chunk) for chunk in array.chunks)
    kind = array.type
    if pa.types.is_dictionary(kind):  # each row counts its value's length
        lengths = _lengths(array.dictionary)
        return 0 if lengths is None else pc.sum(pc.take(lengths, array.indices)).as_py() or 0
    lengths = _lengths(array)
    if lengths is not None:
        return pc.sum(lengths).as_py() or 0
    if pa.types.is_map(kind):
        return _text_length(array.keys) + _text_length(array.items)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _text_length(array.flatten())
    if pa.types.is_struct(kind):
        return sum(_text_length(child) for child in array.flatten())
    return 0


def _lengths(array):
    """Each value's length, for an array of text or bytes; None for any other."""
    import pyarrow as pa  # heavy: only for Parquet and Arrow files
    import pyarrow.compute as pc  # heavy, as above

    kind = array.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pc.utf8_length(array)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pc.binary_length(array)
    return None


HUB_ADVICE = "pick a smaller slice, e.g. train[0:500]"


def read_hub_dataset(repo: str, config: str | None, split: str, limits: ReadLimits = READ_LIMITS) -> list[dict]:
    """Download a slice of a Hub dataset; one clear sentence when the Hub cannot be reached, or when the
    slice is past `limits` (checked on the memory-mapped Arrow data, before it becomes Python rows)."""
    where = f"Dataset {repo} ({config}, {split})"
    if not hub_offline_mode() and not hub_reachable():
        raise DatasetError(
            f"{where}: the Hugging Face Hub cannot be reached from this machine "
            "(offline?); a dataset downloaded earlier loads with HF_HUB_OFFLINE=1, or use a local file"
        )
    try:
        from datasets import load_dataset  # heavy: only for a Hub dataset

        dataset = load_dataset(repo, config, split=split)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "connect" in reason.lower() or "offline" in reason.lower() or "resolve" in reason.lower():
            reason = "the Hugging Face Hub cannot be reached from here and the dataset is not cached"
        raise DatasetError(f"{where}: {reason}") from None
    try:
        rows, table = len(dataset), dataset.data.table
        limits.check(where, rows=rows, cells=rows * table.num_columns,
                     characters=sum(_text_length(column) for column in table.columns),
                     mb=dataset.data.nbytes / 2**20, advice=HUB_ADVICE)
    except DatasetError as err:
        del dataset, table
        raise _bare(err) from None
    return dataset.to_list()


# ---------------------------------------------------------------------------------------------
# Columns


def detect_columns(columns: list[str]) -> ColumnMap:
    """Guess which column holds the question, reasoning and answer (or a `messages` list)."""
    lower = {c.lower(): c for c in columns}
    found: dict[str, str] = {}
    for role, candidates in COLUMN_CANDIDATES.items():
        for candidate in candidates:
            column = lower.get(candidate)
            if column and column not in found.values():
                found[role] = column
                break
    if "messages" in found:
        return ColumnMap(messages=found["messages"])
    # Alpaca shape: instruction + input + output. The instruction is the question, input its context.
    if found.get("question", "").lower() == "instruction" and "input" in lower and "context" not in found:
        found["context"] = lower["input"]
    return ColumnMap(**{role: found.get(role) for role in ("question", "reasoning", "answer", "context")})


def resolve_columns(columns: list[str], overrides: dict[str, str], name: str, need_answer: bool = True) -> ColumnMap:
    """Detected mapping with the user's overrides applied; errors list the columns found.

    `need_answer=False` (evaluation of multiple-choice rows) accepts rows without an answer column."""
    mapping = detect_columns(columns)
    for role, column in overrides.items():
        if role not in ROLES:
            raise DatasetError(f"{name}: unknown column role '{role}'; use question, reasoning, answer, messages")
        if column and column not in columns:
            raise DatasetError(f"{name}: column '{column}' (for {role}) not found; columns found: {', '.join(columns)}")
        setattr(mapping, role, column or None)
    if mapping.messages:
        return mapping
    missing = [role for role in ("question", "answer")[: 2 if need_answer else 1] if not getattr(mapping, role)]
    if missing:
        raise DatasetError(
            f"{name}: missing column for the {' and the '.join(missing)}; "
            f"columns found: {', '.join(columns) or 'none'}. "
            "Expected e.g. Question/Complex_CoT/Response, question/reasoning/answer, input/output, or messages"
        )
    return mapping


# ---------------------------------------------------------------------------------------------
# Rows to examples


def _require_text(value: str, where: str) -> str:
    """`value` if it can be tokenized and shown. A JSON escape of half a surrogate pair (\\ud800) reads
    as a lone surrogate: Python keeps it, but no tokenizer or browser accepts it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        escape = value[err.start].encode("unicode_escape").decode()
        raise DatasetError(
            f"{where} holds {escape}, half of a UTF-16 surrogate pair, which is not text; "
            "fix or remove that escape"
        ) from None
    return value


def _cell(row: dict, column: str, number: int, name: str, required: bool) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN from pandas/parquet
        value = ""
    if not isinstance(value, str):
        try:
            value = str(value)
        except RecursionError:  # a list or object nested about as deep as the JSON reader allows
            raise DatasetError(f"{name}: row {number}, column '{column}' nests lists or objects too deeply") from None
    _require_text(value, f"{name}: row {number}, column '{column}'")
    if required and not value.strip():
        raise DatasetError(f"{name}: row {number}, column '{column}' is empty")
    return value.strip()


def _example_from_messages(messages, number: int, name: str, column: str) -> Example:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DatasetError(f"{name}: row {number}, column '{column}' must be a list of {{role, content}} objects")
    roles = [m.get("role") or m.get("from") for m in messages]
    contents = [m.get("content") if "content" in m else m.get("value") for m in messages]
    assistant = [i for i, r in enumerate(roles) if r in ("assistant", "gpt")]
    user = [i for i, r in enumerate(roles) if r in ("user", "human") and assistant and i < assistant[-1]]
    if not assistant or not user:
        raise DatasetError(f"{name}: row {number}, column '{column}' needs a user turn followed by an assistant turn")
    question, reply = contents[user[-1]], contents[assistant[-1]]
    if not isinstance(question, str) or not question.strip() or not isinstance(reply, str) or not reply.strip():
        raise DatasetError(f"{name}: row {number}, column '{column}' has an empty user or assistant turn")
    for text in (question, reply):
        _require_text(text, f"{name}: row {number}, column '{column}'")
    thinking, answer, closed = split_think(reply)
    if not closed and THINK_OPEN not in reply:  # "<th": split_think, made for streams, waits for the rest of a tag
        thinking, answer, closed = "", reply.strip(), True
    if not closed:
        raise DatasetError(f"{name}: row {number}, column '{column}': the assistant's <think> block is never closed")
    if not answer:
        raise DatasetError(f"{name}: row {number}, column '{column}': the assistant turn has no answer after </think>")
    return Example(question.strip(), thinking, answer)


def to_examples(rows: list[dict], mapping: ColumnMap, name: str, strict: bool = True) -> list[Example]:
    """Turn raw rows into examples, naming the first row and column that is unusable.

    `strict=False` (evaluation) lets the reasoning and the answer be empty: only the question is required."""
    examples = []
    for number, row in enumerate(rows, start=1):
        if mapping.messages:
            examples.append(_example_from_messages(row.get(mapping.messages), number, name, mapping.messages))
            continue
        question = _cell(row, mapping.question, number, name, required=True)
        if mapping.context:
            context = _cell(row, mapping.context, number, name, required=False)
            question = f"{question}\n\n{context}" if context else question
        reasoning = _cell(row, mapping.reasoning, number, name, required=strict) if mapping.reasoning else ""
        answer = _cell(row, mapping.answer, number, name, required=strict) if mapping.answer else ""
        examples.append(Example(question, reasoning, answer))
    return examples


@dataclass
class RawRows:
    """A dataset as read, before its columns are mapped: read once, mapped as often as the user likes."""

    name: str
    rows: list[dict]
    columns: list[str]

    def detected(self) -> dict[str, str]:
        """The column guessed for each role, e.g. {'question': 'Question', 'reasoning': 'Complex_CoT'}."""
        return detect_columns(self.columns).as_dict()


@dataclass
class LoadedRows:
    name: str
    rows: list[dict]
    columns: list[str]
    mapping: ColumnMap
    examples: list[Example]


def write_rows(rows: list[dict], path: str | Path) -> None:
    """Rows as JSON Lines, which `read_source` reads back (values JSON lacks, e.g. dates, as text)."""
    Path(path).write_text("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def read_source(source: str, split: str = "train[0:500]", max_rows: int | None = None,
                limits: ReadLimits = READ_LIMITS) -> RawRows:
    """Read a preset ('sample', 'medical-o1', ...) or a file into raw rows and their column names, refusing
    a file or a Hub slice past `limits` before it is read in full."""
    if source == "sample":
        name, rows = SAMPLE_FILE.name, read_records(SAMPLE_FILE, limits)
    elif source in HUB_PRESETS:
        repo, config = HUB_PRESETS[source]
        name, rows = f"{repo}:{config}", read_hub_dataset(repo, config, split, limits)
    else:
        name, rows = Path(source).name, read_records(source, limits)
    if max_rows is not None:
        rows = rows[:max_rows]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:  # shown in the column pickers and in messages
        _require_text(column, f"{name}: a column name")
    return RawRows(name, rows, columns)


def map_columns(raw: RawRows, columns: dict[str, str] | None = None) -> LoadedRows:
    """Apply the detected column mapping (with the user's overrides) and build the examples."""
    mapping = resolve_columns(raw.columns, columns or {}, raw.name)
    return LoadedRows(raw.name, raw.rows, raw.columns, mapping, to_examples(raw.rows, mapping, raw.name))


def load_examples(
    source: str, columns: dict[str, str] | None = None, split: str = "train[0:500]", max_rows: int | None = None
) -> LoadedRows:
    """Read a preset or a file and map its columns: the whole input side of a run."""
    return map_columns(read_source(source, split, max_rows), columns)


# ---------------------------------------------------------------------------------------------
# Evaluation items and the held-out split


def eval_items(rows: list[dict], examples: list[Example], name: str, strict: bool = True) -> list[EvalItem]:
    """Examples as evaluation items; rows with `options` (a {letter: text} object or a list) and
    `answer_idx` (or a letter, or the option's text, in `answer`) are multiple-choice items too.

    `strict=False` (rows held out of a training set) drops unusable options instead of failing.
    """
    items = []
    for number, (row, example) in enumerate(zip(rows, examples, strict=True), start=1):
        try:
            options = _options(row.get("options"), name, number)
            gold = _gold(row, options, name, number) if options else None
        except DatasetError:
            if strict:
                raise
            options, gold = None, None
        items.append(EvalItem(example.question, example.reasoning, example.answer, options, gold))
    return items


def _options(value, name: str, number: int) -> dict[str, str] | None:
    if value in (None, "", [], {}):
        return None
    if isinstance(value, list):
        if len(value) > 26:  # past Z the letters would run into punctuation, and 'a' would become 'A' again
            raise DatasetError(f"{name}, row {number}: 'options' has {len(value)} entries; at most 26 (A to Z)")
        value = {chr(ord("A") + i): text for i, text in enumerate(value)}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise DatasetError(f"{name}, row {number}: 'options' must be a {{letter: text}} object or a list of texts")
    options = {str(k).strip().upper(): v.strip() for k, v in value.items()}
    if len(options) < len(value):
        raise DatasetError(f"{name}, row {number}: 'options' names a letter twice (letters ignore case and spaces)")
    for text in (*options, *options.values()):  # both go into the prompt
        _require_text(text, f"{name}, row {number}: 'options'")
    return options


def _gold(row: dict, options: dict[str, str], name: str, number: int) -> str:
    """The correct letter from `answer_idx` (a letter or a 0-based index) or `answer` (letter or text)."""
    for key in ("answer_idx", "answer"):
        value = row.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(options):
            return list(options)[value]
        if isinstance(value, str):
            text = value.strip().strip("().").upper()
            if text in options:
                return text
            matches = [k for k, v in options.items() if v.lower() == value.strip().lower()]
            if matches:
                return matches[0]
    raise DatasetError(f"{name}, row {number}: has options but no answer_idx (or answer) naming one of them")


HOLDOUT_SHARE = 0.10
"""Automatic hold-out: one row in ten, the customary validation share."""
HOLDOUT_FLOOR = 2
"""At least 2 rows: a comparison of base and fine-tuned on one row says nothing."""
HOLDOUT_CAP = 50
"""At most 50 rows: every held-out row is answered twice at the end of a run (base and fine-tuned, up to 4,096
new tokens each on a GPU), so 50 rows already take minutes there; past that, more rows train instead."""
MIN_TRAIN_ROWS = 16
"""Fewer rows than this to train on (two of the seeds' batches of 8) and a run mostly memorises a handful
of rows: the automatic hold-out takes none from such a dataset, and a plan leaving fewer warns."""
LARGE_HOLDOUT_SHARE = 0.25
"""An explicit hold-out above a quarter of the rows warns: that much data is not trained on."""


@dataclass(frozen=True)
class HoldoutPlan:
    """How many of a dataset's rows are held out for the end-of-run evaluation and how many train."""

    held: int
    train: int
    automatic: bool
    """Sized by `holdout_plan` (requested None) rather than given."""
    warning: str = ""
    """One sentence when the split leaves little to train on, or holds out a large share; else empty."""

    @property
    def summary(self) -> str:
        """e.g. '16 rows held out for evaluation (automatic: one in ten), 144 left to train.'"""
        if not self.held:
            why = " (too few rows to spare any)" if self.automatic else ""
            return (f"No rows held out{why}: all {self.train} train, and the run ends without a base vs "
                    "fine-tuned evaluation.")
        how = ""
        if self.automatic:
            how = f" (automatic: {HOLDOUT_SHARE:.0%} of the rows, {HOLDOUT_FLOOR} to {HOLDOUT_CAP})"
        return f"{_rows(self.held)} held out for evaluation{how}, {self.train} left to train."


def holdout_plan(total: int, requested: int | None, name: str = "") -> HoldoutPlan:
    """Split `total` rows: `requested` held out, or None to size the hold-out to the data (HOLDOUT_SHARE
    of the rows, HOLDOUT_FLOOR to HOLDOUT_CAP, none when fewer than MIN_TRAIN_ROWS would be left).
    DatasetError, starting with `name`, when an explicit hold-out leaves nothing to train on."""
    where = f"{name}: " if name else ""
    if requested is None:
        spare = total - MIN_TRAIN_ROWS
        held = 0 if spare < HOLDOUT_FLOOR else min(max(int(total * HOLDOUT_SHARE), HOLDOUT_FLOOR), HOLDOUT_CAP, spare)
    else:
        held = max(requested, 0)
        if held and held >= total:
            raise DatasetError(f"{where}cannot hold out {held} of {total} rows: nothing would be left to train on; "
                               f"hold out fewer, or leave the hold-out automatic")
    train = total - held
    warning = ""
    if train < MIN_TRAIN_ROWS and held:
        warning = (f"{where}holding out {held} of {total} rows leaves only {_rows(train)} to train on, and a run "
                   f"learns little from fewer than {MIN_TRAIN_ROWS}: hold out fewer, or leave it automatic.")
    elif train < MIN_TRAIN_ROWS:
        warning = f"{where}only {_rows(train)} to train on; a run learns little from fewer than {MIN_TRAIN_ROWS}."
    elif held > total * LARGE_HOLDOUT_SHARE:
        warning = (f"{where}{held} of {total} rows ({held / total:.0%}) are held out and never trained on; "
                   "an automatic hold-out would keep more to train.")
    return HoldoutPlan(held, train, requested is None, warning)


def _rows(count: int) -> str:
    return f"{count} row" if count == 1 else f"{count} rows"


def holdout_indices(total: int, rows: int | None, seed: int = 0, name: str = "") -> list[int]:
    """Which of `total` rows to hold out of training: `rows` of them (None: as `holdout_plan` sizes it) at
    random, fixed by `seed`, in order. `name`, the dataset's, starts the message when there are too few rows."""
    held = holdout_plan(total, rows, name).held
    return sorted(random.Random(seed).sample(range(total), held)) if held else []
