"""What `serve`'s routes share to answer (serving.server's and the Open Inference Protocol's, serving.v2)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

VERSION_HEADER = b"x-model-version"  # on every answer a version computed: that version
Send = Callable[[dict], Awaitable[None]]


async def respond(send: Send, status: int, body: Any, headers: list | None = None, *,
                  content_type: str = "application/json", version: str | None = None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    if content_type.startswith("text/") and "charset" not in content_type:
        content_type += "; charset=utf-8"  # as Starlette's Response, which MLflow's server answers with
    head = [(b"content-type", content_type.encode()), (b"content-length", str(len(raw)).encode()), *(headers or [])]
    if version:
        head.append((VERSION_HEADER, version.encode()))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})
