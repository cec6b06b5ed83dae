"""Open streams (followed logs, event streams) per tenant: each polls the database every 0.5 s on the
shared pool, so a tenant may hold at most ``FSG_MAX_STREAMS_PER_TENANT`` at once; one more is 429 with
``Retry-After``. The handler checks for room before the response starts (``check``); the stream takes
its slot when it starts sending and gives it back when it ends, however it ends (the job finished, the
client left, an error). A response that never starts (the client left at once) never takes one, so no
slot leaks; two requests racing for the last slot may both get it, a bounded excess."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["StreamSlots", "TooManyStreams"]


class TooManyStreams(Exception):
    """A tenant asked for one stream more than it may hold: 429."""

    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(f"tenant {tenant!r} already holds {limit} open streams (logs and events); close one first")


class StreamSlots:
    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, tenant: str) -> None:
        """Raise ``TooManyStreams`` when ``tenant`` holds its limit already."""
        if self.held(tenant) >= self.per_tenant:
            raise TooManyStreams(tenant, self.per_tenant)

    def open(self, tenant: str) -> None:
        """Take a slot for ``tenant`` or raise ``TooManyStreams``."""
        with self._lock:
            held = self._open.get(tenant, 0)
            if held >= self.per_tenant:
                raise TooManyStreams(tenant, self.per_tenant)
            self._open[tenant] = held + 1

    def _take(self, tenant: str) -> None:
        with self._lock:
            self._open[tenant] = self._open.get(tenant, 0) + 1

    def close(self, tenant: str) -> None:
        with self._lock:
            held = self._open.get(tenant, 0) - 1
            if held > 0:
                self._open[tenant] = held
            else:
                self._open.pop(tenant, None)

    def held(self, tenant: str) -> int:
        with self._lock:
            return self._open.get(tenant, 0)

    async def guard(self, tenant: str, body: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """``body``, holding one of the tenant's slots from its first chunk until it ends."""
        self._take(tenant)
        try:
            async for chunk in body:
                yield chunk
        finally:
            self.close(tenant)
