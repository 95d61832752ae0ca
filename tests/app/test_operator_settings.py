"""What the operator sets from the environment, and what a visitor cannot reach on the server's disk."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, choose_sample_dataset, start_app
from gradio_client import Client

from finetune.models.embedded import embedded_model_dir
from ui.operator_settings import SettingsError, settings_from_env


def test_settings_come_from_the_environment():
    settings = settings_from_env({"PORT": "8080", "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SHARE": "0",
                                  "FINETUNE_OUTPUT_DIR": "/data/runs", "FINETUNE_PRESETS": "embedded",
                                  "FINETUNE_MAX_UPLOAD_MB": "5", "FINETUNE_ALLOW_LOCAL_PATHS": "true"})
    assert (settings.port, settings.host, settings.share) == (8080, "0.0.0.0", False)
    assert settings.output_dir == Path("/data/runs") and settings.exports_dir == Path("/data/runs/exports")
    assert settings.presets == ("embedded",) and settings.max_upload_mb == 5 and settings.allow_local_paths
    default = settings_from_env({})
    assert not default.allow_local_paths and default.presets[0] == "embedded" and default.max_upload_mb == 50


def test_the_operator_names_the_real_rows_the_evaluate_tab_offers(tmp_path):
    rows = tmp_path / "huatuo.jsonl"
    rows.write_text('{"Question": "Q?", "Complex_CoT": "R", "Response": "A"}\n')
    assert settings_from_env({"FINETUNE_REAL_ROWS": str(rows)}).real_rows == rows
    shared = ROOT.parent / "shared" / "data" / "medical_o1_sample.jsonl"  # the default, where present
    assert settings_from_env({}).real_rows == (shared if shared.is_file() else None)


@pytest.mark.parametrize("env, message", [
    ({"PORT": "http"}, "PORT must be a whole number above 0, not 'http'"),
    ({"FINETUNE_MAX_UPLOAD_MB": "0"}, "FINETUNE_MAX_UPLOAD_MB must be a whole number"),
    ({"FINETUNE_ALLOW_LOCAL_PATHS": "maybe"}, "FINETUNE_ALLOW_LOCAL_PATHS must be 1 or 0"),
    ({"FINETUNE_PRESETS": "embedded,gpt-9"}, "unknown preset 'gpt-9'; the presets are embedded"),
    ({"FINETUNE_REAL_ROWS": "/nowhere/rows.jsonl"}, "FINETUNE_REAL_ROWS: no file at '/nowhere/rows.jsonl'"),
])
def test_a_bad_setting_is_named(env, message):
    with pytest.raises(SettingsError, match=message):
        settings_from_env(env)


@pytest.fixture(scope="module")
def locked_app(tmp_path_factory):
    """The app as a Space runs it: settings from the environment, local paths off (the default)."""
    tmp_path = tmp_path_factory.mktemp("locked")
    process, url = start_app(tmp_path, FINETUNE_PRESETS="embedded", FINETUNE_MAX_UPLOAD_MB="1")
    yield url, tmp_path
    process.terminate()
    process.wait(30)


@pytest.mark.slow
def test_the_app_listens_where_the_environment_says_with_its_presets(locked_app):
    url, _ = locked_app
    config = json.loads(urllib.request.urlopen(url + "config", timeout=10).read())
    dropdowns = [c["props"] for c in config["components"] if c.get("type") == "dropdown"]
    model_choices = next(props["choices"] for props in dropdowns if props.get("label") == "Model")
    assert [value for _, value in model_choices] == ["embedded"]  # only the preset the operator listed
    assert any("up to 1 MB" in str(c["props"].get("label")) for c in config["components"])


@pytest.mark.parametrize("name", ["/etc", "../../etc", "~/models", "runs/../../etc", "C:\\\\models", "a/b/c"])
def test_a_visitor_cannot_load_a_model_from_the_servers_disk(locked_app, name):
    url, _ = locked_app
    answer = Client(url, verbose=False).predict(name, False, 256, "auto", api_name="/load_model")
    assert answer.startswith("⚠") and "local folders are off in this app" in answer


def test_a_model_folder_that_exists_is_still_not_read(locked_app):
    url, _ = locked_app
    folder = embedded_model_dir()  # a real model folder on this machine, named by its path
    answer = Client(url, verbose=False).predict(str(folder), False, 256, "auto", api_name="/load_model")
    assert "local folders are off in this app" in answer


def test_files_outside_the_app_cannot_be_fetched(locked_app):
    url, _ = locked_app
    for path in ("/etc/passwd", str(ROOT / "app.py")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}gradio_api/file={path}", timeout=10)
        assert refused.value.code in (403, 404)


def call_raw(url: str, api_name: str, data: list) -> str:
    """Gradio's HTTP API without a client: a client would upload a local path itself, hiding what the server does."""
    request = urllib.request.Request(f"{url}gradio_api/call/{api_name}", json.dumps({"data": data}).encode(),
                                     {"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(request, timeout=10).read())["event_id"]
    return urllib.request.urlopen(f"{url}gradio_api/call/{api_name}/{event}", timeout=60).read().decode()


def test_a_dataset_cannot_name_a_server_file_through_the_api(locked_app, tmp_path):
    url, _ = locked_app
    secret = tmp_path / "secret.jsonl"  # readable to the app, were it to read paths it was handed
    secret.write_text(json.dumps({"Question": "q", "Complex_CoT": "c", "Response": "top secret"}) + "\n")
    for path in ("/etc/passwd", str(secret)):
        answer = call_raw(url, "read_dataset", ["upload", {"path": path, "meta": {"_type": "gradio.FileData"}},
                                                 "train[0:500]"])
        assert "event: error" in answer and "Question" not in answer and "root:" not in answer


def test_a_dataset_choice_is_never_a_path(locked_app):
    url, _ = locked_app
    answer = call_raw(url, "read_dataset", ["/etc/passwd", None, "train[0:500]"])
    assert "root:" not in answer and ("event: error" in answer or "is not one of the datasets offered" in answer)


def test_an_upload_over_the_operators_limit_is_refused(locked_app, tmp_path):
    url, _ = locked_app
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"Question": "q" * 2_000_000, "Response": "a"}) + "\n")  # 2 MB, limit 1 MB
    with pytest.raises(Exception, match="(?i)too large|exceeds|413|maximum"):
        Client(url, verbose=False).predict("upload", {"path": str(big), "meta": {"_type": "gradio.FileData"}},
                                           "train[0:500]", api_name="/read_dataset")


@pytest.mark.slow
def test_a_run_name_cannot_leave_the_output_folder(locked_app):
    url, tmp_path = locked_app
    client = Client(url, verbose=False)
    client.predict("embedded", False, 160, "auto", api_name="/load_model")
    choose_sample_dataset(client)
    settings = ("chat", "", 160, 1, 2e-3, 2, 1, 4, 8, 0.0, 0, "constant", "adamw_torch", "random", False, 1)
    status, _ = client.predict(*settings, "../../escaped", 0, False, api_name="/start_training")
    assert status.startswith("Starting…")
    deadline = time.time() + 120
    while not (tmp_path / "runs" / "escaped" / "run.json").is_file() and time.time() < deadline:
        time.sleep(0.5)
    assert (tmp_path / "runs" / "escaped" / "run.json").is_file()  # inside the output folder
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "escaped").exists()


@pytest.mark.slow
def test_the_operator_can_allow_local_folders(tmp_path):
    process, url = start_app(tmp_path, FINETUNE_ALLOW_LOCAL_PATHS="1")
    try:
        answer = Client(url, verbose=False).predict(str(embedded_model_dir()), False, 256, "auto",
                                                    api_name="/load_model")
        assert "✓" in answer and "| Parameters | 135 M |" in answer
    finally:
        process.terminate()
        process.wait(30)
