"""A run's folder on disk, readable whatever happened to the process that wrote it.

    runs/<name>/
      run.json           status (running, done, stopped, failed, incomplete), settings, data, metrics
      recipe.yaml        the recipe that ran: `python -m finetune train --config` repeats it
      dataset.jsonl      (runs started in the app) the rows as read, which that recipe points to
      train_rows.jsonl   the tokenized rows trained on, so a resume needs no upload again
      metrics.jsonl      one line per step, appended as the run goes
      heldout.jsonl      rows held out for evaluation, if any
      checkpoint-<step>/ adapter, optimizer and data position, to resume from
      adapter/           the trained adapter, when the run ended by itself or was stopped

run.json says "running" from the first step, with the id of the process. When that process dies
(killed, out of memory, the machine restarted), nothing else writes the folder: the next start of
the app or `python -m finetune runs` finds the process gone and marks the run "incomplete".
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RESUMABLE = ("stopped", "failed", "incomplete")


class RunFolderError(ValueError):
    """The run folder cannot be written (or read back); the message names it and says what to do."""


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
    path = Path(run_dir) / "run.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise RunFolderError(f"{run_dir}: no run.json, so it is not a run folder") from err
    except (OSError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path}: cannot be read ({err})") from err


def update_record(run_dir: Path, **changes) -> dict:
    record = read_record(run_dir)
    record.update(changes)
    write_json_atomic(run_dir / "run.json", record)
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
    import errno

    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "the disk is full. Free some space or choose an output folder on another disk."
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "permission denied (or a read-only disk). Choose a folder you can write to."
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way where a folder should be. Choose another output folder."
    return err.strerror or str(err)


def append_metric(run_dir: Path, metrics: dict) -> None:
    with open(run_dir / "metrics.jsonl", "a") as file:
        file.write(json.dumps(metrics) + "\n")


def read_metrics(run_dir: Path, up_to_step: int | None = None) -> list[dict]:
    path = run_dir / "metrics.jsonl"
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


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint; one cut short by a kill (no trainer state yet) is passed over."""
    complete = [
        folder for folder in Path(run_dir).glob("checkpoint-*")
        if folder.name.split("-")[-1].isdigit() and (folder / "trainer_state.json").is_file()
        and any(folder.glob("adapter_model.*"))
    ]
    return max(complete, key=lambda folder: int(folder.name.split("-")[-1]), default=None)


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


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
    for record_path in Path(runs_dir).glob("*/run.json"):
        try:
            yield record_path.parent, json.loads(record_path.read_text())
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
            write_json_atomic(folder / "run.json", record)
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
