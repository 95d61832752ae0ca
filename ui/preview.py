"""What a dataset will become, shown before anything trains: rows, mapping, exact text, lengths.

`read_upload` checks an uploaded file once (type, size) and reads it; `preview_dataset` maps and
tokenizes it the way a run will (ui.presenters says it in words and bins its lengths).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from finetune.bounds import shorten
from finetune.config import DataSettings
from finetune.data.prompts import LengthStats, preview_row, tokenize_rows
from finetune.data.sources import (
    HUB_PRESETS,
    READ_LIMITS,
    DatasetError,
    HoldoutPlan,
    LoadedRows,
    RawRows,
    ReadLimits,
    holdout_plan,
    map_columns,
    read_source,
)
from ui.presenters import dataset_summary, length_histogram

MAX_UPLOAD_MB = 50


def read_upload(path: str | Path, max_mb: float = MAX_UPLOAD_MB, limits: ReadLimits = READ_LIMITS) -> RawRows:
    """Read an uploaded dataset file, refusing wrong types, oversized files and files that expand past
    `limits` with one sentence."""
    path = Path(path)
    if not path.is_file():  # e.g. Gradio's copy of the upload was cleaned away
        raise DatasetError(f"{path.name}: no such file; upload it again")
    size_mb = path.stat().st_size / 2**20
    if size_mb > max_mb:
        raise DatasetError(f"{path.name}: {size_mb:.0f} MB is over the {max_mb:g} MB upload limit")
    return read_source(str(path), limits=limits)


def read_dataset(source: str, upload: str | Path | None = None, split: str = "train[0:500]",
                 max_mb: float = MAX_UPLOAD_MB, limits: ReadLimits = READ_LIMITS) -> RawRows:
    """Read a preset, or the uploaded file when `source` is 'upload': the one read of a visitor's choice.

    Never a path: a visitor names a preset or uploads a file (the CLI reads paths, the app does not)."""
    if source == "upload":
        if not upload:
            raise DatasetError("No file uploaded yet: drop a .jsonl, .json, .csv or .parquet file above.")
        return read_upload(upload, max_mb, limits)
    if source != "sample" and source not in HUB_PRESETS:
        raise DatasetError(f"{source!r} is not one of the datasets offered: pick one, or upload a file.")
    return read_source(source, split, limits=limits)


@dataclass
class DatasetPreview:
    loaded: LoadedRows
    """The mapped rows: what Start trains on."""
    name: str
    rows: int
    columns: list[str]
    mapping: dict[str, str]
    table: list[list[str]]
    """The first examples as (question, reasoning, answer), shortened for a table."""
    segments: list[tuple[str, bool]] = field(default_factory=list)
    """The exact training text of one row as (text, trained) pieces; empty without a tokenizer."""
    stats: LengthStats | None = None
    histogram: list[dict] = field(default_factory=list)
    """Token length bins: {'tokens': label, 'rows': count, 'fits': 'fits' | 'truncated'}."""
    holdout: HoldoutPlan | None = None
    """How `data.holdout_rows` splits these rows; None when it cannot (see `holdout_error`)."""
    holdout_error: str = ""
    """Why the hold-out asked for cannot be: a run would refuse it. The text and lengths shown are then of
    all rows."""

    def summary(self) -> str:
        """In words, as the Dataset tab shows it (`ui.presenters.dataset_summary`)."""
        return dataset_summary(self)


def preview_dataset(
    raw: RawRows, data: DataSettings, tokenizer=None, max_length: int = 2048, row_index: int = 0, shown: int = 5
) -> DatasetPreview:
    """Map raw rows with `data.columns` and summarize them, with how `data.holdout_rows` splits them (held
    out, left to train, any warning); with a tokenizer, also the exact training text of row `row_index`
    (0-based) of the rows that train, and their token lengths."""
    rows = map_columns(raw, data.columns)
    table = [[shorten(text, 300) for text in (e.question, e.reasoning, e.answer)] for e in rows.examples[:shown]]
    preview = DatasetPreview(rows, rows.name, len(rows.examples), rows.columns, rows.mapping.as_dict(), table)
    try:
        preview.holdout = holdout_plan(len(rows.examples), data.holdout_rows)
    except DatasetError as err:  # said in the summary; the rows are still worth seeing
        preview.holdout_error = str(err)
        data = replace(data, holdout_rows=0)
    if tokenizer is None:
        return preview
    prepared = tokenize_rows(rows, data, tokenizer, max_length)
    if not prepared.rows:
        raise DatasetError(f"{rows.name}: every row's prompt fills the max length ({max_length}); raise it")
    row = prepared.rows[min(max(row_index, 0), len(prepared.rows) - 1)]
    preview.segments = preview_row(tokenizer, row)
    preview.stats = prepared.stats
    preview.histogram = length_histogram(prepared.lengths, max_length)
    return preview
