"""The link from a Flower ClientApp to its silo's long-running worker (``crosslm silo-worker``).

Flower 1.41 runs every message in a fresh ClientApp process, which imports torch and
transformers and rebuilds the silo's Client each time: 5.7 s of CPU for a MiniLM silo before
its work (``benchmarks/clientapp_start.py``). A SuperNode whose node config names a worker
folder (``silo-worker``) has its ClientApp hand each message to a worker the silo started once
beside it, which keeps its Client (model, data, state) loaded between messages; the ClientApp
itself then imports neither torch nor crosslm's client side.

The link is a Unix socket in that folder, authenticated by a random key in a file only the
silo's user can read (``multiprocessing.connection``). Nothing leaves the machine: the worker
gets what the ClientApp got (the message's values, the run and node configs) and returns what
the ClientApp would have replied.
"""

from __future__ import annotations

import os
import secrets
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client as connect
from multiprocessing.connection import Listener
from pathlib import Path

from crosslm.errors import CrossLMError

SOCKET, KEY = "worker.sock", "worker.key"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


def socket_path(folder: Path) -> Path:
    path = folder.resolve() / SOCKET
    if len(str(path)) > MAX_SOCKET_PATH:
        raise CrossLMError(f"silo-worker folder {folder}: the socket path {path} is longer than "
                           f"{MAX_SOCKET_PATH} characters, which a Unix socket cannot have; "
                           "use a shorter folder")
    return path


def listen(folder: Path) -> Listener:
    """A new key and a listening socket in ``folder``; a stale socket of an earlier worker is replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    path = socket_path(folder)
    key = secrets.token_bytes(32)
    descriptor = os.open(folder / KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(key)
    path.unlink(missing_ok=True)
    return Listener(str(path), family="AF_UNIX", authkey=key)


def forward(folder: Path, request: dict) -> dict:
    """The worker's reply to ``request``; if the worker cannot be reached, an error reply (the server
    then leaves this silo out of the phase, as when a ClientApp fails)."""
    try:
        key = (folder / KEY).read_bytes()
        with connect(str(socket_path(folder)), family="AF_UNIX", authkey=key) as connection:
            connection.send(request)
            return connection.recv()
    except (OSError, EOFError, AuthenticationError, CrossLMError) as err:
        silo = str(request.get("node_config", {}).get("silo-name", ""))
        return {"silo": silo, "error": f"silo worker at {folder} not reachable: {type(err).__name__}: {err}"}
