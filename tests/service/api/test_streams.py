"""Open streams per tenant: one over the limit is 429 with Retry-After; a finished stream gives its slot back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.streams import StreamSlots, TooManyStreams


@pytest.mark.parametrize("path", ["logs?follow=true", "events?follow=true"])
def test_one_stream_over_the_limit_is_429_and_other_tenants_are_not_affected(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], submit: Any, worker: Any, path: str
) -> None:
    slots: StreamSlots = client.app.state.streams  # type: ignore[attr-defined]
    mine, theirs = submit(), submit(headers=other_auth)
    worker.start(mine["id"])
    worker.finish(mine["id"])
    worker.start(theirs["id"])
    worker.finish(theirs["id"])
    for _ in range(slots.per_tenant):  # alice's streams, held open elsewhere
        slots.open("alice")
    refused = client.get(f"/v1/jobs/{mine['id']}/{path}", headers=auth)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "10"
    assert "open streams" in refused.json()["detail"]
    unfollowed = path.replace("follow=true", "follow=false")
    assert client.get(f"/v1/jobs/{mine['id']}/{unfollowed}", headers=auth).status_code == 200  # not a stream
    assert client.get(f"/v1/jobs/{theirs['id']}/{path}", headers=other_auth).status_code == 200
    assert slots.held("bob") == 0, "bob's finished stream gave its slot back"
    slots.close("alice")
    assert client.get(f"/v1/jobs/{mine['id']}/{path}", headers=auth).status_code == 200
    assert slots.held("alice") == slots.per_tenant - 1


def test_the_slot_is_given_back_however_the_stream_ends() -> None:
    slots = StreamSlots(per_tenant=1)

    async def failing() -> Any:
        yield b"a"
        raise RuntimeError("the client left")

    async def consume() -> None:
        slots.check("t")
        with pytest.raises(RuntimeError):
            async for _ in slots.guard("t", failing()):
                assert slots.held("t") == 1
                with pytest.raises(TooManyStreams):
                    slots.check("t")

    asyncio.run(consume())
    assert slots.held("t") == 0
    never_started = slots.guard("t", failing())  # a response whose client left before it began
    del never_started
    assert slots.held("t") == 0
    slots.open("t")  # free again
