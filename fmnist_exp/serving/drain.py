"""`serve`'s shutdown on SIGTERM, as a rolling update needs it: drain first (not ready, every answer closing its
connection), then stop as uvicorn stops (serving.server runs it)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

_logger = logging.getLogger(__name__)


class DrainingServer:
    """uvicorn's server, which on SIGTERM first drains for ``drain_s`` seconds: readiness answers 503 (/ping, and
    /v2/health/ready 400) so the load balancer stops sending, every answer carries ``Connection: close`` so no
    client writes its next request to a connection about to close, and the server listens and answers as before;
    then uvicorn's own shutdown (stop listening, answer what is in flight, exit). Once every connection has closed
    the drain ends sooner. A second SIGTERM, or SIGINT, stops at once as uvicorn does."""

    def __init__(self, config, app: Any, drain_s: float):
        import uvicorn

        outer = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame) -> None:
                if sig == signal.SIGTERM and not app.draining and not self.should_exit and outer.drain_s > 0:
                    app.draining = True
                    _logger.info("SIGTERM: draining for up to %g s (not ready; answers close their connections)",
                                 outer.drain_s)
                    threading.Thread(target=outer.drained, args=(sig, frame), daemon=True).start()
                    return
                super().handle_exit(sig, frame)

            def exit_now(self, sig, frame) -> None:
                super().handle_exit(sig, frame)

        self.server, self.drain_s = Server(config), drain_s

    def drained(self, sig, frame) -> None:
        """Wait out the drain (or until no connection is open), then shut down as uvicorn does on SIGTERM."""
        deadline = time.monotonic() + self.drain_s
        while time.monotonic() < deadline and self.server.server_state.connections:
            time.sleep(0.05)
        self.server.exit_now(sig, frame)

    def run(self) -> None:
        self.server.run()
