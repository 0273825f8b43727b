"""`serve`'s shutdown on SIGTERM, as a rolling update needs it: drain first (not ready, every answer closing its
connection), then stop as uvicorn stops (serving.server runs it)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any

_logger = logging.getLogger(__name__)


class DrainingServer:
    """uvicorn's server, which on SIGTERM first drains for ``drain_s`` seconds: readiness answers 503 (/ping, and
    /v2/health/ready 400) so the load balancer stops sending, every answer carries ``Connection: close`` so no
    client writes its next request to a connection about to close, and the server listens and answers as before
    (the drain ends sooner once no connection is open). Then it stops listening, lets a connection accepted just
    before read its request (up to SETTLE_S: uvicorn's shutdown closes one whose request it has not read yet), and
    shuts down as uvicorn does (answer what is in flight, exit). A second SIGTERM, or a SIGINT, starts uvicorn's
    shutdown at once (a second SIGINT forces the exit)."""

    SETTLE_S = 2.0

    def __init__(self, config, app: Any, drain_s: float):
        import uvicorn

        outer = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame) -> None:
                if sig == signal.SIGTERM and not app.draining and not self.should_exit and outer.drain_s > 0:
                    app.draining = True
                    _logger.info("SIGTERM: draining for up to %g s (not ready; answers close their connections)",
                                 outer.drain_s)
                    loop = asyncio.get_event_loop()  # the server's: a signal is handled in the thread running it
                    threading.Thread(target=outer.drained, args=(loop, sig, frame), daemon=True).start()
                    return
                super().handle_exit(sig, frame)

            def exit_now(self, sig, frame) -> None:
                super().handle_exit(sig, frame)

        self.server, self.drain_s = Server(config), drain_s

    def drained(self, loop: asyncio.AbstractEventLoop, sig, frame) -> None:
        """Wait out the drain (or until no connection is open), stop listening, let the connections accepted meanwhile
        read their requests, then shut down as uvicorn does on SIGTERM (from this thread, waiting on the server's
        own state: its connections, each one's request in progress)."""
        state = self.server.server_state
        deadline = time.monotonic() + self.drain_s
        while time.monotonic() < deadline and state.connections:
            time.sleep(0.05)
        for listening in getattr(self.server, "servers", []):
            loop.call_soon_threadsafe(listening.close)
        settle = time.monotonic() + self.SETTLE_S
        while time.monotonic() < settle and any(getattr(c, "cycle", True) is None for c in list(state.connections)):
            time.sleep(0.02)
        self.server.exit_now(sig, frame)

    def run(self) -> None:
        self.server.run()
