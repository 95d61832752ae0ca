"""Read chain-of-thought datasets into one shape: Example(question, reasoning, answer).

Sources: our bundled sample, medical-o1-reasoning-SFT from the Hub, or a user's file
(.jsonl, .json, .csv, .parquet). Columns are detected by name and can be overridden. Every problem
is reported as one DatasetError sentence naming the file, line or row, and column.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from finetune.hub import hub_offline_mode, hub_reachable
from inference.think import THINK_OPEN, split_think

SAMPLE_DIR = Path(__file__).parent / "sample_data"
SAMPLE_FILE = SAMPLE_DIR / "clinical_vignettes.jsonl"
MCQ_FILE = SAMPLE_DIR / "clinical_mcq.jsonl"
REAL_ROWS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "medical_o1_sample.jsonl"
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
# Reading files


def read_records(path: str | Path) -> list[dict]:
    """Read a .jsonl/.json/.csv/.parquet file into a list of row dicts."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DatasetError(f"{name}: unsupported file type '{suffix or 'none'}'; use one of {', '.join(FILE_TYPES)}")
    if suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        text = _read_text(path)
        if not text.strip():
            raise DatasetError(f"{name}: the file is empty")
        rows = {".jsonl": _parse_jsonl, ".json": _parse_json, ".csv": _parse_csv}[suffix](text, name)
    if not rows:
        raise DatasetError(f"{name}: the file has no rows")
    return rows


def _read_text(path: Path) -> str:
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


def _load_json(text: str, name: str, where: str, line: int = 1):
    """json.loads with every failure as one DatasetError; `where` names the part read ('line 3', 'the file')
    and `line` is the file's line that `text` starts on."""
    try:
        return json.loads(text)
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


def _parse_jsonl(text: str, name: str) -> list[dict]:
    rows = []
    for number, line in enumerate(_LINE_BREAK.split(text), start=1):
        if not line.strip():
            continue
        row = _load_json(line, name, f"line {number}", number)
        if not isinstance(row, dict):
            raise DatasetError(f"{name}: line {number} is a JSON {type(row).__name__}, expected an object")
        rows.append(row)
    return rows


def _parse_json(text: str, name: str) -> list[dict]:
    data = _load_json(text, name, "the file")
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


def _parse_csv(text: str, name: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
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
            rows.append(row)
    except csv.Error as err:
        raise DatasetError(f"{name}: malformed CSV on line {lines.line_num}: {err}") from None
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as parquet:  # not pq.read_table: it fails on a repeated column name
            table = parquet.read()
        names = table.column_names  # decoded here: a damaged file's names may not be UTF-8
    except Exception as err:  # pyarrow raises several types for a damaged file
        # Its first line, without the server's folders: Arrow quotes the whole path.
        reason = (str(err).replace(str(path), path.name).splitlines() or [type(err).__name__])[0]
        raise DatasetError(f"{path.name}: not a readable Parquet file ({reason})") from None
    repeated = [column for column, count in Counter(names).items() if count > 1]
    if repeated:
        raise DatasetError(f"{path.name}: column '{repeated[0]}' appears more than once; give each column its own name")
    rows: list[dict] = [{} for _ in range(table.num_rows)]
    for column, values in zip(names, table.columns, strict=True):
        try:
            cells = values.to_pylist()
        except Exception:  # e.g. a date past year 9999: Arrow holds it, Python's datetime cannot
            try:
                cells = values.cast(pa.string()).to_pylist()  # as text, like any other cell
            except Exception as err:
                raise DatasetError(f"{path.name}: column '{column}' cannot be read ({err})") from None
        for row, cell in zip(rows, cells, strict=True):
            row[column] = cell
    return rows


def read_hub_dataset(repo: str, config: str | None, split: str) -> list[dict]:
    """Download a slice of a Hub dataset; one clear sentence when the Hub cannot be reached."""
    if not hub_offline_mode() and not hub_reachable():
        raise DatasetError(
            f"Dataset {repo} ({config}, {split}): the Hugging Face Hub cannot be reached from this machine "
            "(offline?); a dataset downloaded earlier loads with HF_HUB_OFFLINE=1, or use a local file"
        )
    try:
        from datasets import load_dataset

        return load_dataset(repo, config, split=split).to_list()
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "connect" in reason.lower() or "offline" in reason.lower() or "resolve" in reason.lower():
            reason = "the Hugging Face Hub cannot be reached from here and the dataset is not cached"
        raise DatasetError(f"Dataset {repo} ({config}, {split}): {reason}") from None


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


def read_source(source: str, split: str = "train[0:500]", max_rows: int | None = None) -> RawRows:
    """Read a preset ('sample', 'medical-o1', ...) or a file into raw rows and their column names."""
    if source == "sample":
        name, rows = SAMPLE_FILE.name, read_records(SAMPLE_FILE)
    elif source in HUB_PRESETS:
        repo, config = HUB_PRESETS[source]
        name, rows = f"{repo}:{config}", read_hub_dataset(repo, config, split)
    else:
        name, rows = Path(source).name, read_records(source)
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


def holdout_indices(total: int, rows: int, seed: int = 0, name: str = "") -> list[int]:
    """Which of `total` rows to hold out of training: `rows` of them at random (fixed by `seed`), in order.
    `name`, the dataset's, starts the message when there are too few rows."""
    if rows <= 0:
        return []
    if rows >= total:
        where = f"{name}: " if name else ""
        raise DatasetError(f"{where}cannot hold out {rows} of {total} rows: nothing would be left to train on")
    return sorted(random.Random(seed).sample(range(total), rows))
