"""Is the Hugging Face Hub reachable? Asked before a download, so that an offline machine gets one
clear sentence at once instead of a minute of retries and a traceback."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    port = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).port or 443
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False
