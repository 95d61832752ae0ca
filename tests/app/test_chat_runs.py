"""Which run the fine-tuned pane answers with: the runs chat can use, switching between them, the refusals,
and over the app's API, the pane's label naming the run and the queued pane saying so from the first update."""

import json
import os
import threading
import time
import types

import pytest
from conftest import message_text, trained_looking_adapter
from gradio_client import Client

from finetune.config import ModelSettings
from finetune.generate.chat import NOTE
from finetune.generate.reply import GenerationSettings
from finetune.models.adapters import remove_adapter
from ui.workspace import Workspace, WorkspaceError


def saved_run(workspace: Workspace, name: str, model: str, template: str = "chat", age: float = 0) -> None:
    """A run folder as a finished run leaves it: run.json and adapter/ (a trained-looking one, not trained)."""
    folder = workspace.runs_dir / name
    folder.mkdir(parents=True)
    record = {"status": "done", "model": {"name": model}, "dataset": {"template": template}, "steps": 2}
    (folder / "run.json").write_text(json.dumps(record))
    trained_looking_adapter(workspace.loaded)
    workspace.loaded.model.save_pretrained(str(folder / "adapter"))
    remove_adapter(workspace.loaded)
    stamp = time.time() - age
    os.utime(folder, (stamp, stamp))


def with_two_runs(workspace: Workspace) -> Workspace:
    """The embedded model loaded, bare, beside an older and a newer run of it and a run of another model."""
    workspace.load(ModelSettings())
    name = workspace.loaded.info.name
    saved_run(workspace, "older", name, template="plain", age=60)
    saved_run(workspace, "newer", name, age=30)
    saved_run(workspace, "other-model", "someone/another-model")
    return workspace


@pytest.fixture
def workspace(tmp_path):
    return with_two_runs(Workspace(tmp_path / "runs"))


def test_chat_offers_the_runs_of_the_loaded_model_and_switches_between_them(workspace):
    runs = workspace.chat_runs()
    assert runs.runs == ["newer", "older"] and runs.current is None and not runs.adapter_on
    assert runs.title == "Fine-tuned: no adapter yet" and workspace.adapter_run is None
    runs = workspace.use_run("older")
    assert workspace.adapter_run == runs.current == "older" and runs.title == "Fine-tuned: older (LoRA on)"
    assert workspace.trained_template == "plain"  # chat's "Same as training" prompts the way it trained
    workspace.use_run("newer")
    assert workspace.adapter_run == "newer" and workspace.trained_template == "chat"
    assert workspace.loaded.adapter_dir == workspace.runs_dir / "newer" / "adapter"


def test_a_switch_is_refused_while_the_model_is_busy_and_for_runs_it_cannot_use(workspace):
    with pytest.raises(WorkspaceError, match="trained someone/another-model, not the loaded"):
        workspace.use_run("other-model")
    with pytest.raises(WorkspaceError, match="no-such-run has no saved adapter"):
        workspace.use_run("no-such-run")
    with pytest.raises(WorkspaceError, match="Pick a run"):
        workspace.use_run("")

    workspace.job = types.SimpleNamespace(running=True, output_dir=str(workspace.runs_dir / "going"))
    with pytest.raises(WorkspaceError, match="A training run is going on"):
        workspace.use_run("older")
    assert workspace.chat_runs().title == "Fine-tuned: going (training…)"
    workspace.job = None

    reply = workspace.chat("What is sepsis?", GenerationSettings(max_new_tokens=4, temperature=0.0), ("base",),
                           visitor="someone else")
    next(reply)  # that visitor's reply is being written
    with pytest.raises(WorkspaceError, match="A reply .* is using the model"):
        workspace.use_run("older")
    reply.close()

    held, release = threading.Event(), threading.Event()

    def export_elsewhere():  # e.g. an export reading every weight, in another visitor's thread
        with workspace.loaded.lock:
            held.set()
            release.wait(30)

    other = threading.Thread(target=export_elsewhere, daemon=True)
    other.start()
    assert held.wait(10)
    try:
        with pytest.raises(WorkspaceError, match="The model is writing a reply"):
            workspace.use_run("older")
    finally:
        release.set()
        other.join(10)
    assert workspace.adapter_run is None  # nothing was put on by the refused switches
    assert workspace.use_run("older").current == "older"  # and once the model is free, it is


@pytest.mark.slow
def test_the_pane_names_its_run_and_the_queued_pane_says_so_from_the_first_update(app_server):
    url, workspace = app_server
    with_two_runs(workspace)
    client = Client(url, verbose=False)
    picker, label = client.predict(api_name="/chat_runs")
    assert picker["choices"] == [["newer", "newer"], ["older", "older"]] and picker["value"] is None
    assert label["label"] == "Fine-tuned: no adapter yet"
    picker, label, status = client.predict("older", api_name="/use_run")
    assert picker["value"] == "older" and label["label"] == "Fine-tuned: older (LoRA on)"
    assert status == "✓ The fine-tuned pane answers with older now."
    assert client.predict(api_name="/chat_runs")[1]["label"] == "Fine-tuned: older (LoRA on)"

    job = client.submit("What is sepsis?", [], [], "Base vs fine-tuned", 8, 0.0, 0.95, 1.0, 0, "auto", "",
                        api_name="/chat")
    _, tuned, _, status = job.result(timeout=120)
    _, first_tuned, _, first_status = job.outputs()[0]
    queued = NOTE + "Waiting: the base model answers first…"
    assert message_text(first_tuned[-1]) == queued
    assert first_status.startswith("Base: ") and first_status.endswith("Fine-tuned: queued")
    assert status.startswith("Base: ") and " · Fine-tuned: " in status and status.count(" tokens in ") == 2
    # The run trained with the ### template, which "Same as training" follows: the reply opens in a bubble.
    assert tuned[1]["metadata"]["title"] == "Reasoning" and queued not in map(message_text, tuned)
