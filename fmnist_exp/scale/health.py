"""Fail fast on the services a command relies on: the MLflow tracking server answers, a port is free."""

from __future__ import annotations

import socket
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit, urlunsplit
from urllib.request import urlopen

import mlflow

from ..params import ConfigError


def shown_uri(uri: str) -> str:
    """A URI as printed: any password in it replaced by ***."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rsplit('@', 1)[1]}"))


def check_tracking_server(timeout_s: float = 5.0) -> None:
    """Refuse, within seconds, a tracking server that does not answer: MLflow's client would
    retry each request for minutes, and a run it did manage to start would be left behind."""
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(uri)
    shown = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"  # no user:password
    try:
        urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except HTTPError:
        return  # it answered (an auth proxy or an older server without /health): reachable
    except (URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(
            f"the MLflow tracking server {shown} does not answer ({reason}). Start it (mlflow server ... "
            "--host 0.0.0.0 --port 5000, see docs/scale-out.md, 'PostgreSQL and one tracking server') "
            "or point MLFLOW_TRACKING_URI at one that runs."
        ) from None


def check_bind(host: str, port: int) -> None:
    """Refuse a port in use now rather than after the storage is opened and the banner printed."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        # as servers bind: a port whose last server just stopped (connections in TIME_WAIT) is free
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pass another --port") from None
