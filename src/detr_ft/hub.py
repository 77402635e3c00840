"""Whether the Hugging Face hub answers, asked once and fast.

Offline, huggingface_hub retries each request with back-off (about 30 s in all) before it
falls back to its cache or fails, so a user waits half a minute for an error detr-ft could
name at once. ``hub_unreachable`` opens one TCP connection to the hub's endpoint instead: a
failed name lookup or a refused connection answers in milliseconds, ``timeout`` caps a
network that drops packets. When it fails, detr-ft loads from the local cache alone, as
``HF_HUB_OFFLINE=1`` would, and says why when the cache does not have the model either.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

# With a proxy, the endpoint is reached through it: a direct connection says nothing.
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub's endpoint (``HF_ENDPOINT``, default https://huggingface.co) cannot be
    reached, in a few words; None when it can, when offline mode already skips the network,
    or when a proxy is configured (the probe cannot tell)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(k) for k in PROXY_VARIABLES):
        return None
    url = urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"
    return None
