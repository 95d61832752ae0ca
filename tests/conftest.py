import dataclasses
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finetune.models.backend import import_unsloth_first  # noqa: E402

import_unsloth_first()  # before anything imports transformers (a no-op without CUDA)

import pytest  # noqa: E402
import torch  # noqa: E402

from finetune.config import DataSettings, LoraSettings, ModelSettings, TrainSettings  # noqa: E402
from finetune.train.recipe import Recipe  # noqa: E402

R1_TEMPLATE = (ROOT / "configs" / "r1_chat_template.jinja").read_text()
SHARED_DATA = ROOT.parent / "shared" / "data"
"""The project's reference data (real R1 tokenizer, GGUF header, medical-o1 rows), beside a checkout."""
SHARED_SAMPLE = SHARED_DATA / "medical_o1_sample.jsonl"
R1_TOKENIZER = SHARED_DATA / "r1-distill-qwen-tokenizer"
REAL_GGUF = SHARED_DATA / "r1-distill-qwen-7b-q4_k_m.header.gguf"


def needs_shared(*paths: Path) -> pytest.MarkDecorator:
    """Skip, saying so, where ../shared/data (not part of a lone clone) lacks one of `paths`."""
    missing = [str(path.relative_to(ROOT.parent)) for path in paths if not path.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} beside the checkout (the "
                              "reference data in ../shared), which is absent here")


@pytest.fixture
def loaded():
    """A freshly loaded embedded model (about a second from the converted cache)."""
    from finetune.models.load import load_model

    return load_model(ModelSettings())


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from finetune.models.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir())


QUICK_LENGTH = 160
"""Tokens per row of the quick runs: short rows, quick steps."""


def quick_train(max_steps: int = 10, **overrides) -> TrainSettings:
    """A CPU run small enough for tests: no warm-up, a high learning rate (and rows of QUICK_LENGTH)."""
    fields = dict(
        micro_batch_size=2,
        grad_accum_steps=1,
        warmup_steps=0,
        max_steps=max_steps,
        learning_rate=2e-3,
        optimizer="adamw_torch",
    )
    fields.update(overrides)
    return TrainSettings(**fields)


def quick_recipe(loaded, output, train: TrainSettings | None = None, lora: LoraSettings | None = None,
                 data: DataSettings | None = None, max_length: int = QUICK_LENGTH) -> Recipe:
    """What `start_training` takes for a quick run on `loaded` into `output`: quick_train and quick_lora unless
    given, at QUICK_LENGTH tokens a row (what the rows are tokenized at too)."""
    return Recipe(dataclasses.replace(loaded.settings, max_length=max_length), data or DataSettings(),
                  train or quick_train(), lora or quick_lora(), str(output))


def quick_lora() -> LoraSettings:
    return LoraSettings(r=8, alpha=16, gradient_checkpointing=False)


def trained_looking_adapter(loaded, std: float = 0.02) -> None:
    """A fresh adapter changes nothing (B is zero); random B makes the adapter count, as training does."""
    from finetune.models.adapters import attach_fresh_adapter

    attach_fresh_adapter(loaded, quick_lora())
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in loaded.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, std)
    loaded.model.eval()


def mean_loss(model, rows) -> float:
    """Loss on fixed rows, the same measurement before and after training."""
    model.eval()
    with torch.no_grad():
        losses = [model(input_ids=torch.tensor([r.input_ids]), labels=torch.tensor([r.labels])).loss for r in rows]
    return float(torch.stack(losses).mean())


def lora_b_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through Playwright, for one test module (the browser tests)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """The app on 127.0.0.1 with its own workspace (nothing loaded), for one test module."""
    yield from serve_app(tmp_path_factory)


def serve_app(tmp_path_factory):
    """Build and launch the app on a fresh workspace; yields (url, workspace), then closes it."""
    import app
    from ui.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("app") / "runs")
    demo = app.build_app(workspace, "cpu")
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, css=app.CSS)
    yield url, workspace
    if workspace.job is not None:
        workspace.job.stop()
        workspace.job.wait(timeout=300)
    demo.close()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(tmp_path: Path, *args: str, **env: str):
    """`python app.py` in its own process, as an operator starts it; returns (process, url) once it answers."""
    import os
    import subprocess
    import time
    import urllib.request

    port = free_port()
    environment = {**os.environ, "PORT": str(port), "FINETUNE_OUTPUT_DIR": str(tmp_path / "runs"), **env}
    log = tmp_path / f"app-{port}.log"  # a file, not a pipe: a full pipe would block the app
    process = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=environment,
                               stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            if process.poll() is not None:
                raise AssertionError(log.read_text()[-3000:]) from None
            time.sleep(0.5)
    process.kill()
    raise AssertionError("the app did not start within 2 minutes")


def choose_sample_dataset(client, max_length: int = 128) -> None:
    """What the Dataset tab does for a visitor: read the bundled sample, then map it (the preview)."""
    *pickers, _ = client.predict("sample", None, "train[0:500]", api_name="/read_dataset")
    columns = [picker["value"] if isinstance(picker, dict) else picker for picker in pickers]
    client.predict(*columns, "chat", "", max_length, 1, None, api_name="/preview_dataset")


def message_text(message: dict) -> str:
    """A chat message's text: Gradio 6 sends content as a list of typed parts."""
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)
