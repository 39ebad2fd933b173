"""All clients in this process: fast, deterministic, the default on one machine and in tests."""

from __future__ import annotations

import traceback
from collections.abc import Callable

from crosslm.client import Client
from crosslm.protocol import decode, encode
from crosslm.runtime.base import Federation


class InProcessFederation(Federation):
    """Messages still go through the wire encoding, so results and byte counts match other runtimes.

    Clients run one after another; there is no timeout to enforce in-process.
    """

    def __init__(self, clients: dict[str, Client],
                 on_deliver: Callable[[str, str], None] = lambda client, kind: None) -> None:
        super().__init__()
        self.clients, self.on_deliver = clients, on_deliver

    def client_ids(self) -> list[str]:
        return list(self.clients)

    def _exchange(self, payloads: dict[str, bytes], timeout: float | None) -> dict[str, bytes | str]:
        replies: dict[str, bytes | str] = {}
        for cid, payload in payloads.items():
            message = decode(payload)
            self.on_deliver(cid, type(message).__name__)
            try:
                replies[cid] = encode(self.clients[cid].handle(message))
            except Exception as err:  # a failing client is left out of the round, not fatal
                replies[cid] = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
        return replies
