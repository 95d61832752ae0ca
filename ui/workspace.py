"""What a shared app holds: one loaded model and its latest training run.

A Space gives its visitors one GPU, so there is one model and at most one run at a time, and every
visitor sees the same ones. Each method is one thing a visitor does; each refusal is a
`WorkspaceError` (or `TrainingBusy`) whose message can be shown as it is.

    workspace = Workspace(Path("runs"))
    workspace.load(ModelSettings("embedded"))
    job = workspace.start_training(map_columns(read_source("sample")), DataSettings(), train, lora)
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from finetune.bounds import TextLimits, shorten
from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings
from finetune.data.prompts import PreparedDataset, tokenize_rows
from finetune.data.sources import MCQ_FILE, READ_LIMITS, SAMPLE_FILE, DatasetError, LoadedRows, ReadLimits, write_rows
from finetune.evaluate.estimate import DecodeRate, estimate_line, guessed_rate, measured_rate
from finetune.evaluate.heldout import MODELS, EvalProgress, EvalReport, EvalSettings, evaluate, load_eval_items
from finetune.generate.chat import ChatRuns, stream_chat
from finetune.generate.reply import GenerationSettings
from finetune.hub import push_folder
from finetune.models.adapters import load_adapter
from finetune.models.download import Progress
from finetune.models.load import LoadedModel, ModelInfo, load_model, release_memory
from finetune.runs import (
    RunFolder,
    RunSummary,
    disk_error,
    list_runs,
    mark_abandoned_runs,
    read_record,
    read_run_template,
    run_folder,
    run_template,
)
from finetune.train.job import TrainingBusy, TrainingJob
from finetune.train.recipe import Recipe, RecipeError, load_recipe
from ui.presenters import eval_progress_line, flattery_note


class WorkspaceError(RuntimeError):
    """A visitor's request that cannot be done now; the message says why and what to do."""


@dataclass
class Workspace:
    runs_dir: Path
    loaded: LoadedModel | None = None
    job: TrainingJob | None = None
    """The latest run, kept after a new model loads so its plot stays on the dashboard."""
    loading: str | None = None
    """The name of the model being loaded right now, if any (a visitor's Load, or --preload)."""
    trained_template: str | None = None
    """The template the current adapter learned: chat must prompt the same way."""
    allow_local_paths: bool = False
    """Whether a visitor may name a model folder of this machine (the operator's choice; off on a Space)."""
    real_rows: Path | None = None
    """Real medical-o1 rows the Evaluate tab offers (the operator's file, or ../shared's); None: not offered."""
    text_limits: TextLimits = field(default_factory=TextLimits)
    """The longest chat question, conversation and system prompt a visitor may send (the operator's)."""
    read_limits: ReadLimits = READ_LIMITS
    """The most a visitor's dataset may become once read (rows, cells, characters, decoded size)."""
    interrupted_runs: list[str] = field(default_factory=list, init=False)
    """Runs found "running" at start whose process had died, now marked incomplete."""
    _loading: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _starting: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """Held from a Start's check that no run is going on until its run is going (or refused and undone)."""
    _chat_stops: dict[str, threading.Event] = field(default_factory=dict, repr=False)
    """One stop switch per visitor's reply in progress, so Stop ends that visitor's reply only."""
    _eval_stops: dict[str, threading.Event] = field(default_factory=dict, repr=False)
    _decode_rate: tuple[weakref.ref, DecodeRate] | None = field(default=None, repr=False)
    """The last measured generation speed and the model it was measured on (a weak reference: a
    rate must not keep an unloaded model's memory)."""

    def __post_init__(self) -> None:
        # Runs whose process died (the app was killed or restarted mid-training) say so from now on.
        self.interrupted_runs = mark_abandoned_runs(self.runs_dir)

    @property
    def training(self) -> bool:
        return self.job is not None and self.job.running

    def load(self, settings: ModelSettings, progress: Progress | None = None) -> ModelInfo:
        """Load a model for everyone; the old one stays in use if the new one fails. A Hub model is
        downloaded first, telling `progress(fraction, line)` how far it has got."""
        if self.training:
            raise TrainingBusy(self.job)
        if not self._loading.acquire(blocking=False):
            raise WorkspaceError("Another model is loading right now; wait for it to finish.")
        try:
            self.loading = settings.name
            loaded = load_model(settings, allow_local=self.allow_local_paths, progress=progress)
            replaced = self.loaded is not None
            self.loaded, self.trained_template = loaded, None  # drops the last reference to the old model
            if replaced:
                release_memory(loaded.device)
            return loaded.info
        finally:
            self.loading = None
            self._loading.release()

    def require_model(self) -> LoadedModel:
        if self.loaded is None:
            raise WorkspaceError("No model loaded: load one in the Model tab first.")
        return self.loaded

    def prepare(self, rows: LoadedRows, data: DataSettings, max_length: int) -> PreparedDataset:
        """Tokenize mapped rows with the loaded model's tokenizer: exactly what a run trains on."""
        return tokenize_rows(rows, data, self.require_model().tokenizer, max_length)

    def start_training(
        self,
        rows: LoadedRows | None,
        data: DataSettings,
        train: TrainSettings,
        lora: LoraSettings,
        run_name: str = "",
        max_length: int | None = None,
    ) -> TrainingJob:
        """Start a run on the loaded model, its rows cut at `max_length` tokens (None: the length the model was
        loaded for); refuses clearly with no model, no data, or a run going on.

        Two visitors pressing Start at once: one starts, the other is told a run is starting. The run
        folder is reserved (created, never reused) before anything is written into it, and removed
        again if the start is refused after that, so a refused Start leaves nothing on disk."""
        loaded = self.require_model()
        if rows is None:
            raise WorkspaceError("No dataset: pick a preset or upload a file in the Dataset tab first.")
        self._check_system_prompt(data.system_prompt)
        model = replace(loaded.settings, max_length=loaded.settings.max_length if max_length is None else max_length)
        if not self._starting.acquire(blocking=False):
            raise WorkspaceError("Another visitor is starting a run right now; watch it below, or wait for it to end.")
        try:
            if self.training:
                raise TrainingBusy(self.job)
            from finetune.train.trainer import start_training  # TRL and PEFT load on first use, not at app start

            prepared = self.prepare(rows, data, model.max_length)
            run = RunFolder(self._reserve_run_folder(run_name))
            try:
                # The run keeps its own copy of the rows, so its recipe.yaml repeats it after the upload is gone.
                write_rows(rows.rows, run.dataset)
                data = replace(data, source=str(run.dataset), columns=rows.mapping.as_dict())
                self.job = start_training(loaded, prepared, Recipe(model, data, train, lora, str(run.path)))
            except BaseException:
                shutil.rmtree(run.path, ignore_errors=True)
                raise
            self.trained_template = prepared.template
            return self.job
        finally:
            self._starting.release()

    @property
    def served_dirs(self) -> tuple[Path, ...]:
        """Folders the app serves for download: no run may be written in or under one."""
        return (self.exports_dir,)

    def _reserve_run_folder(self, run_name: str) -> Path:
        """Create the run's folder, atomically: a name taken (even a second ago, by another visitor) is
        refused, and an automatic name moves on to the next free one."""
        if len(run_name) > self.text_limits.name:
            raise WorkspaceError(f"The run name is {len(run_name):,} characters long; the limit is "
                                 f"{self.text_limits.name}.")
        name = _safe_name(run_name)
        if run_name.strip() and not name:
            raise WorkspaceError(f"The run name {shorten(run_name)!r} has no letters or digits: pick another.")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        if name:
            folder = self.runs_dir / name
            self._check_not_served(folder)
            try:
                folder.mkdir()
            except FileExistsError:
                raise WorkspaceError(f"A run named {name} exists already: pick another name, or resume it.") from None
            except OSError as err:
                raise WorkspaceError(f"Cannot create the run folder {name}: {disk_error(err)}") from None
            return folder
        stamp = time.strftime("run-%Y%m%d-%H%M%S")
        for number in range(1, 1000):
            folder = self.runs_dir / (stamp if number == 1 else f"{stamp}-{number}")
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                continue
            except OSError as err:
                raise WorkspaceError(f"Cannot create a run folder: {disk_error(err)}") from None
        raise WorkspaceError("Too many runs started this second: press Start again.")

    def _check_not_served(self, folder: Path) -> None:
        for served in self.served_dirs:
            resolved, served = folder.resolve(), served.resolve()
            if resolved == served or served in resolved.parents or resolved in served.parents:
                raise WorkspaceError(f"{folder.name} is the folder the app serves for download: pick another "
                                     "run name (a run's rows are not for everyone).")

    def _check_system_prompt(self, system_prompt: str) -> None:
        if len(system_prompt) > self.text_limits.system_prompt:
            raise WorkspaceError(f"The system prompt is {len(system_prompt):,} characters long; the limit here is "
                                 f"{self.text_limits.system_prompt:,}.")

    def shown(self, message: object) -> str:
        """A message for a visitor: paths under the runs folder relative to it, the server's other folders left
        out (a visitor needs the file's name, not where the server keeps it)."""
        text = str(message)
        for root in {str(self.runs_dir.resolve()), str(self.runs_dir.absolute())}:
            text = text.replace(root + "/", "").replace(root, ".")
        return _ABSOLUTE_DIRS.sub("", text)

    def runs(self) -> list[RunSummary]:
        """The runs in the output folder, newest first: what the Train tab offers to resume."""
        return list_runs(self.runs_dir)

    def resume_training(self, run_name: str) -> TrainingJob:
        """Continue a stopped or interrupted run from its last checkpoint, on the loaded model."""
        loaded = self.require_model()
        from finetune.train.trainer import resume_training  # TRL and PEFT: on first use, not at start

        run_dir = self.runs_dir / _safe_name(run_name)
        if not run_name or not RunFolder(run_dir).is_run():
            raise WorkspaceError("Pick a run to resume (one that was stopped or interrupted).")
        if not self._starting.acquire(blocking=False):
            raise WorkspaceError("Another visitor is starting a run right now; watch it below, or wait for it to end.")
        try:
            if self.training:
                raise TrainingBusy(self.job)
            self.job = resume_training(loaded, run_dir)
        finally:
            self._starting.release()
        self.trained_template = read_run_template(run_dir)
        return self.job

    def chat(
        self,
        question: str,
        settings: GenerationSettings,
        panes: Sequence[str] = ("base", "finetuned"),
        histories: dict[str, Sequence[tuple[str, str]]] | None = None,
        visitor: str = "",
        replies: dict | None = None,
    ) -> Iterator[dict[str, list[dict]]]:
        """Stream the answer of each pane; template 'auto' prompts the way the adapter was trained.

        `stop_chat(visitor)` ends it early; `replies` gets each pane's latest Reply."""
        loaded = self.require_model()
        self._check_conversation(question, settings.system_prompt, histories or {})
        if settings.template == "auto":
            settings = replace(settings, template=self.trained_template or "chat")
        stop = self._chat_stops[visitor] = threading.Event()
        replies = {} if replies is None else replies
        try:
            yield from stream_chat(loaded, question, settings, panes, histories, stop, replies)
        finally:
            if self._chat_stops.get(visitor) is stop:
                del self._chat_stops[visitor]
            finished = [reply for reply in replies.values() if reply.done]
            self._measured(loaded, sum(r.tokens for r in finished), sum(r.seconds for r in finished), "chat")

    def _check_conversation(self, question: str, system_prompt: str,
                            histories: dict[str, Sequence[tuple[str, str]]]) -> None:
        """Refuse what would hold the shared model for minutes before its first token: every character of the
        question, the system prompt and the earlier turns is read in one step that Stop cannot cut."""
        limits = self.text_limits
        if len(question) > limits.message:
            raise WorkspaceError(f"The question is {len(question):,} characters long; the limit here is "
                                 f"{limits.message:,}: shorten it.")
        self._check_system_prompt(system_prompt)
        for pane, turns in histories.items():
            length = len(question) + sum(len(asked) + len(answer) for asked, answer in turns)
            if length > limits.conversation:
                raise WorkspaceError(f"This conversation ({pane} pane) comes to {length:,} characters with the new "
                                     f"question; the limit here is {limits.conversation:,}: press Clear to start "
                                     "a new one.")

    def stop_chat(self, visitor: str = "") -> None:
        """End this visitor's reply in progress; what was written so far stays, marked as stopped."""
        stop = self._chat_stops.get(visitor)
        if stop is not None:
            stop.set()

    @property
    def adapter_run(self) -> str | None:
        """The run whose saved adapter is on the loaded model, which chat's fine-tuned pane answers with; None
        with no adapter, or one no run has saved yet (a run in progress, or one that failed)."""
        loaded = self.loaded
        if loaded is None or not loaded.has_adapter or loaded.adapter_dir is None:
            return None
        folder = run_folder(loaded.adapter_dir)
        return folder.name if folder is not None else None

    def chat_runs(self) -> ChatRuns:
        """The runs chat's fine-tuned pane can answer with (a saved adapter trained on the loaded model, newest
        first) and the one it answers with now."""
        loaded = self.loaded
        if loaded is None:
            return ChatRuns([], None, False)
        runs = [name for name in self.exportable_runs()
                if read_record(self.runs_dir / name).get("model", {}).get("name") == loaded.info.name]
        training = Path(self.job.output_dir).name if self.training else None
        return ChatRuns(runs, self.adapter_run, loaded.has_adapter, training)

    def use_run(self, run_name: str) -> ChatRuns:
        """Put a run's saved adapter on the loaded model: chat's fine-tuned pane (and Export) use it from now on.
        Refused while a run trains, or while a reply or an evaluation is using the model."""
        self.require_model()
        if not run_name:
            raise WorkspaceError("Pick a run for the fine-tuned pane (one that finished or was stopped).")
        if self.training:
            raise WorkspaceError("A training run is going on; the fine-tuned pane answers with it. Pick another "
                                 "run when it ends or is stopped.")
        if self._chat_stops or self._eval_stops:
            raise WorkspaceError("A reply (yours or another visitor's) or an evaluation is using the model; pick "
                                 "the run again when it ends.")
        self._put_on_adapter_of(self.runs_dir / _safe_name(run_name), wait=False)
        return self.chat_runs()

    def evaluation_sources(self) -> list[tuple[str, str]]:
        """(label, source) pairs for the Evaluate tab; the real medical-o1 rows first where there are some."""
        real = ([(f"Real medical-o1 rows ({_count_lines(self.real_rows)}; HuatuoGPT-o1, never bundled or trained on)",
                  "real")] if self.real_rows is not None else [])
        return [*real,
                ("Held-out rows of the latest run (never trained on)", "heldout"),
                ("Bundled multiple-choice questions (44)", "sample-mcq"),
                ("Bundled sample (the default training set, so not held out)", "sample"),
                ("Upload a file", "upload")]

    def _heldout_file(self) -> Path | None:
        if self.job is None or self.job.running:
            return None
        path = RunFolder(self.job.output_dir).heldout
        return path if path.is_file() else None

    def evaluate(
        self, source: str, upload: str | None, settings: EvalSettings, visitor: str = ""
    ) -> Iterator[tuple[str, EvalReport | None]]:
        """Evaluate base and fine-tuned in a worker thread; yield (progress line, None) about twice a
        second, then (summary line, report). `stop_evaluation(visitor)` ends it early."""
        loaded = self.require_model()
        if self.training:
            raise WorkspaceError("A training run is going on; evaluate when it ends or is stopped.")
        path = self._evaluation_file(source, upload)
        items = load_eval_items(path, limit=settings.limit, limits=self.read_limits)
        if settings.template == "auto":
            settings = replace(settings, template=self.trained_template or "chat")
        stop = self._eval_stops[visitor] = threading.Event()
        progress = [f"Evaluating {len(items)} questions: starting…"]  # until evaluate reports its first phase
        outcome: list = []

        def on_update(update: EvalProgress) -> None:
            progress[0] = eval_progress_line(update)

        def work() -> None:
            try:
                outcome.append(evaluate(loaded, items, settings, stop=stop, on_update=on_update))
            except Exception as err:  # shown to the visitor below
                outcome.append(err)

        worker = threading.Thread(target=work, name="evaluate", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                yield progress[0], None
                worker.join(0.5)
        except GeneratorExit:  # the page went away: stop instead of keeping the model busy
            stop.set()
            raise
        finally:
            if self._eval_stops.get(visitor) is stop:
                del self._eval_stops[visitor]
        if isinstance(outcome[0], Exception):
            raise outcome[0]
        report = outcome[0]
        answers = [result for results in report.items.values() for result in results]
        self._measured(loaded, sum(r.reasoning_tokens + r.answer_tokens for r in answers),
                       sum(r.seconds for r in answers), "the last evaluation")
        done = "Stopped; the figures cover the questions answered so far." if report.stopped else "Done."
        yield f"{done} {len(items)} questions from {Path(path).name}.{self._flattery_note(source)}", report

    def _flattery_note(self, source: str) -> str:
        """For the bundled sample's rows (its file, or a run's held out of it), that they flatter the model."""
        dataset = SAMPLE_FILE.name if source == "sample" else ""
        if source == "heldout" and self.job is not None:
            dataset = read_record(Path(self.job.output_dir)).get("dataset", {}).get("name", "")
        note = flattery_note(dataset, self.real_rows is not None)
        return f" {note}" if note else ""

    def _evaluation_file(self, source: str, upload: str | None) -> str:
        files = {"sample-mcq": str(MCQ_FILE), "sample": str(SAMPLE_FILE), "upload": upload,
                 "heldout": str(self._heldout_file() or ""), "real": str(self.real_rows or "")}
        path = files.get(source)
        if not path:
            raise WorkspaceError({"upload": "Upload a file first.",
                                  "real": "No real medical-o1 rows on this server: upload such a file instead.",
                                  "heldout": "No finished run with held-out rows yet: train with “Hold out rows” "
                                             "above 0 first, or pick another source."}.get(source,
                                                                                           "Pick what to evaluate on."))
        return path

    def _measured(self, loaded: LoadedModel, tokens: int, seconds: float, where: str) -> None:
        rate = measured_rate(tokens, seconds, where)
        if rate is not None:
            self._decode_rate = (weakref.ref(loaded), rate)

    def decode_rate(self) -> DecodeRate | None:
        """The generation speed last measured on the loaded model (in chat or an evaluation), if any."""
        if self._decode_rate is None or self.loaded is None or self._decode_rate[0]() is not self.loaded:
            return None
        return self._decode_rate[1]

    def evaluation_estimate(self, source: str, upload: str | None, limit: int | None, max_new_tokens: int) -> str:
        """About how long `evaluate` would take with these choices, as one line (why not, when it cannot)."""
        loaded = self.loaded
        if loaded is None:
            return "Load a model to see about how long an evaluation takes on this machine."
        try:
            path = self._evaluation_file(source, upload)
            questions = len(load_eval_items(path, limit=limit, limits=self.read_limits))
        except (WorkspaceError, DatasetError, ValueError):
            return ""  # Evaluate says why when pressed
        rate = self.decode_rate() or guessed_rate(loaded.device, loaded.info.memory_gb)
        return estimate_line(questions, len(MODELS) if loaded.has_adapter else 1, max_new_tokens, rate)

    def stop_evaluation(self, visitor: str = "") -> None:
        stop = self._eval_stops.get(visitor)
        if stop is not None:
            stop.set()

    @property
    def exports_dir(self) -> Path:
        return self.runs_dir / "exports"

    def exportable_runs(self) -> list[str]:
        """Runs with a saved adapter, newest first."""
        return [run.name for run in self.runs() if RunFolder(run.folder).has_adapter()]

    def export(self, fmt: str, name: str = "", run_name: str = "") -> Path:
        """Write a run's adapter (default: the one on the loaded model) in `fmt` to a new folder under exports/."""
        from finetune.export.save import export_model  # the GGUF writer (numpy, gguf): on the first export only

        loaded = self.require_model()
        if self.training:
            raise WorkspaceError("A training run is going on; export when it ends or is stopped.")
        if run_name:
            self._put_on_adapter_of(self.runs_dir / _safe_name(run_name))
        if not loaded.has_adapter:
            raise WorkspaceError("Nothing trained to export yet: train (or resume) a run first.")
        run_name = loaded.adapter_dir.parent.name if loaded.adapter_dir else "run"
        chosen = _safe_name(name)
        target = self.exports_dir / (chosen or f"{run_name}-{fmt.replace('_', '-')}")
        with loaded.lock:  # not while a reply is written: the GGUF and merged exports read every weight
            # An automatic name taken moves on to name-2, name-3… (picked when the folder is moved into
            # place); a name the visitor typed is refused if taken, with a free one suggested.
            return export_model(loaded, target, fmt, run_dir=loaded.adapter_dir, next_free=not chosen)

    def _put_on_adapter_of(self, run_dir: Path, wait: bool = True) -> None:
        """Put a run's saved adapter on the loaded model (also what chat's fine-tuned pane then answers with).

        `wait=False` refuses, instead of waiting, while a reply or an export holds the model."""
        loaded = self.require_model()
        adapter = RunFolder(run_dir).adapter
        if not RunFolder(run_dir).has_adapter():
            raise WorkspaceError(f"{run_dir.name} has no saved adapter: pick a run that finished or was stopped.")
        record = read_record(run_dir)
        trained_on = record.get("model", {}).get("name")
        if trained_on != loaded.info.name:
            raise WorkspaceError(f"{run_dir.name} trained {trained_on}, not the loaded {loaded.info.name}; load "
                                 "that model first.")
        if (loaded.has_adapter and loaded.adapter_dir is not None
                and Path(loaded.adapter_dir).resolve() == adapter.resolve()):
            return  # already on
        if not loaded.lock.acquire(blocking=wait):
            raise WorkspaceError("The model is writing a reply (or an export) for another visitor; pick the run "
                                 "again when it ends.")
        try:
            load_adapter(loaded, adapter)
        finally:
            loaded.lock.release()
        self.trained_template = run_template(record)

    def exports(self) -> list[str]:
        """The finished exports, newest first (a hidden .partial- folder is an export in progress or failed)."""
        if not self.exports_dir.is_dir():
            return []
        folders = [path for path in self.exports_dir.iterdir() if path.is_dir() and not path.name.startswith(".")]
        return [path.name for path in sorted(folders, key=lambda path: path.stat().st_mtime, reverse=True)]

    def push(self, export_name: str, repo_id: str, token: str | None, private: bool = True) -> str:
        """Upload one export folder to the Hub; the token is used for this call only and kept nowhere."""
        name = _safe_name(export_name or "")
        folder = self.exports_dir / name
        if not name or not folder.is_dir():  # no name would be exports/ itself
            raise WorkspaceError(self._no_export_to_push(export_name or ""))
        return push_folder(folder, (repo_id or "").strip(), token=(token or "").strip() or None, private=private)

    def _no_export_to_push(self, export_name: str) -> str:
        """Why there is nothing to push: no export yet (then export first), or none picked (then pick one)."""
        exports = self.exports()
        if not exports:
            return "Nothing exported yet: export the model first (above), then push that export."
        ready = "1 export is ready" if len(exports) == 1 else f"{len(exports)} exports are ready"
        if not export_name.strip():
            return f"Pick an export to push: {ready}, the latest {exports[0]}."
        return f"No export named {shorten(export_name)!r}: pick one of those ready ({ready}, the latest {exports[0]})."

    def stop_training(self) -> str:
        if not self.training:
            return "No training run is going on."
        self.job.stop()
        return ("Stopping after the current step; the adapter trained so far and a checkpoint to resume from "
                "will be saved.")

    def running_recipe(self) -> Recipe | None:
        """The settings of the run going on (as its Start or Resume set them), for a page opened meanwhile;
        None when no run is going on or its recipe cannot be read."""
        if not self.training:
            return None
        try:  # the file names every field, so the device's defaults under it do not show through
            return load_recipe(RunFolder(self.job.output_dir).recipe, "cpu")
        except RecipeError:
            return None


# The folders of an absolute path (left of its last part), not preceded by what makes it part of a URL,
# a relative path or a word: "/tmp/gradio/ab12/cases.jsonl" -> "cases.jsonl".
_ABSOLUTE_DIRS = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`]+/)+(?=[^\s/'\"`])")


def _safe_name(name: str) -> str:
    """A run name fit for a folder: letters, digits, '-', '_' and '.' only, no path tricks."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.strip())
    return cleaned.strip(".-")[:64]


def _count_lines(path: Path) -> int:
    with path.open("rb") as lines:
        return sum(1 for line in lines if line.strip())
