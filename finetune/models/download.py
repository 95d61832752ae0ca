"""Download a Hub model's loadable files into the Hugging Face cache, saying how far it has got.

    folder = download_model("unsloth/DeepSeek-R1-Distill-Qwen-1.5B-bnb-4bit", token,
                            progress=lambda fraction, text: print(text))   # "Downloading …: 40% of 1.2 GB"

Only what loading needs comes down: the config, generation config, tokenizer files and the weights
(safetensors, else PyTorch .bin), not the model card, images, GGUF files or `original/` checkpoints.
The files land in the normal cache (HF_HOME / HF_HUB_CACHE), so the next load, transformers and
Unsloth all find them there. A failure is a DownloadError holding one sentence.
"""

from __future__ import annotations

import errno
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

Progress = Callable[[float, str], None]
"""progress(fraction done 0..1, a line to show); always called from the thread that called download_model."""

TOKENIZER_FILES = frozenset({
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
})
CONFIG_FILES = frozenset({"config.json", "generation_config.json"})
_BIN_WEIGHTS = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin|pytorch_model\.bin\.index\.json")


class DownloadError(RuntimeError):
    """A model that could not be downloaded; the message names it and says why, in one sentence."""


def files_to_load(names: Iterable[str]) -> list[str]:
    """Of a repo's files, those loading reads: top-level config and tokenizer files, and the weights in
    one format (safetensors when there are any, as transformers prefers them; else .bin)."""
    top = [name for name in names if "/" not in name]
    weights = [name for name in top if name.endswith(".safetensors") or name == "model.safetensors.index.json"]
    if not any(name.endswith(".safetensors") for name in weights):
        weights = [name for name in top if _BIN_WEIGHTS.fullmatch(name)]
    return sorted({name for name in top if name in CONFIG_FILES | TOKENIZER_FILES} | set(weights))


def download_model(repo_id: str, token: str | None = None, progress: Progress | None = None, *,
                   revision: str = "main", endpoint: str | None = None) -> Path:
    """Download what loading `repo_id` needs into the HF cache and return its snapshot folder.

    Progress is reported by bytes, about four times a second. Files already in the cache are not
    downloaded again (one HEAD each checks them). Without the Hub, a model cached earlier is returned
    as it is. Endpoint: the argument, else HF_ENDPOINT as huggingface_hub read it at import."""
    from huggingface_hub import HfApi  # heavy (httpx); it reads HF_* at import

    report = progress or (lambda fraction, text: None)
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as err:
        cached = _cached_snapshot(repo_id, revision)
        if cached is not None and _is_offline_error(err):
            report(1.0, f"{repo_id}: the Hub cannot be reached; using the copy in the local cache")
            return cached
        raise DownloadError(hub_error_sentence(repo_id, err, revision)) from None
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    files = files_to_load(sizes)
    if "config.json" not in files:
        raise DownloadError(f"{repo_id}: the repo has no config.json at its top, so it is not a transformers model")
    if not any(name.endswith((".safetensors", ".bin")) for name in files):
        raise DownloadError(f"{repo_id}: the repo has no safetensors or PyTorch weights to load")
    total = sum(sizes[name] for name in files)
    counter = _ByteCounter()
    outcome: dict[str, object] = {}

    def fetch() -> None:
        from huggingface_hub import snapshot_download  # heavy (httpx): on first use

        try:
            outcome["folder"] = snapshot_download(repo_id, revision=revision, allow_patterns=files, token=token,
                                                  endpoint=endpoint, tqdm_class=counter.bar_class())
        except BaseException as err:  # handed to the calling thread, which turns it into a sentence
            outcome["error"] = err

    # The download runs in a worker so that `progress` is called from this thread: Gradio's progress
    # reads the event from a context variable, which the library's download threads do not have.
    worker = threading.Thread(target=fetch, name=f"download-{repo_id}", daemon=True)
    worker.start()
    report(0.0, f"Downloading {repo_id}: {len(files)} files, {_size(total)}")
    shown = ""
    while worker.is_alive():
        worker.join(0.25)
        done = min(counter.bytes, total)
        line = f"Downloading {repo_id}: {done / max(total, 1):.0%} of {_size(total)}"
        if worker.is_alive() and line != shown:
            report(done / max(total, 1), line)
            shown = line
    if "error" in outcome:
        raise DownloadError(hub_error_sentence(repo_id, outcome["error"], revision, total)) from None
    report(1.0, f"Downloaded {repo_id} ({_size(total)})")
    return Path(str(outcome["folder"]))


def hub_error_sentence(repo_id: str, err: BaseException, revision: str = "main", size: int = 0) -> str:
    """One sentence for a failed Hub call about `repo_id`; never the server's text (it may hold a token)."""
    import httpx  # heavy (httpx): on first use
    from huggingface_hub import constants  # heavy (httpx); it reads HF_* at import
    from huggingface_hub.errors import (  # heavy (httpx): on first use
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, GatedRepoError):  # before RepositoryNotFoundError, its parent class
        return (f"{repo_id}: the repo is gated: accept its terms on its Hugging Face page, then set HF_TOKEN "
                "to a token of that account")
    if isinstance(err, RevisionNotFoundError):
        return f"{repo_id}: the repo has no revision {revision!r}"
    if isinstance(err, RepositoryNotFoundError):
        return f"{repo_id}: no such model on the Hugging Face Hub (or it is private: set HF_TOKEN)"
    if isinstance(err, HfHubHTTPError) and err.response is not None and err.response.status_code == 401:
        return f"{repo_id}: the Hub refused the token in HF_TOKEN: check it, or unset it for a public model"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return (f"{repo_id}: not enough disk space in {constants.HF_HUB_CACHE} for its {_size(size)}: free some, "
                "or point HF_HOME at a larger disk")
    if _is_offline_error(err):
        return (f"{repo_id}: cannot be downloaded: the Hugging Face Hub cannot be reached from this machine "
                "(offline?) and the model is not in the local cache")
    if isinstance(err, httpx.TransportError):
        return (f"{repo_id}: the connection to the Hub broke off during the download; load it again to carry on "
                "(what arrived is kept)")
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        return f"{repo_id}: the Hub answered {err.response.status_code}; try again later"
    return f"{repo_id}: the download failed ({type(err).__name__})"


def _is_offline_error(err: BaseException) -> bool:
    import httpx  # heavy (httpx): on first use
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled  # heavy (httpx): on first use

    return isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout, LocalEntryNotFoundError,
                            OfflineModeIsEnabled))


def _cached_snapshot(repo_id: str, revision: str) -> Path | None:
    """The cached snapshot of `revision`, if its config and some weights are in it."""
    from huggingface_hub import try_to_load_from_cache  # heavy (httpx); it reads HF_* at import

    config = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    if not any(name.endswith((".safetensors", ".bin")) for name in files_to_load(p.name for p in folder.iterdir())):
        return None
    return folder


class _ByteCounter:
    """Bytes written so far, from the progress bars huggingface_hub opens for a snapshot.

    snapshot_download opens several bars with `tqdm_class` (bytes received, bytes written, files done),
    and which exist differs between plain HTTP and Xet and between versions; the bars counted in bytes
    all move towards the total, so the largest of them is how far the download is."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[int, float] = {}

    @property
    def bytes(self) -> int:
        with self._lock:
            return int(max(self._counts.values(), default=0))

    def bar_class(self) -> type:
        from tqdm import tqdm  # only while a download runs

        counter = self

        class CountingBar(tqdm):
            """A silent bar that tells the counter how far it is."""

            def __init__(self, *args, **kwargs) -> None:
                kwargs.pop("name", None)  # huggingface_hub's own bars take a name; tqdm does not
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)
                self.counted = kwargs.get("unit") == "B"
                self.n = kwargs.get("initial", 0) or 0
                self._note()

            def update(self, n: float | None = 1) -> bool | None:
                self.n += n or 0
                self._note()
                return None

            def _note(self) -> None:
                if self.counted:
                    with counter._lock:
                        counter._counts[id(self)] = self.n

        return CountingBar


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"
