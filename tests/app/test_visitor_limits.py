"""What one visitor of a shared app cannot do to the others: settings out of range, text that holds the
model for minutes, two Starts at once crossing their runs, a run in the served folder, server paths."""

import threading
import time
from dataclasses import fields

import pytest
from conftest import QUICK_LENGTH, quick_lora, quick_train

import app
from finetune.bounds import Range, TextLimits, number_from, range_of, text_from
from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings
from finetune.data.sources import map_columns, read_source
from finetune.evaluate.heldout import EvalSettings
from finetune.generate.reply import GenerationSettings, stream_reply
from ui.workspace import Workspace, WorkspaceError

SETTINGS = (ModelSettings, LoraSettings, TrainSettings, DataSettings, EvalSettings, GenerationSettings)
RANGED = [(cls, item.name, item.metadata["range"]) for cls in SETTINGS for item in fields(cls)
          if "range" in item.metadata]


def bad_values(bound: Range) -> list:
    values = [bound.low - 1, bound.high * 2 + 1, float("inf"), float("nan"), "3", [1]]
    return values + ([bound.low + 0.5] if bound.whole else [])


@pytest.mark.parametrize(("cls", "name", "bound"), RANGED, ids=[f"{c.__name__}.{n}" for c, n, _ in RANGED])
def test_every_numeric_setting_refuses_what_is_out_of_its_range_by_name(cls, name, bound):
    cls(**{name: bound.low})  # both ends are in range
    cls(**{name: bound.high})
    for value in bad_values(bound):
        with pytest.raises(ValueError, match=f"^{name} must be"):
            cls(**{name: value})


def test_the_forms_widgets_take_their_ranges_from_the_settings(tmp_path):
    demo = app.build_app(Workspace(tmp_path / "runs"), "cpu")
    widgets = {block.label: block for block in demo.blocks.values() if hasattr(block, "minimum")}
    for label, cls, name in [("Max steps", TrainSettings, "max_steps"), ("Learning rate", TrainSettings,
                              "learning_rate"), ("Seed", TrainSettings, "seed"), ("LoRA dropout", LoraSettings,
                              "dropout"), ("Micro-batch size", TrainSettings, "micro_batch_size"),
                             ("Max new tokens (reasoning included)", GenerationSettings, "max_new_tokens"),
                             ("Max length (tokens)", ModelSettings, "max_length")]:
        bound = range_of(cls, name)
        assert (widgets[label].minimum, widgets[label].maximum) == (bound.low, bound.high), label


def test_a_visitors_raw_values_are_read_or_refused_naming_the_field():
    steps = Range(1, 100)
    assert number_from(" 12 ", "Max steps", steps) == 12 and isinstance(number_from(3.0, "Max steps", steps), int)
    for value, reason in [(None, "a number is needed"), ("lots", "must be a number"), (True, "must be a number"),
                          (float("inf"), "finite"), (101, "between 1 and 100"), (2.5, "whole number")]:
        with pytest.raises(ValueError, match=f"^Max steps.*{reason}"):
            number_from(value, "Max steps", steps)
    # An optional number (the hold-out) left empty is its automatic choice; out of range is still refused.
    holdout = Range(0, 10, optional=True)
    assert number_from(None, "Hold out rows", holdout) is None and number_from("", "Hold out rows", holdout) is None
    with pytest.raises(ValueError, match="^Hold out rows.*between 0 and 10"):
        number_from(11, "Hold out rows", holdout)
    assert text_from(None, "Name", 5) == "" and text_from("abc", "Name", 5) == "abc"
    for value, reason in [("abcdef", "6 characters long; the limit here is 5"), (["a"], "must be text"),
                          ("a\ud800", "half of a UTF-16 surrogate pair")]:
        with pytest.raises(ValueError, match=f"^Name.*{reason}"):
            text_from(value, "Name", 5)


def test_messages_show_paths_relative_to_the_runs_folder(tmp_path):
    space = Workspace(tmp_path / "runs")
    runs = (tmp_path / "runs").resolve()
    assert space.shown(f"Cannot write to the output folder {runs}/demo: disk full") == \
        "Cannot write to the output folder demo: disk full"
    assert space.shown(f"✓ Exported to `{runs / 'exports' / 'a'}`") == "✓ Exported to `exports/a`"
    assert space.shown("/tmp/gradio/0a1b/cases.jsonl: no such file") == "cases.jsonl: no such file"
    kept = "see https://huggingface.co/owner/name and owner/name, 3/4 of the rows"
    assert space.shown(kept) == kept


# ---------------------------------------------------------------------------------------------
# With the embedded model


def rows(count):
    return map_columns(read_source("sample", max_rows=count))


@pytest.fixture
def workspace(tmp_path):
    space = Workspace(tmp_path / "runs", text_limits=TextLimits(message=200, conversation=400, system_prompt=50))
    space.load(ModelSettings())
    return space


@pytest.mark.slow
def test_two_starts_at_once_never_cross_their_runs(workspace, monkeypatch):
    """Both visitors press Start at the same moment (a slow tokenizer widens the window): one run starts
    with its own rows; the other is told why, and writes nothing."""
    prepare = workspace.prepare

    def slow_prepare(*args):
        time.sleep(1.0)
        return prepare(*args)

    monkeypatch.setattr(workspace, "prepare", slow_prepare)
    outcomes, datasets = {}, {"first": rows(4), "second": rows(6)}

    def press_start(visitor):
        try:
            outcomes[visitor] = workspace.start_training(datasets[visitor], DataSettings(), quick_train(1),
                                                         quick_lora(), "same-name", max_length=QUICK_LENGTH)
        except WorkspaceError as err:
            outcomes[visitor] = err

    threads = [threading.Thread(target=press_start, args=(visitor,)) for visitor in datasets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [visitor for visitor, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    assert len(started) == 1, outcomes
    refused = next(outcome for outcome in outcomes.values() if isinstance(outcome, Exception))
    assert "starting a run right now" in str(refused)
    job = outcomes[started[0]]
    assert job.wait(timeout=300) and job.status == "done", job.error
    copied = (workspace.runs_dir / "same-name" / "dataset.jsonl").read_text().splitlines()
    assert len(copied) == len(datasets[started[0]].rows)
    assert [path.name for path in workspace.runs_dir.iterdir()] == ["same-name"]


@pytest.mark.slow
def test_automatic_run_names_never_collide(workspace, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda pattern: "run-fixed")
    (workspace.runs_dir / "run-fixed").mkdir(parents=True)  # another visitor's, this very second
    job = workspace.start_training(rows(4), DataSettings(), quick_train(1), quick_lora(), max_length=QUICK_LENGTH)
    assert job.wait(timeout=300) and job.output_dir.endswith("run-fixed-2")
    assert not any((workspace.runs_dir / "run-fixed").iterdir())


def test_a_refused_start_leaves_nothing_on_disk(workspace):
    before = set(workspace.runs_dir.glob("**/*")) if workspace.runs_dir.exists() else set()
    with pytest.raises(ValueError, match="no rows left to train on"):  # refused after its folder was reserved
        workspace.start_training(rows(4), DataSettings(), quick_train(1), quick_lora(), "too-short", max_length=16)
    assert not (workspace.runs_dir / "too-short").exists()
    with pytest.raises(WorkspaceError, match="exists already"):
        (workspace.runs_dir / "taken").mkdir(parents=True)
        workspace.start_training(rows(4), DataSettings(), quick_train(1), quick_lora(), "taken")
    assert not any((workspace.runs_dir / "taken").iterdir())
    assert set(workspace.runs_dir.glob("**/*")) - before == {workspace.runs_dir / "taken"}


@pytest.mark.parametrize("name", ["exports", "  exports  ", "/exports/"])
def test_no_run_lands_in_the_folder_served_for_download(workspace, name):
    with pytest.raises(WorkspaceError, match="the folder the app serves for download"):
        workspace.start_training(rows(4), DataSettings(), quick_train(1), quick_lora(), name)
    assert not (workspace.exports_dir / "dataset.jsonl").exists()
    assert not (workspace.exports_dir / "run.json").exists()


def test_text_that_would_hold_the_model_is_refused_before_it_is_read(workspace):
    quick = GenerationSettings(max_new_tokens=2, temperature=0.0)
    with pytest.raises(WorkspaceError, match="question is 201 characters long; the limit here is 200"):
        next(workspace.chat("x" * 201, quick))
    with pytest.raises(WorkspaceError, match="system prompt is 51 characters long; the limit here is 50"):
        next(workspace.chat("What is sepsis?", GenerationSettings(max_new_tokens=2, system_prompt="s" * 51)))
    history = {"base": [("q" * 150, "a" * 150), ("q" * 50, "a" * 50)]}
    with pytest.raises(WorkspaceError, match=r"comes to 415 characters .* limit here is 400: press Clear"):
        next(workspace.chat("What is sepsis?", quick, ("base",), history))
    with pytest.raises(WorkspaceError, match="system prompt is 51 characters"):
        workspace.start_training(rows(4), DataSettings(system_prompt="s" * 51), quick_train(1), quick_lora())
    final = list(workspace.chat("What is sepsis?", quick, ("base",)))[-1]  # within the limits: answered
    assert final["base"]


def test_stop_pressed_while_a_reply_waits_for_the_model_reads_no_prompt(workspace):
    stop = threading.Event()
    stop.set()
    final = list(stream_reply(workspace.loaded, "What is sepsis? " * 100, GenerationSettings(max_new_tokens=50),
                              stop=stop))[-1]
    assert final.done and final.stopped and final.tokens == 0
