"""The Hugging Face Hub, both ways. Is it reachable? Asked before a download, so that an offline
machine gets one clear sentence at once instead of a minute of retries and a traceback. And push an
exported folder (adapter, merged model, or GGUF with its model card) to a model repo:

    url = push_folder("runs/demo/merged", "your-name/r1-medical", token=token)

The token is used for the call and dropped: never logged, stored, or repeated in an error message.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
NO_TOKEN = "No Hugging Face token: give a token with write access in the field or set HF_TOKEN."
OFFLINE = "Cannot push: offline mode is on (HF_HUB_OFFLINE is set); unset it to reach the Hub."

# Credentials an error text may carry: an echoed Authorization header, a bare bearer value, a
# Hugging Face token. Scrubbed from every message, whatever else the token is.
_AUTH_HEADER = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\n,}]+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",}]+")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")

# Choosing the upload protocol means flipping a process-wide flag of huggingface_hub (see
# `_lfs_transfers`); this lock keeps two pushes from flipping it under each other.
_TRANSFER_SWITCH = threading.Lock()


class PushError(RuntimeError):
    """A push that did not happen (or not completely); the message says why and never holds the token."""


def hub_offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def hub_reachable(timeout: float = 3.0, endpoint: str | None = None) -> bool:
    """Can a TCP connection be opened to the endpoint (default: HF_ENDPOINT, else huggingface.co)?"""
    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT))
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout).close()
        return True
    except OSError:
        return False


def push_folder(folder: str | Path, repo_id: str, token: str | None = None, private: bool = True,
                endpoint: str | None = None,
                commit_message: str = "Upload model exported with cot-finetune") -> str:
    """Create the model repo `repo_id` if needed and upload every file of `folder` to it in one
    commit; return the repo's URL. `private` applies when the repo is created (an existing repo keeps
    its visibility). Token: the argument, else HF_TOKEN. Endpoint: the argument, else HF_ENDPOINT,
    else huggingface.co. Raises PushError with one sentence."""
    folder = _check_folder(folder)
    _check_repo_id(repo_id)
    token = (token or os.environ.get("HF_TOKEN") or "").strip()
    if not token:
        raise PushError(NO_TOKEN)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    _check_online(endpoint)
    try:
        _create_and_upload(folder, repo_id, token, private, endpoint, commit_message)
    except Exception as err:  # every failure leaves as a PushError, its text scrubbed
        failure = _push_error(err, repo_id, endpoint, token)
    else:
        return f"{endpoint}/{repo_id}"
    # Raised outside the `except` block on purpose: a PushError raised inside it would keep the
    # library's exception as __context__, and that holds the request with its Authorization header.
    raise failure


def _check_folder(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder: export the model first, then push that folder.")
    if not any(path.is_file() for path in folder.rglob("*")):
        raise PushError(f"{folder} is empty: nothing to push.")
    return folder


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError  # heavy (httpx): on first use
    from huggingface_hub.utils import validate_repo_id  # heavy (httpx): on first use

    hint = "use 'your-name/model-name' (letters, digits, '-', '_' and '.', at most 96 characters)"
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise PushError(f"{repo_id!r} is not a valid repo id: {hint}.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PushError(f"{repo_id!r} is not a valid repo id: {hint}.") from None


def _check_online(endpoint: str) -> None:
    from huggingface_hub import constants  # heavy (httpx); it reads HF_* at import

    # Both: our env check sees HF_HUB_OFFLINE set after import; the library read its copy at import.
    if hub_offline_mode() or constants.is_offline_mode():
        raise PushError(OFFLINE)
    if not hub_reachable(endpoint=endpoint):
        raise PushError(_unreachable(endpoint))


def _unreachable(endpoint: str) -> str:
    return f"Cannot reach {endpoint}: this machine looks offline, so nothing was pushed."


def _create_and_upload(folder: Path, repo_id: str, token: str, private: bool, endpoint: str,
                       commit_message: str) -> None:
    from huggingface_hub import HfApi  # heavy (httpx): on first use
    from huggingface_hub.errors import HfUriError  # heavy (httpx): on first use

    # The endpoint goes to HfApi, which hands it to every request of this path (repo creation,
    # preupload, LFS batch and verify, commit); LFS upload URLs are the ones the server sent.
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
    except HfUriError:
        # huggingface_hub 1.33 builds the URL of an existing repo that the token may not create
        # without the custom endpoint (create_repo's 401/403 branch), and fails to parse it. The
        # repo exists and the token can see it: carry on, the upload says whether it may write.
        pass
    with _lfs_transfers():
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)


@contextlib.contextmanager
def _lfs_transfers() -> Iterator[None]:
    """Send large files by the Hub's LFS protocol rather than Xet, for the duration of the push.

    With hf_xet installed, huggingface_hub 1.33 sends every non-regular file through Xet, decided
    client-side (no answer from the server makes it fall back), and reads HF_HUB_DISABLE_XET from
    the environment only at import, so setting the variable now would do nothing: the module flag
    is what it checks. LFS is what the Hub documents for clients without Xet (it migrates the files
    to Xet itself), and the path our tests exercise against a stand-in server. The cost: no Xet
    chunk deduplication, and a download running in another thread meanwhile takes plain HTTP.
    """
    from huggingface_hub import constants  # heavy (httpx); it reads HF_* at import

    with _TRANSFER_SWITCH:
        before = constants.HF_HUB_DISABLE_XET
        constants.HF_HUB_DISABLE_XET = True
        try:
            yield
        finally:
            constants.HF_HUB_DISABLE_XET = before


def _push_error(err: Exception, repo_id: str, endpoint: str, token: str) -> PushError:
    """One sentence for the person pushing, with any credential scrubbed from the server's words."""
    import httpx  # heavy (httpx): on first use
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled  # heavy (httpx): on first use

    cause = _first_of(err, (HfHubHTTPError, OfflineModeIsEnabled, httpx.TransportError))
    if isinstance(cause, OfflineModeIsEnabled):
        return PushError(OFFLINE)
    if isinstance(cause, httpx.TransportError):
        return PushError(f"Lost the connection to {endpoint} while pushing to {repo_id}: check the network "
                         "and push again (files already uploaded are not sent twice).")
    if isinstance(cause, HfHubHTTPError):
        status = cause.response.status_code
        if status == 401:
            return PushError(f"The Hub refused the token: check it, and that it has write access to {repo_id}.")
        if status == 403:
            return PushError(f"The token has no write access to {repo_id}: use a token with write permission "
                             "for that account or organization.")
        if status == 404:
            return PushError(f"{repo_id} was not found, or the token cannot see it: check the repo id and "
                             "that the token has write access to it.")
        detail = scrub(cause.server_message or str(cause).splitlines()[0], token)
        return PushError(f"The Hub answered {status} while pushing to {repo_id}: {detail}")
    return PushError(f"Push to {repo_id} failed: {type(err).__name__}: {scrub(str(err), token)}")


def _first_of(err: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    """The first exception of `kinds` along the chain; the library wraps LFS errors in RuntimeError."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def scrub(text: str, token: str | None = None) -> str:
    """`text` without the token, any Authorization header value, bearer credential or hf_ token."""
    if token:
        text = text.replace(token, "***")
    text = _AUTH_HEADER.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    return _HF_TOKEN.sub("hf_***", text)
