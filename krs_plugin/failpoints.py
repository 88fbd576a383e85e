"""Crash points for testing crash safety with the real process (in the spirit of etcd's gofail).

``KRS_FAILPOINT=<name>`` in the environment makes the process SIGKILL itself when it reaches the
point of that name; nothing happens otherwise. Tests use it to kill ``krs run`` at an exact step
of an apply, which a signal sent from outside cannot hit reliably. Names in use:

- ``write_key``: an adapter has written a key's ``.private`` file, not yet its ``.key``.
- ``kek_written``: ``krs-kdc custody rotate-kek`` made the new KEK, kdc.db not yet changed.
- ``kek_committed``: ``rotate-kek`` committed kdc.db under the new KEK, the old KEK not yet
  destroyed.
"""

from __future__ import annotations

import os
import signal


def reached(name: str) -> None:
    if os.environ.get("KRS_FAILPOINT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
