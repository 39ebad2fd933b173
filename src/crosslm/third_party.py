"""Other libraries' console output goes to ``third_party.log`` in the run directory.

transformers, the hub and PEFT print progress bars ("Loading weights", GGUF conversion), log lines
and deprecation warnings that would bury crosslm's own progress; a run sends them to a file instead
(``crosslm run --verbose`` / ``verbose=True`` leaves them on the console). Some come before the run
directory exists (models are converted and loaded while the inputs are checked): they are held in
memory and written once it does, or to the model cache's ``third_party.log`` if the run stops first.
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from contextlib import ExitStack, redirect_stderr
from pathlib import Path
from types import TracebackType
from typing import TextIO

from crosslm.models.loading import model_cache_dir

THIRD_PARTY_LOG = "third_party.log"
# Libraries that install their own stderr handler, which a redirect of sys.stderr would miss
LIBRARY_LOGGERS = ("transformers", "huggingface_hub", "datasets", "peft", "accelerate")


class _Sink(io.TextIOBase):
    """A text stream that holds what it gets in memory until it is given a file.

    Afterwards it writes to whatever ``sys.stderr`` is then: a library that made a stderr handler
    while output was redirected (datasets does on import) keeps this stream.
    """

    def __init__(self) -> None:
        super().__init__()
        self._held = io.StringIO()
        self._target: TextIO | None = self._held

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return (self._target or sys.stderr).write(text)

    def flush(self) -> None:
        (self._target or sys.stderr).flush()

    def redirect(self, target: TextIO | None) -> None:
        """Send everything from now on (and whatever is held) to ``target``; None: to sys.stderr."""
        (target or sys.stderr).write(self._held.getvalue())
        self._held = io.StringIO()
        self._target = target

    @property
    def holding(self) -> bool:
        return self._target is self._held and bool(self._held.getvalue())


class ThirdPartyOutput:
    """While active, third-party stderr output, library log records and warnings go to one file.

    ``to_file(path)`` names the file (the run directory's log, once it exists); until then the
    output is held. Leaving restores the loggers, ``sys.stderr`` and the warning hooks.
    """

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._sink = _Sink()
        self._handler = logging.StreamHandler(self._sink)
        self._handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self._stack = ExitStack()
        self._saved: dict[str, tuple[list[logging.Handler], bool]] = {}
        self._file: TextIO | None = None

    def __enter__(self) -> ThirdPartyOutput:
        if self.verbose:
            return self
        self._stack.callback(self._sink.redirect, None)  # runs last, once sys.stderr is restored
        self._stack.enter_context(redirect_stderr(self._sink))  # tqdm bars, print(file=sys.stderr)
        self._stack.enter_context(warnings.catch_warnings())  # restores showwarning and the filters
        warnings.showwarning = self._show_warning
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            self._saved[name] = (list(logger.handlers), logger.propagate)
            logger.handlers, logger.propagate = [self._handler], False
        return self

    def _show_warning(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: TextIO | None = None, line: str | None = None) -> None:
        self._sink.write(warnings.formatwarning(message, category, filename, lineno, line))

    def to_file(self, path: Path) -> None:
        """Write what was held to ``path`` and go on there (appending: a resumed run keeps its old log)."""
        if self.verbose:
            return
        self._file = path.open("a", encoding="utf-8")
        self._sink.redirect(self._file)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.verbose:
            return
        for name, (handlers, propagate) in self._saved.items():
            logger = logging.getLogger(name)
            added = [h for h in logger.handlers if h is not self._handler and h not in handlers]
            logger.handlers, logger.propagate = handlers + added, propagate
        if self._sink.holding:  # the run stopped before its directory existed
            model_cache_dir().mkdir(parents=True, exist_ok=True)
            self.to_file(model_cache_dir() / THIRD_PARTY_LOG)
        self._stack.close()
        if self._file is not None:
            self._file.close()
