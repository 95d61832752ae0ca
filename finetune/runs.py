"""A run's folder on disk, readable whatever happened to the process that wrote it.

    runs/<name>/
      run.json           status (running, done, stopped, failed, incomplete), settings, data, metrics
      recipe.yaml        the recipe that ran: `python -m finetune train --config` repeats it
      dataset.jsonl      (runs started in the app) the rows as read, which that recipe points to
      train_rows.jsonl   the tokenized rows trained on, so a resume needs no upload again
      metrics.jsonl      one line per step, appended as the run goes
      heldout.jsonl      rows held out for evaluation, if any
      eval.json          the evaluation at the end of a run with held-out rows, question by question
      checkpoint-<step>/ adapter, optimizer and data position, to resume from
      adapter/           the trained adapter, when the run ended by itself or was stopped

run.json says "running" from the first step, with the id of the process. When that process dies
(killed, out of memory, the machine restarted), nothing else writes the folder: the next start of
the app or `python -m finetune runs` finds the process gone and marks the run "incomplete".

`RunFolder` names these files; every module reads and writes a run through it, so the layout is
spelled here only. This module imports nothing of the engine's wings.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RESUMABLE = ("stopped", "failed", "incomplete")
CHECKPOINT_PREFIX = "checkpoint-"
"""transformers' Trainer names each checkpoint it saves into the run folder checkpoint-<step>."""


class RunFolderError(ValueError):
    """The run folder cannot be written (or read back); the message names it and says what to do."""


@dataclass(frozen=True)
class RunFolder:
    """Where each file of one run lives: `RunFolder(path).record` is its run.json, and so on."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str is welcome too

    @property
    def record(self) -> Path:
        """run.json: status, owner, settings, data, metrics, evaluation."""
        return self.path / "run.json"

    @property
    def metrics(self) -> Path:
        """metrics.jsonl: one line per step, appended as the run goes."""
        return self.path / "metrics.jsonl"

    @property
    def recipe(self) -> Path:
        """recipe.yaml: the recipe that ran, which `python -m finetune train --config` repeats."""
        return self.path / "recipe.yaml"

    @property
    def train_rows(self) -> Path:
        """train_rows.jsonl: the tokenized rows trained on, what a resume trains on."""
        return self.path / "train_rows.jsonl"

    @property
    def heldout(self) -> Path:
        """heldout.jsonl: the rows held out for evaluation, if any."""
        return self.path / "heldout.jsonl"

    @property
    def eval(self) -> Path:
        """eval.json: the held-out evaluation at the end of the run, question by question."""
        return self.path / "eval.json"

    @property
    def adapter(self) -> Path:
        """adapter/: the trained adapter and tokenizer, once the run ended by itself or was stopped."""
        return self.path / "adapter"

    @property
    def dataset(self) -> Path:
        """dataset.jsonl: (runs started in the app) the rows as read, which recipe.yaml points to."""
        return self.path / "dataset.jsonl"

    def checkpoints(self) -> list[Path]:
        """The checkpoint-<step> folders, oldest step first (complete or not: see `last_checkpoint`)."""
        found = [folder for folder in self.path.glob(f"{CHECKPOINT_PREFIX}*")
                 if folder.name.removeprefix(CHECKPOINT_PREFIX).isdigit()]
        return sorted(found, key=checkpoint_step)

    def is_run(self) -> bool:
        """Whether this folder holds a run (its run.json)."""
        return self.record.is_file()

    def has_adapter(self) -> bool:
        """Whether the run saved an adapter (PEFT's adapter_config.json in adapter/)."""
        return (self.adapter / "adapter_config.json").is_file()


def write_json_atomic(path: Path, document: dict) -> None:
    """Write beside and rename: a kill mid-write leaves the old file, never half of the new one."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(document, file, indent=2, default=str)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_record(run_dir: str | Path) -> dict:
    """A run's run.json; RunFolderError when there is none or it cannot be read."""
    path = RunFolder(run_dir).record
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise RunFolderError(f"{run_dir}: no run.json, so it is not a run folder") from err
    except (OSError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path}: cannot be read ({err})") from err


def run_folder(adapter_dir: str | Path) -> Path | None:
    """The run folder an adapter came from (the one holding run.json): the folder given, or its parent."""
    adapter_dir = Path(adapter_dir)
    return next((folder for folder in (adapter_dir, adapter_dir.parent) if RunFolder(folder).is_run()), None)


def read_run_record(adapter_dir: str | Path | None) -> dict:
    """The run.json of an adapter's run (settings, data, metrics, evaluation); {} when there is none."""
    folder = run_folder(adapter_dir) if adapter_dir else None
    return json.loads(RunFolder(folder).record.read_text()) if folder else {}


def run_template(record: dict) -> str:
    """The template a run (its run.json record) trained with, so chat prompts it the same way."""
    return record.get("dataset", {}).get("template", "chat")


def read_run_template(adapter_dir: str | Path) -> str:
    """The template an adapter was trained with (from its run.json)."""
    return run_template(read_run_record(adapter_dir))


def run_max_length(record: dict) -> int | None:
    """The length a run's rows were cut at (run.json's dataset statistics), which it trained at."""
    return record.get("dataset", {}).get("stats", {}).get("max_length")


def update_record(run_dir: str | Path, **changes) -> dict:
    record = read_record(run_dir)
    record.update(changes)
    write_json_atomic(RunFolder(run_dir).record, record)
    return record


def check_writable(folder: Path) -> None:
    """Fail before a run starts, with a sentence, if its folder cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-")
        probe.write(b"x" * 4096)
        probe.flush()
        probe.close()
    except OSError as err:
        raise RunFolderError(f"Cannot write to the output folder {folder}: {disk_error(err)}") from err


def disk_error(err: OSError) -> str:
    """A disk problem in words, with what to do about it."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "the disk is full. Free some space or choose an output folder on another disk."
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (or a read-only disk). Choose a folder you can write to."
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way where a folder should be. Choose another output folder."
    return err.strerror or str(err)


def append_metric(run_dir: str | Path, metrics: dict) -> None:
    with open(RunFolder(run_dir).metrics, "a") as file:
        file.write(json.dumps(metrics) + "\n")


def write_metrics(run_dir: str | Path, metrics: list[dict]) -> None:
    """metrics.jsonl holding these steps only (empty at a run's start; a resume's curve up to its checkpoint)."""
    RunFolder(run_dir).metrics.write_text("".join(json.dumps(entry) + "\n" for entry in metrics))


def read_metrics(run_dir: str | Path, up_to_step: int | None = None) -> list[dict]:
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        return []
    metrics = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the last line of a killed run may be cut short
        if up_to_step is None or entry.get("step", 0) <= up_to_step:
            metrics.append(entry)
    return metrics


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; one cut short by a kill (no trainer state yet) is passed over."""
    complete = [folder for folder in RunFolder(run_dir).checkpoints()
                if (folder / "trainer_state.json").is_file() and any(folder.glob("adapter_model.*"))]
    return complete[-1] if complete else None


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.removeprefix(CHECKPOINT_PREFIX))


# ---------------------------------------------------------------------------------------------
# Which process owns a running run


def process_identity(pid: int | None = None) -> dict:
    """pid plus the process's start time, so a new process that reuses the pid is not taken for it."""
    pid = pid or os.getpid()
    return {"pid": pid, "pid_started": _start_time(pid)}


def _start_time(pid: int) -> str | None:
    try:  # Linux: field 22 of /proc/<pid>/stat, after the command name in parentheses
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, someone else's
    return owner.get("pid_started") is None or _start_time(pid) == owner.get("pid_started")


@dataclass
class RunSummary:
    name: str
    folder: Path
    status: str
    step: int
    total_steps: int | None
    checkpoint_step: int | None
    diverged: bool = False
    """Its loss went non-finite: resuming would diverge the same way at the same settings."""

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE and self.checkpoint_step is not None and not self.diverged

    def describe(self) -> str:
        where = f"step {self.step}/{self.total_steps or '?'}"
        resume = f", resumable from step {self.checkpoint_step}" if self.resumable else ""
        return f"{self.name}: {self.status} at {where}{resume}"


def _records(runs_dir: str | Path) -> Iterator[tuple[Path, dict]]:
    """(run folder, its run.json) for every run under `runs_dir`; an unreadable run.json is passed over."""
    for folder in map(RunFolder, Path(runs_dir).iterdir() if Path(runs_dir).is_dir() else ()):
        if folder.is_run():
            try:
                yield folder.path, json.loads(folder.record.read_text())
            except (OSError, json.JSONDecodeError):
                continue


def mark_abandoned_runs(runs_dir: str | Path) -> list[str]:
    """Mark "incomplete" every run still "running" whose process is gone; returns their names."""
    marked = []
    for folder, record in sorted(_records(runs_dir)):
        if record.get("status") == "running" and not process_alive(record.get("owner", {})):
            checkpoint = last_checkpoint(folder)
            record.update(status="incomplete", error=(
                "The process ended during training"
                + (f"; resume continues from step {checkpoint_step(checkpoint)}." if checkpoint
                   else " before the first checkpoint; start it again.")))
            write_json_atomic(RunFolder(folder).record, record)
            marked.append(folder.name)
    return marked


def list_runs(runs_dir: str | Path) -> list[RunSummary]:
    """Every run folder under `runs_dir`, newest first."""
    runs = []
    for folder, record in _records(runs_dir):
        metrics = record.get("metrics") or read_metrics(folder)
        checkpoint = last_checkpoint(folder)
        runs.append(RunSummary(folder.name, folder, record.get("status", "?"),
                               metrics[-1]["step"] if metrics else record.get("steps", 0),
                               record.get("total_steps"), checkpoint_step(checkpoint) if checkpoint else None,
                               bool(record.get("diverged"))))
    return sorted(runs, key=lambda run: run.folder.stat().st_mtime, reverse=True)
