"""Third-party chatter stays out of a user's output unless they ask for it with --debug: NNCF's INFO line per graph
node, torchao's warning about kernels it cannot load (and torch's about the way torchao registers an Enum),
ExecuTorch's C++ log lines (cpuinfo, thread pool). None of it is about the user's model; where a library fails, its
exception still reaches the user as one line."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

_verbose = [False]
# Python loggers of libraries that log at import or per node, and the level a user sees from them by default.
QUIET_LOGGERS = {
    "nncf": logging.WARNING,
    "torchao": logging.ERROR,
    "torch.utils._pytree": logging.ERROR,  # torchao's import registers an Enum the way torch now deprecates
}


def set_verbose(verbose: bool) -> None:
    """--debug: every library speaks as it would."""
    _verbose[0] = verbose
    quiet_loggers()


def quiet_loggers() -> None:
    """Apply QUIET_LOGGERS. NNCF sets its logger's level when it is imported, so its importer calls this again."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if _verbose[0] else level)


@contextmanager
def native_output_quiet() -> Iterator[None]:
    """Native code's prints to fd 1 and 2 (which Python's redirections do not reach) go to a file while the block
    runs; if it raises, they are replayed to stderr, so nothing that explains a failure is lost."""
    if _verbose[0]:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved[1], 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
