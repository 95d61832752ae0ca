"""Is the Hugging Face Hub reachable? Asked before a download, so that an offline machine gets one
clear sentence at once instead of a minute of retries and a traceback."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")


def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout).close()
        return True
    except OSError:
        return False
