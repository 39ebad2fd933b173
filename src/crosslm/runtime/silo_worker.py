"""``crosslm silo-worker``: a silo's long-running process that answers its SuperNode's messages.

Started once beside the SuperNode, whose node config names the same folder (``silo-worker``);
each message's ClientApp forwards to it (``silo_link``), and it answers as the ClientApp would
have (``flower_app.answer``), with the silo's Client kept loaded between messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from multiprocessing import AuthenticationError
from pathlib import Path

from crosslm.runtime import silo_link
from crosslm.runtime.flower_app import answer


def serve(folder: Path, progress: Callable[[str], None] = print) -> None:
    """Answer one message at a time until stopped (Ctrl-C or SIGTERM)."""
    import crosslm.client  # noqa: F401 - torch and transformers load now, not with the first message

    with silo_link.listen(folder) as listener:
        progress(f"silo worker listening on {listener.address}")
        while True:
            try:
                with listener.accept() as connection:
                    start = time.perf_counter()
                    reply = answer(**connection.recv())
                    connection.send(reply)
            except (OSError, EOFError, AuthenticationError) as err:  # a ClientApp gone or a wrong key
                progress(f"a connection failed: {type(err).__name__}: {err}")
                continue
            outcome = f"error: {reply['error']}" if "error" in reply else "answered"
            seconds = time.perf_counter() - start
            progress(f"{reply.get('silo') or 'unknown silo'}: {outcome} in {seconds:.1f} s")
