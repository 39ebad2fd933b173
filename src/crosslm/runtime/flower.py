"""The federation over Flower's Message API: one Flower message per client and phase.

The round loop does not know it runs on Flower. Silos are identified by the
name they report (node config ``silo-name``, or ``client-<partition-id>`` in
simulation), never by node id: a restarted SuperNode comes back with a new id,
and must be recognised as the same silo so that it takes part again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from crosslm.protocol import FitIns, decode
from crosslm.runtime.base import Federation

RECORD = "crosslm"
HELLO = "query.hello"
WIRE_LOG_ENV = "CROSSLM_WIRE_LOG"  # audit: a folder where every process logs each message content


def message_type(payload: bytes) -> str:
    """Flower's message type for a protocol message: C1 is training, C2 a scoring query."""
    return "train" if isinstance(decode(payload), FitIns) else "query.score"


def wire_log(direction: str, node: int, kind: str, values: dict[str, object]) -> None:
    """With ``$CROSSLM_WIRE_LOG`` set, append a message's full content to a per-process file there."""
    folder = os.environ.get(WIRE_LOG_ENV)
    if not folder:
        return
    shown = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in values.items()}
    line = json.dumps({"direction": direction, "node": node, "type": kind, "content": shown})
    Path(folder).mkdir(parents=True, exist_ok=True)
    with (Path(folder) / f"{os.getpid()}.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _content(message: Message) -> dict[str, object] | str:
    """The crosslm record of a reply, or an error text (Flower error, or none of ours)."""
    if message.has_error():
        return f"Flower error {message.error.code}: {message.error.reason}"
    if RECORD not in message.content.config_records:
        return "reply without a crosslm record"
    return dict(message.content.config_records[RECORD])


class FlowerFederation(Federation):
    """Sends through a Flower ``Grid``; replies missing at the timeout count as failures."""

    def __init__(self, grid: Grid, run_key: str, reply_timeout: float | None = None,
                 progress: Callable[[str], None] = lambda message: None,
                 min_clients: int = 1, connect_timeout: float = 120.0) -> None:
        super().__init__()
        self.grid, self.run_key, self.reply_timeout, self.progress = grid, run_key, reply_timeout, progress
        self.min_clients, self.connect_timeout = min_clients, connect_timeout
        self._silo_of: dict[int, tuple[str, float]] = {}  # node id -> (silo, when it said so)
        self._silent: set[int] = set()  # nodes that did not identify; not asked again

    # -- who is there -----------------------------------------------------------------------

    def client_ids(self) -> list[str]:
        """Silos of the connected nodes, waiting a while for ``min_clients`` of them (SuperNodes
        may connect after the run starts)."""
        deadline = time.monotonic() + self.connect_timeout
        while True:
            silos = self._identify()
            if len(silos) >= self.min_clients or time.monotonic() > deadline:
                return silos
            time.sleep(1.0)

    def _identify(self) -> list[str]:
        """Nodes not seen before are asked their silo name; nodes gone are forgotten (an
        authenticated SuperNode keeps its id across restarts: it is asked again when back)."""
        nodes = set(self.grid.get_node_ids())
        for gone in set(self._silo_of) - nodes:
            del self._silo_of[gone]
        self._silent &= nodes
        new = sorted(nodes - set(self._silo_of) - self._silent)
        if new:
            self._hello(new)
        return sorted(self._nodes_by_silo())

    def _nodes_by_silo(self) -> dict[str, int]:
        """Each silo's most recently identified node: a restarted SuperNode replaces its old id."""
        latest: dict[str, tuple[float, int]] = {}
        for node, (silo, when) in self._silo_of.items():
            if silo not in latest or when > latest[silo][0]:
                latest[silo] = (when, node)
        return {silo: node for silo, (_, node) in latest.items()}

    def _hello(self, nodes: list[int]) -> None:
        messages = [self._message(node, HELLO, {}) for node in nodes]
        replies = {node: _content(reply) for node, reply in self._send_and_receive(messages)}
        for node in nodes:
            content = replies.get(node, "no reply before the timeout")
            silo = content.get("silo") if isinstance(content, dict) else None
            if not isinstance(silo, str) or not silo:
                self._silent.add(node)
                reason = content.get("error", content) if isinstance(content, dict) else content
                self.progress(f"node {node} did not identify its silo: {str(reason).splitlines()[0]}")
                continue
            if silo in self._nodes_by_silo():
                self.progress(f"silo {silo} is now node {node}")
            self._silo_of[node] = (silo, time.monotonic())

    # -- exchange ---------------------------------------------------------------------------

    def _message(self, node: int, kind: str, values: dict[str, object]) -> Message:
        values = {"run-key": self.run_key, **values}
        wire_log("down", node, kind, values)
        ttl = self.reply_timeout if self.reply_timeout else None
        return Message(RecordDict({RECORD: ConfigRecord(values)}), dst_node_id=node,
                       message_type=kind, ttl=ttl)

    def _send_and_receive(self, messages: list[Message], timeout: float | None = None
                          ) -> list[tuple[int, Message]]:
        """(node asked, reply) pairs. Matched by message id: the SuperLink itself sends the error
        reply for a node that stopped sending heartbeats."""
        timeout = self.reply_timeout if timeout is None else timeout
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # ids set by push
        pairs = []
        for reply in replies:
            node = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            content = _content(reply)
            wire_log("up", node, reply.metadata.message_type,
                     content if isinstance(content, dict) else {"error": content})
            pairs.append((node, reply))
        return pairs

    def _exchange(self, payloads: dict[str, bytes], timeout: float | None) -> dict[str, bytes | str]:
        by_silo = self._nodes_by_silo()
        silo_of = {by_silo[cid]: cid for cid in payloads if cid in by_silo}
        out: dict[str, bytes | str] = {cid: "silo no longer connected" for cid in payloads
                                       if cid not in by_silo}
        messages = [self._message(node, message_type(payloads[cid]), {"payload": payloads[cid]})
                    for node, cid in silo_of.items()]
        for node, reply in self._send_and_receive(messages, timeout):
            cid = silo_of.get(node)
            if cid is None:
                continue
            content = _content(reply)
            if isinstance(content, str):
                out[cid] = content
            elif "error" in content:
                out[cid] = str(content["error"])
            elif content.get("silo") != cid:
                out[cid] = f"reply from silo {content.get('silo')!r}, expected {cid!r}"
            else:
                out[cid] = bytes(content["payload"])
        return {cid: out[cid] for cid in payloads if cid in out}  # in the order asked, not of arrival
