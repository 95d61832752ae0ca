"""The Export tab over the app's API: export what was trained, download it, push it to a (stand-in) Hub."""

import zipfile
from pathlib import Path

import pytest
from conftest import choose_sample_dataset
from gradio_client import Client
from hub_standin import HubStandin

from finetune.config import EXPORT_FORMAT_LABELS
from finetune.export.save import FORMATS
from ui.workspace import WorkspaceError

TOKEN = "hf_visitorWriteToken123456"
TRAIN = ("chat", "", 128, 2, 2e-3, 2, 1, 4, 8, 0.0, 0, "constant", "adamw_torch", "random", False, 1)


@pytest.fixture(scope="module")
def trained(app_server):
    """The app with a 2-step run done: the adapter on the loaded model is what gets exported."""
    url, workspace = app_server
    client = Client(url, verbose=False)
    nothing = client.predict(None, "adapter", "", api_name="/export")[0]
    assert nothing.startswith("⚠ No model loaded")
    client.predict("embedded", False, 128, "auto", api_name="/load_model")
    assert client.predict(None, "adapter", "", api_name="/export")[0].startswith("⚠ Nothing trained to export yet")
    choose_sample_dataset(client)
    assert client.predict(*TRAIN, "to-export", 0, False, api_name="/start_training")[0].startswith("Starting…")
    assert workspace.job.wait(300) and workspace.job.status == "done", workspace.job.error
    return client, workspace


def test_every_engine_format_is_offered():
    assert list(EXPORT_FORMAT_LABELS) == list(FORMATS) or set(EXPORT_FORMAT_LABELS) == set(FORMATS)


@pytest.mark.slow
def test_the_adapter_exports_and_downloads_as_a_zip(trained):
    client, workspace = trained
    status, download, choice = client.predict(None, "adapter", "", api_name="/export")
    assert status.startswith("✓ Exported to") and "adapter_config.json" in status and "README.md" in status
    folder = workspace.exports_dir / "to-export-adapter"
    assert folder.is_dir() and choice["value"] == "to-export-adapter"  # offered to push at once
    with zipfile.ZipFile(download) as archive:
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(archive.namelist())
    again, _, choice = client.predict(None, "adapter", "", api_name="/export")  # the automatic name moves on
    assert again.startswith("✓ Exported to `exports/to-export-adapter-2`") and choice["value"] == "to-export-adapter-2"
    typed = client.predict(None, "adapter", "to-export-adapter", api_name="/export")[0]  # a typed name does not
    assert typed.startswith("⚠ exports/to-export-adapter already exists") and "such as to-export-adapter-3" in typed


@pytest.mark.slow
def test_a_gguf_export_downloads_the_file_itself(trained):
    client, workspace = trained
    status, download, _ = client.predict(None, "gguf_q8_0", "clinic q8", api_name="/export")
    assert status.startswith("✓") and "model-q8_0.gguf" in status
    on_disk = workspace.exports_dir / "clinic-q8" / "model-q8_0.gguf"
    assert Path(download).name == "model-q8_0.gguf" and Path(download).read_bytes() == on_disk.read_bytes()
    assert Path(download).read_bytes()[:4] == b"GGUF"


def test_push_sends_the_export_and_forgets_the_token(trained, monkeypatch):
    client, workspace = trained
    client.predict(None, "adapter", "to-push", api_name="/export")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubStandin(tokens={TOKEN: "write"}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        status, token_field = client.predict("to-push", "standin-user/r1-medical", TOKEN, True, api_name="/push")
        assert status == f"✓ Pushed to-push to {hub.url}/standin-user/r1-medical" and token_field == ""
        sent = hub.files("standin-user/r1-medical")
        folder = workspace.exports_dir / "to-push"
        assert sent == {path.name: path.read_bytes() for path in folder.iterdir()}
        assert "Not medical advice" in sent["README.md"].decode()

        refused, token_field = client.predict("to-push", "standin-user/r1-medical", "hf_wrongToken999999", True,
                                              api_name="/push")
        assert refused.startswith("⚠ The Hub refused the token") and "hf_wrong" not in refused
        assert token_field == ""
        missing = client.predict("to-push", "standin-user/r1-medical", "", True, api_name="/push")[0]
        assert missing.startswith("⚠ No Hugging Face token")


def test_an_earlier_run_is_exported_after_the_model_was_loaded_again(trained):
    client, workspace = trained
    client.predict("embedded", False, 128, "auto", api_name="/load_model")  # a fresh model: no adapter on it
    assert client.predict(None, "adapter", "none", api_name="/export")[0].startswith("⚠ Nothing trained")
    runs, _ = client.predict(api_name="/exportable")
    assert runs["value"] == "to-export"
    status = client.predict("to-export", "adapter", "again", api_name="/export")[0]
    assert status.startswith("✓ Exported to") and (workspace.exports_dir / "again" / "adapter_config.json").is_file()
    assert workspace.loaded.has_adapter  # the run's adapter is on the model now: chat's fine-tuned pane too
    with pytest.raises(WorkspaceError, match="no-such-run has no saved adapter"):
        workspace.export("adapter", "x", "no-such-run")


def test_push_offline_says_so(trained, monkeypatch):
    client, workspace = trained
    client.predict(None, "adapter", "offline", api_name="/export")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    status = client.predict("offline", "standin-user/r1-medical", TOKEN, True, api_name="/push")[0]
    assert status.startswith("⚠ Cannot push: offline mode is on")
    unpicked = client.predict(None, "standin-user/r1-medical", TOKEN, True, api_name="/push")[0]
    assert unpicked.startswith("⚠ Pick an export to push:") and f"the latest {workspace.exports()[0]}." in unpicked
