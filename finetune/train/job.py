"""A training job: the one object the UI, the CLI and the tests watch while a run goes on.

Metrics arrive from the trainer thread through `record`; any number of listeners `follow` the job,
and a listener that comes late gets the whole history first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the job module stays light: the app imports it before any model library
    from finetune.data.sources import HoldoutPlan
    from finetune.evaluate.heldout import EvalProgress


class TrainingBusy(RuntimeError):
    """A second start while a job runs; carries the running job so the caller can show its progress."""

    def __init__(self, job: TrainingJob):
        self.job = job
        progress = job.progress()
        super().__init__(
            f"busy: a training job is already running (step {progress['step']}/{progress['total_steps']}); "
            "stop it first"
        )


class TrainingJob:
    def __init__(self, total_steps: int, output_dir: str):
        self.total_steps = total_steps
        self.output_dir = output_dir
        self.status = "running"
        self.metrics: list[dict] = []
        self.error: str | None = None
        self.result: dict | None = None
        self.started_at = time.time()
        self.stop_requested = threading.Event()
        self.diverged: str | None = None
        """What went non-finite and at which step, once the loss or the gradients did (the run then fails)."""
        self.holdout: HoldoutPlan | None = None
        """The run's hold-out when the Start that made it knew it: rows held out, rows left to train."""
        self.evaluating: EvalProgress | None = None
        """While the run evaluates on its held-out rows: where that evaluation is (its last report)."""
        self._changed = threading.Condition()
        self.thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"

    def record(self, metrics: dict) -> None:
        with self._changed:
            self.metrics.append(metrics)
            self._changed.notify_all()

    def finish(self, status: str, result: dict | None = None, error: str | None = None) -> None:
        with self._changed:
            self.status, self.result, self.error = status, result, error
            self._changed.notify_all()

    def stop(self) -> None:
        """Ask the run to end after the current step; what it learned so far is kept and saved."""
        self.stop_requested.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; True if it did within `timeout`."""
        with self._changed:
            return self._changed.wait_for(lambda: not self.running, timeout)

    def follow(self, poll_s: float = 1.0) -> Iterator[dict]:
        """Yield every step's metrics, the history first, until the job ends."""
        seen = 0
        while True:
            with self._changed:
                self._changed.wait_for(lambda seen=seen: len(self.metrics) > seen or not self.running, poll_s)
                new, finished = self.metrics[seen:], not self.running
            yield from new
            seen += len(new)
            if finished and seen == len(self.metrics):
                return

    def progress(self) -> dict:
        """A snapshot for a status line: status, step, total, last loss, ETA, error."""
        last = self.metrics[-1] if self.metrics else {}
        return {
            "status": self.status,
            "step": last.get("step", 0),
            "total_steps": self.total_steps,
            "loss": last.get("loss"),
            "elapsed_s": round(time.time() - self.started_at, 1),
            "eta_s": last.get("eta_s"),
            "error": self.error,
            "evaluating": self.evaluating,
        }
