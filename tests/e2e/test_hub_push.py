"""push_folder against a stand-in Hub (tests/hub_standin.py): a real HTTP server on 127.0.0.1 that
speaks the requests huggingface_hub makes, so what arrived can be compared with what was sent."""

import hashlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time

import httpx
import pytest
from conftest import ROOT
from hub_standin import USER, HubStandin

from finetune.hub import NO_TOKEN, OFFLINE, PushError, push_folder, scrub

TOKEN = "hf_" + "Wr1teT0ken" * 3
READ_TOKEN = "hf_" + "ReadT0kenX" * 3
BAD_TOKEN = "hf_" + "BadT0kenZz" * 3
REPO = f"{USER}/r1-medical"
CLIENT_MODULES = ("finetune", "huggingface_hub", "hf_xet", "httpx", "httpcore")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hub():
    with HubStandin(tokens={TOKEN: "write", READ_TOKEN: "read"}) as server:
        yield server


@pytest.fixture
def exported(tmp_path):
    """Shaped like an export: a model card, a config, and a few-MB binary weights file."""
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "README.md").write_text("# SmolLM2, fine-tuned with LoRA\n\nNot medical advice.\n")
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}\n')
    (folder / "model.safetensors").write_bytes(random.Random(0).randbytes(3_000_000))
    return folder


def folder_files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_push_arrives_byte_identical_with_weights_by_lfs(hub, exported, monkeypatch):
    from huggingface_hub import constants

    # If any request fell back on the library's import-time endpoint, it would go here and fail.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    xet_flag = constants.HF_HUB_DISABLE_XET

    url = push_folder(exported, REPO, token=TOKEN, endpoint=hub.url)

    assert url == f"{hub.url}/{REPO}"
    assert hub.files(REPO) == folder_files(exported)
    assert hub.repos[REPO].private and hub.create_payloads == [
        {"name": "r1-medical", "organization": USER, "visibility": "private"}
    ]
    [commit] = hub.repos[REPO].commits
    assert sorted(commit["ops"]) == [("file", "README.md"), ("file", "config.json"), ("lfsFile", "model.safetensors")]
    weights = (exported / "model.safetensors").read_bytes()
    [put] = hub.lfs_puts()
    assert put.body == weights and put.path.startswith(f"/lfs/put/{hashlib.sha256(weights).hexdigest()}?")
    assert "authorization" not in put.headers  # a pre-signed URL: the token stays with the Hub
    api_calls = [r for r in hub.requests if r.method != "PUT"]
    assert {r.headers.get("authorization") for r in api_calls} == {f"Bearer {TOKEN}"}
    assert not any(TOKEN in r.path for r in hub.requests)
    assert constants.HF_HUB_DISABLE_XET == xet_flag  # the LFS switch is put back after the push
    client_side = [m for name, m in list(sys.modules.items()) if name.startswith(CLIENT_MODULES)]
    assert not [module.__name__ for module in client_side if _holds(module, TOKEN)]


def _holds(module, token) -> bool:
    """Does a module-level variable of `module` hold the token (as a string or in a dict)?"""
    for value in list(vars(module).values()):
        if isinstance(value, str) and token in value:
            return True
        if isinstance(value, dict) and any(isinstance(v, str) and token in v for v in list(value.values())):
            return True
    return False


def test_large_file_goes_multipart_when_the_hub_asks(exported, tmp_path):
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "README.md").write_text("# model card\n")
    (gguf / "model-Q4_K_M.gguf").write_bytes(random.Random(1).randbytes(2_500_000))
    with HubStandin(tokens={TOKEN: "write"}, multipart_chunk_size=1_000_000) as hub:
        push_folder(gguf, REPO, token=TOKEN, endpoint=hub.url)
        assert hub.files(REPO) == folder_files(gguf)
        assert [p.path.split("?")[0].rsplit("/", 1)[1] for p in hub.lfs_puts()] == ["1", "2", "3"]


def test_token_and_endpoint_from_env(hub, exported, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    assert push_folder(exported, REPO) == f"{hub.url}/{REPO}"
    assert hub.files(REPO) == folder_files(exported)


def test_no_token_says_where_to_give_one(hub, exported):
    with pytest.raises(PushError) as caught:
        push_folder(exported, REPO, endpoint=hub.url)
    assert str(caught.value) == NO_TOKEN
    assert "HF_TOKEN" in NO_TOKEN and "write access" in NO_TOKEN
    assert hub.requests == []


def test_wrong_token_is_refused_and_never_shown(hub, exported, monkeypatch, caplog, capfd):
    from huggingface_hub import constants

    # The stand-in echoes a rejected credential in its error body, so scrubbing has work to do.
    echoed = httpx.post(f"{hub.url}/api/repos/create", headers={"authorization": f"Bearer {BAD_TOKEN}"}, json={})
    assert echoed.status_code == 401 and BAD_TOKEN in echoed.text
    monkeypatch.setattr(constants, "HF_DEBUG", True)  # the library then logs each request as curl
    hf_logger = logging.getLogger("huggingface_hub")  # does not propagate to the root logger
    hf_logger.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    try:
        with pytest.raises(PushError) as caught:
            push_folder(exported, REPO, token=BAD_TOKEN, endpoint=hub.url)
    finally:
        hf_logger.removeHandler(caplog.handler)

    error = caught.value
    assert "refused the token" in str(error) and REPO in str(error)
    assert error.__context__ is None and error.__cause__ is None  # nothing holding the request
    assert caplog.records  # the logs were captured, and do not contain it
    out, err = capfd.readouterr()
    for text in (str(error), repr(error), caplog.text, out, err):
        assert BAD_TOKEN not in text


def test_read_only_token_has_no_write_access(hub, exported):
    push_folder(exported, REPO, token=TOKEN, endpoint=hub.url)
    with pytest.raises(PushError, match=f"no write access to {REPO}") as caught:
        push_folder(exported, REPO, token=READ_TOKEN, endpoint=hub.url)
    assert READ_TOKEN not in str(caught.value)
    with pytest.raises(PushError, match=f"no write access to {USER}/new-repo"):
        push_folder(exported, f"{USER}/new-repo", token=READ_TOKEN, endpoint=hub.url)


def test_offline_mode_says_so_at_once(hub, exported, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(PushError) as caught:
        push_folder(exported, REPO, token=TOKEN, endpoint=hub.url)
    assert str(caught.value) == OFFLINE
    assert time.monotonic() - started < 1 and hub.requests == []


def test_offline_mode_read_by_the_library_at_import_counts_too(hub, exported, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the process started with HF_HUB_OFFLINE=1
    with pytest.raises(PushError) as caught:
        push_folder(exported, REPO, token=TOKEN, endpoint=hub.url)
    assert str(caught.value) == OFFLINE and hub.requests == []


def test_unreachable_endpoint_says_so_within_seconds(exported):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(PushError, match=rf"Cannot reach http://127.0.0.1:{port}: this machine looks offline"):
        push_folder(exported, REPO, token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 5


def test_second_push_to_the_same_repo(hub, exported):
    push_folder(exported, REPO, token=TOKEN, endpoint=hub.url)
    (exported / "README.md").write_text("# SmolLM2, fine-tuned again\n")
    assert push_folder(exported, REPO, token=TOKEN, endpoint=hub.url) == f"{hub.url}/{REPO}"

    assert hub.files(REPO) == folder_files(exported)
    first, second = hub.repos[REPO].commits
    assert second["ops"] == [("file", "README.md")]  # unchanged files are left out of the commit
    assert len(hub.lfs_puts()) == 1  # the weights were already there: not sent twice
    # Pushing again with nothing changed is not an error either.
    assert push_folder(exported, REPO, token=TOKEN, endpoint=hub.url) == f"{hub.url}/{REPO}"
    assert len(hub.repos[REPO].commits) == 2


@pytest.mark.parametrize("repo_id", ["r1-medical", "a/b/c", f"{USER}/bad--name", f"{USER}/-x", f"{USER}/", ""])
def test_bad_repo_id_is_named(hub, exported, repo_id):
    with pytest.raises(PushError, match="is not a valid repo id: use 'your-name/model-name'"):
        push_folder(exported, repo_id, token=TOKEN, endpoint=hub.url)
    assert hub.requests == []


def test_missing_or_empty_folder(hub, tmp_path):
    with pytest.raises(PushError, match="is not a folder: export the model first"):
        push_folder(tmp_path / "nowhere", REPO, token=TOKEN, endpoint=hub.url)
    with pytest.raises(PushError, match="is empty: nothing to push"):
        push_folder(tmp_path, REPO, token=TOKEN, endpoint=hub.url)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bad Authorization header: 'Bearer s3cret'", "bad Authorization header: 'Bearer ***'"),
        ("Authorization: Bearer s3cret", "Authorization: ***"),
        ("{'authorization': 'Bearer s3cret', 'user-agent': 'x'}", "{'authorization': '***', 'user-agent': 'x'}"),
        ("token Bearer s3cret refused", "token Bearer *** refused"),
        ("leaked hf_abcdefghijklmnop here", "leaked hf_*** here"),
        ("the token s3cret was wrong", "the token *** was wrong"),
        ("401 Unauthorized for url: http://hub/api/repos/create", "401 Unauthorized for url: http://hub/api/repos/create"),
    ],
)
def test_scrub(text, expected):
    assert scrub(text, "s3cret") == expected


@pytest.mark.slow
def test_the_command_line_pushes_with_the_token_from_the_environment(hub, exported):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-m", "finetune", "push", str(exported), "--repo", "standin-user/cli"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["url"] == f"{hub.url}/standin-user/cli"
    assert hub.files("standin-user/cli") == {p.name: p.read_bytes() for p in exported.iterdir()}
    assert TOKEN not in result.stdout + result.stderr
    env["HF_TOKEN"] = "hf_wrongToken1234567"
    refused = subprocess.run([sys.executable, "-m", "finetune", "push", str(exported), "--repo", "standin-user/cli"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "refused the token" in refused.stderr and "hf_wrong" not in refused.stderr
