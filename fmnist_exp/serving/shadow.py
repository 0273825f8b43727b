"""Shadowing: a sample of the requests the serving version answered, sent to the shadow alias's version
(@challenger) too, after the answer has gone and one at a time (a sample that comes while the last is
still being compared is skipped), so a team sees on its own traffic how often the two versions agree,
per version pair: in /metrics, in /version, and as a tag on the shadow version (one per replica)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
from typing import Any

from .follow import Follower, Served, iso

_logger = logging.getLogger(__name__)


class Shadow:
    def __init__(self, follower: Follower, fraction: float, metrics: Any):
        self.follower, self.fraction, self.metrics = follower, fraction, metrics
        self.busy = False  # read and set on the event loop only
        self.counts: dict[tuple[str, str], list[int]] = {}  # (serving, shadow) -> [agreeing images, images]
        self._written: dict[tuple[str, str], int] = {}
        self._tasks: set[asyncio.Task] = set()

    def describe(self) -> dict[str, Any]:
        other = self.follower.current
        return {"alias": self.follower.alias, "version": other.version if other else None,
                "fraction": self.fraction, "last_error": self.follower.last_error,
                "agreement": {f"v{a} vs v{b}": {"agree": n[0], "images": n[1]} for (a, b), n in self.counts.items()}}

    def take(self, served: Served) -> Served | None:
        """The shadow version to send this request to as well, or None (none, the same, busy, not drawn)."""
        other = self.follower.current
        if other is None or other.version == served.version or self.busy or random.random() >= self.fraction:
            return None
        self.busy = True
        return other

    def release(self) -> None:
        self.busy = False

    def compare(self, served: Served, other: Served, body: bytes, content_type: str | None, answer: str) -> None:
        """Send the request to ``other`` in the background and count agreement with ``answer`` (served's)."""
        task = asyncio.create_task(self._compare(served, other, body, content_type, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(self, served: Served, other: Served, body: bytes, content_type: str | None,
                       answer: str) -> None:
        try:
            status, theirs, _ = await asyncio.to_thread(other.invoke, body, content_type)
            if status != 200:
                self.metrics.shadow_errors.labels(shadow_version=other.version).inc()
                return
            ours, their_labels = _labels(answer), _labels(theirs)
            agree = sum(a == b for a, b in zip(ours, their_labels, strict=True))
            self.metrics.shadow_images.labels(served.version, other.version, "true").inc(agree)
            self.metrics.shadow_images.labels(served.version, other.version, "false").inc(len(ours) - agree)
            count = self.counts.setdefault((served.version, other.version), [0, 0])
            count[0] += agree
            count[1] += len(ours)
        except Exception as e:  # the client has its answer; the shadow's failure is only counted and logged
            self.metrics.shadow_errors.labels(shadow_version=other.version).inc()
            _logger.warning("shadow version %s failed on a sampled request: %s: %s", other.version,
                            type(e).__name__, str(e)[:300])
        finally:
            self.busy = False

    def record(self) -> None:
        """Write the agreement so far on each shadow version, this replica's own tag (from a follower's thread,
        at each poll)."""
        from mlflow.tracking import MlflowClient

        host = socket.gethostname()
        for (version, shadow), (agree, images) in list(self.counts.items()):
            if images == 0 or self._written.get((version, shadow)) == images:
                continue
            try:
                MlflowClient().set_model_version_tag(
                    self.follower.name, shadow, f"shadow_agreement/v{version}/{host}",
                    f"{agree}/{images} images agree ({100 * agree / images:.1f}%) on live requests to "
                    f"{self.follower.name} v{version}, since this server started; {iso(time.time())}")
            except Exception as e:  # a deleted version, a registry away: the next poll tries again
                _logger.warning("could not record the shadow's agreement on v%s: %s", shadow, str(e)[:300])
                continue
            self._written[(version, shadow)] = images


def _labels(body: bytes | str) -> list:
    return [row["label"] for row in json.loads(body)["predictions"]]
