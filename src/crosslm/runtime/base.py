"""The federation interface the server's round loop is written against, once.

A runtime only moves encoded messages; this base class encodes, counts bytes
per round, client and direction, and decodes, so communication is measured the
same way in every runtime.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from crosslm.protocol import Message, decode, encode


@dataclass(frozen=True)
class Transfer:
    round: int
    client: str
    direction: str  # "down" (server to client) or "up"
    kind: str
    bytes: int


class Federation(ABC):
    """Which clients are there; send each a message; gather the replies that arrive."""

    def __init__(self) -> None:
        self.transfers: list[Transfer] = []

    @abstractmethod
    def client_ids(self) -> list[str]:
        """The clients currently known to the federation."""

    @abstractmethod
    def _exchange(self, payloads: dict[str, bytes], timeout: float | None) -> dict[str, bytes | str]:
        """Deliver each payload; return each reply, or an error text for a client that failed."""

    def send(self, messages: dict[str, Message], timeout: float | None = None
             ) -> tuple[dict[str, Message], dict[str, str]]:
        """(replies by client, error by client); clients that fail are left out of the replies."""
        payloads = {cid: encode(msg) for cid, msg in messages.items()}
        for cid, msg in messages.items():
            self._count(msg.round, cid, "down", type(msg).__name__, len(payloads[cid]))
        replies, failures = {}, {}
        for cid, reply in self._exchange(payloads, timeout).items():
            if isinstance(reply, str):
                failures[cid] = reply
                continue
            message = decode(reply)
            replies[cid] = message
            self._count(message.round, cid, "up", type(message).__name__, len(reply))
        for cid in set(messages) - set(replies) - set(failures):
            failures[cid] = "no reply before the timeout"
        return replies, failures

    def _count(self, round_: int, client: str, direction: str, kind: str, size: int) -> None:
        self.transfers.append(Transfer(round_, client, direction, kind, size))
