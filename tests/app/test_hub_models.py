"""The app's Hub path, against the stand-in Hub (tests/hub_standin.py) serving replicas of the model
presets (tests/hub_replicas.py): the real file names, config fields and tokenizer, tiny random weights.

The app runs as an operator starts it (`python app.py`, HF_ENDPOINT pointing at the stand-in, its own
HF_HOME), driven through gradio_client; the library-level checks run in this process."""

import json
import time
from pathlib import Path

import pytest
from conftest import choose_sample_dataset, start_app
from conftest import message_text as text
from gradio_client import Client
from hub_replicas import TOKENIZER_MISSING, build_replica, have_tokenizer
from hub_standin import HubStandin, use_in_this_process

pytestmark = pytest.mark.skipif(not have_tokenizer(), reason=TOKENIZER_MISSING)

QWEN_4BIT = "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit"
QWEN = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
LLAMA_4BIT = "unsloth/DeepSeek-R1-Distill-Llama-8B-bnb-4bit"
GATED = "standin-org/R1-Distill-Qwen-gated"
APP_TOKEN = "hf_" + "AppRead0ken" * 3  # the app's HF_TOKEN secret: valid, not yet granted the gated repo
LOADABLE = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
ROUND_TRIP = "A 45-year-old man\nhas <think>x</think> 发热"
# /start_training inputs (test_app_api.TRAIN_SETTINGS): 128-token rows (at 64 every prompt fills the row), 2 steps,
# micro-batch 1, r 4
TRAIN = ("chat", "", 128, 2, 2e-3, 1, 1, 4, 8, 0.0, 0, "constant", "adamw_torch", "random", False, 1)


@pytest.fixture(scope="session")
def replicas(tmp_path_factory):
    """Tiny replicas (hidden 64, 2 layers, the real 151936-row vocabulary) of three presets."""
    root = tmp_path_factory.mktemp("replicas")
    return {repo: build_replica(repo, root / repo.replace("/", "--")) for repo in (QWEN_4BIT, QWEN, LLAMA_4BIT)}


def serve(hub: HubStandin, replicas: dict[str, Path]) -> HubStandin:
    for repo, folder in replicas.items():
        hub.add_model(repo, folder)
    hub.add_model(GATED, replicas[QWEN], gated="manual")
    return hub


@pytest.fixture
def hub(replicas):
    with HubStandin(tokens={APP_TOKEN: "read"}) as server:
        yield serve(server, replicas)


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch):
    """This process talks to the stand-in, with an empty cache of its own."""
    use_in_this_process(hub, monkeypatch, tmp_path / "hf-cache")
    return hub


def cdn_gets(hub: HubStandin, repo: str, filename: str) -> list:
    """The GETs of one LFS file's bytes."""
    import hashlib

    oid = hashlib.sha256(hub.files(repo)[filename]).hexdigest()
    return [r for r in hub.downloads("cdn") if r.path.startswith(f"/cdn/{oid}")]


# -- huggingface_hub against the stand-in ----------------------------------------------------------


def test_hf_hub_download_follows_the_lfs_redirect_and_caches_by_etag(hub, tmp_path):
    import hashlib

    import httpx
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError

    sha = hub.repos[QWEN_4BIT].head
    weights = hub.files(QWEN_4BIT)["model.safetensors"]
    head = httpx.head(hf_hub_url(QWEN_4BIT, "model.safetensors", endpoint=hub.url))
    assert head.status_code == 302 and head.headers["X-Repo-Commit"] == sha
    assert head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
    assert head.headers["X-Linked-Size"] == str(len(weights))
    assert head.headers["Location"].startswith("http://localhost:")  # another host: a CDN to the client
    meta = get_hf_file_metadata(hf_hub_url(QWEN_4BIT, "config.json", endpoint=hub.url))
    config = hub.files(QWEN_4BIT)["config.json"]
    assert meta.commit_hash == sha and meta.size == len(config)
    assert meta.etag == hashlib.sha1(b"blob %d\0" % len(config) + config).hexdigest()  # git blob sha, as the Hub

    cache = tmp_path / "cache"
    path = hf_hub_download(QWEN_4BIT, "model.safetensors", revision=sha, cache_dir=cache, endpoint=hub.url,
                           token=APP_TOKEN)
    assert Path(path).read_bytes() == weights and f"snapshots/{sha}/" in path
    [get] = cdn_gets(hub, QWEN_4BIT, "model.safetensors")
    assert "authorization" not in get.headers  # the token stays with the Hub, off the CDN

    folder = snapshot_download(QWEN_4BIT, cache_dir=cache, endpoint=hub.url)  # main: resolves to the same sha
    assert Path(folder).name == sha and (Path(folder) / "model.safetensors").read_bytes() == weights
    assert len(cdn_gets(hub, QWEN_4BIT, "model.safetensors")) == 1  # a cache hit: the weights came once
    assert (cache / f"models--{QWEN_4BIT.replace('/', '--')}" / "refs" / "main").read_text() == sha
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(QWEN_4BIT, "pytorch_model.bin", cache_dir=cache, endpoint=hub.url)


def test_an_old_commit_stays_downloadable_by_its_sha(hub, tmp_path):
    from huggingface_hub import hf_hub_download

    first = hub.repos[QWEN].head
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / "generation_config.json").write_text('{"do_sample": false}\n')
    second = hub.add_model(QWEN, edited, summary="greedy by default")
    assert second != first and hub.repos[QWEN].head == second
    old = hf_hub_download(QWEN, "generation_config.json", revision=first, cache_dir=tmp_path / "c", endpoint=hub.url)
    new = hf_hub_download(QWEN, "generation_config.json", cache_dir=tmp_path / "c", endpoint=hub.url)
    assert '"temperature": 0.6' in Path(old).read_text() and Path(new).read_text() == '{"do_sample": false}\n'


# -- download_model and load_model's sentences -----------------------------------------------------


def test_download_model_reports_bytes_and_fetches_only_what_loading_reads(hub_env):
    from huggingface_hub import constants

    from finetune.models.download import download_model

    heard = []
    folder = download_model(QWEN, progress=lambda fraction, line: heard.append((fraction, line)))
    assert {p.name for p in folder.iterdir()} == LOADABLE  # no README, LICENSE, figures/, .gitattributes
    assert folder.is_relative_to(Path(constants.HF_HUB_CACHE))
    assert heard[0][1].startswith(f"Downloading {QWEN}: 5 files, ") and heard[-1] == (1.0, heard[-1][1])
    fractions = [fraction for fraction, _ in heard]
    assert fractions == sorted(fractions)
    assert not [r for r in hub_env.requests if "README" in r.path or "figures" in r.path]

    heard.clear()
    assert download_model(QWEN, progress=lambda fraction, line: heard.append(line)) == folder
    assert len(cdn_gets(hub_env, QWEN, "model.safetensors")) == 1  # second time from the cache


def test_gated_repo_says_so_and_downloads_with_a_granted_token(hub_env):
    from finetune.models.download import DownloadError, download_model
    from finetune.models.load import ModelLoadError, check_hub_access

    for token in (None, APP_TOKEN):  # 401 without a token, 403 with one not granted access
        with pytest.raises(ModelLoadError) as caught:
            check_hub_access(GATED, token)
        message = str(caught.value)
        assert message.startswith(f"{GATED}: the repo is gated") and "HF_TOKEN" in message and "\n" not in message
        with pytest.raises(DownloadError, match="the repo is gated"):
            download_model(GATED, token)
    hub_env.authorize(GATED, APP_TOKEN)
    check_hub_access(GATED, APP_TOKEN)
    assert {p.name for p in download_model(GATED, APP_TOKEN).iterdir()} == LOADABLE


def test_missing_repo_and_unreachable_hub_are_one_sentence(hub_env, monkeypatch):
    from huggingface_hub import constants

    from finetune.config import ModelSettings
    from finetune.models.load import ModelLoadError, load_model

    with pytest.raises(ModelLoadError) as caught:
        load_model(ModelSettings("standin-org/no-such-model"))
    assert str(caught.value) == ("standin-org/no-such-model: no such model on the Hugging Face Hub "
                                 "(or it is private: set HF_TOKEN)")
    dead = "http://127.0.0.1:9"  # nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match=f"^{QWEN}: cannot be downloaded: the Hugging Face Hub cannot be "
                                             "reached from this machine"):
        load_model(ModelSettings(QWEN))
    assert time.monotonic() - started < 10


def test_the_llama_replica_loads_a_tokenizer_that_keeps_spaces(hub_env):
    from finetune.config import ModelSettings
    from finetune.models.load import load_model

    loaded = load_model(ModelSettings(LLAMA_4BIT))
    tokenizer = loaded.tokenizer
    ids = tokenizer(ROUND_TRIP, add_special_tokens=False).input_ids
    # Without the repair (finetune/models/tokenizer_check.py) transformers loads this repo through LlamaTokenizer:
    # 'A45-year-oldmanhas<think>x</think>'
    assert tokenizer.decode(ids) == ROUND_TRIP
    assert loaded.info.tokenizer_note.startswith("repaired")


# -- the app, started as an operator starts it -----------------------------------------------------


@pytest.fixture(scope="module")
def app_hub(replicas):
    """A stand-in that sends the weights at about 15 MB/s, so a download lasts long enough to be watched."""
    server = HubStandin(tokens={APP_TOKEN: "read"}, download_rate=15_000_000)
    with server:
        yield serve(server, replicas)


@pytest.fixture(scope="module")
def app(app_hub, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hub-app")
    process, url = start_app(folder, HF_ENDPOINT=app_hub.url, HF_HOME=str(folder / "hf-home"), HF_TOKEN=APP_TOKEN,
                             HF_HUB_OFFLINE="0")
    yield url, folder
    process.terminate()
    process.wait(60)


def load_watching_progress(client: Client, name: str) -> tuple[str, list[str]]:
    """Press Load, as a visitor, and note each progress line the page shows, in order."""
    job = client.submit(name, False, 64, "auto", api_name="/load_model")
    lines = []
    while not job.done():
        for unit in job.status().progress_data or []:
            if unit.desc and unit.desc != (lines[-1] if lines else None):
                lines.append(unit.desc)
        time.sleep(0.05)
    return job.result(), lines


@pytest.mark.slow
def test_a_4bit_preset_downloads_loads_trains_chats_and_exports(app, app_hub):
    url, folder = app
    client = Client(url, verbose=False)
    status, lines = load_watching_progress(client, QWEN_4BIT)

    assert status.startswith("✓") and "| Quantization | 4-bit NF4 (bitsandbytes) |" in status, status
    downloading = [line for line in lines if line.startswith(f"Downloading {QWEN_4BIT}: ") and "%" in line]
    assert downloading and any(not line.startswith((f"Downloading {QWEN_4BIT}: 0%", f"Downloading {QWEN_4BIT}: 100%"))
                               for line in downloading), lines
    assert lines[-1] == f"Loading {QWEN_4BIT}…" and lines.index(downloading[-1]) < len(lines) - 1, lines
    snapshots = folder / "hf-home" / "hub" / f"models--{QWEN_4BIT.replace('/', '--')}" / "snapshots"
    [snapshot] = snapshots.iterdir()
    assert snapshot.name == app_hub.repos[QWEN_4BIT].head
    assert {p.name for p in snapshot.iterdir()} == LOADABLE | {"special_tokens_map.json"}
    assert len(cdn_gets(app_hub, QWEN_4BIT, "model.safetensors")) == 1

    choose_sample_dataset(client)
    started, _ = client.predict(*TRAIN, "hub-run", 0, False, api_name="/start_training")
    assert started.startswith("Starting…")
    deadline = time.time() + 240
    while time.time() < deadline:
        _, line, *_ = client.predict(api_name="/dashboard")
        if not line.startswith(("Starting", "Training")):
            break
        time.sleep(1)
    assert line.startswith("Done") and "loss" in line, line

    chat = client.submit("A 24-year-old has fever and neck stiffness. Next step?", [], [], "Fine-tuned only", 16,
                         0.0, 0.95, 1.0, 0, "auto", "", api_name="/chat")
    _, tuned, _, chat_status = chat.result(timeout=120)
    assert len(chat.outputs()) >= 2 and tuned[-1]["role"] == "assistant" and text(tuned[-1]), chat_status

    exported, _, _ = client.predict(None, "adapter", "", api_name="/export")
    assert exported.startswith("✓ Exported to") and "adapter_model.safetensors" in exported, exported
    merged, _, _ = client.predict(None, "merged_16bit", "", api_name="/export")  # the 4-bit base dequantized
    assert merged.startswith("✓ Exported to") and "model.safetensors" in merged, merged
    merged_config = json.loads((folder / "runs" / "exports" / "hub-run-merged-16bit" / "config.json").read_text())
    assert "quantization_config" not in merged_config and merged_config["vocab_size"] == 151936


def test_the_llama_preset_loads_with_its_tokenizer_repaired_and_the_card_says_so(app):
    url, _ = app
    status = Client(url, verbose=False).predict(LLAMA_4BIT, False, 64, "auto", api_name="/load_model")
    assert status.startswith("✓") and "| Tokenizer | repaired: it loaded as LlamaTokenizer" in status, status


def test_gated_missing_and_offline_are_sentences_and_the_app_keeps_answering(app, app_hub):
    url, _ = app
    client = Client(url, verbose=False)
    missing = client.predict("standin-org/no-such-model", False, 64, "auto", api_name="/load_model")
    # (followed by the card of the model still loaded, where an earlier test loaded one)
    assert missing.splitlines()[0] == ("⚠ standin-org/no-such-model: no such model on the Hugging Face Hub "
                                       "(or it is private: set HF_TOKEN)")
    gated = client.predict(GATED, False, 64, "auto", api_name="/load_model")  # the app's token: not granted
    assert gated.startswith(f"⚠ {GATED}: the repo is gated") and "HF_TOKEN" in gated
    app_hub.authorize(GATED, APP_TOKEN)  # the operator accepts the terms on the repo's page
    assert client.predict(GATED, False, 64, "auto", api_name="/load_model").startswith("✓")

    app_hub.stop()  # the network goes away
    offline = client.predict(QWEN, False, 64, "auto", api_name="/load_model")  # never downloaded here
    assert offline.startswith(f"⚠ {QWEN}: cannot be downloaded: the Hugging Face Hub cannot be reached"), offline
    cached = client.predict(GATED, False, 64, "auto", api_name="/load_model")  # downloaded above
    assert cached.startswith("✓") and f"| Model | {GATED} |" in cached, cached
