"""Running a server's tools (rndc, knotc, keymgr, nsd-control, pdnsutil, signers, checkers).

One runner for every adapter, so each failure reads the same way wherever it happens: a tool
that is not installed names its Debian package, a tool that hangs is stopped at the adapter's
timeout, and a tool that fails is quoted (its error lines, not a Python traceback).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from krs_plugin.errors import AdapterError
from krs_plugin.files import SECRET_MODE

PACKAGES = {
    "rndc": "bind9-utils",
    "named-checkconf": "bind9-utils",
    "dnssec-signzone": "bind9-utils",
    "knotc": "knot",
    "keymgr": "knot (Knot 3.4 and older) or knot-keymgr (Knot 3.5 and later)",
    "nsd-control": "nsd",
    "nsd-checkzone": "nsd",
    "nsd-checkconf": "nsd",
    "ldns-signzone": "ldnsutils",
    "ldns-verify-zone": "ldnsutils",
    "pdnsutil": "pdns-server",
    "pdns_control": "pdns-server",
}
"""The Debian package of each tool an adapter runs, for "not found" messages."""

MAX_MESSAGE = 400


def install_hint(binary: str) -> str:
    """``apt-get install <package>`` for ``binary`` (by its file name), or a generic hint."""
    package = PACKAGES.get(Path(binary).name)
    return f"apt-get install {package}" if package else "install it or set its path"


def failure_text(output: str) -> str:
    """What a failed tool said, on one line: its error lines when it marks some (pdnsutil prints
    warnings first), else its last three lines; at most MAX_MESSAGE characters."""
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    text = " ".join(" ".join((errors or lines)[-3:]).split())
    return text[:MAX_MESSAGE] or "failed"


def run_tool(
    argv: list[str],
    what: str,
    *,
    timeout: float,
    cwd: Path | None = None,
    umask: int = -1,
) -> str:
    """Run ``argv`` and return its standard output; AdapterError (naming ``what``) when it is
    missing, takes longer than ``timeout`` seconds, or exits non-zero. ``umask`` is for tools
    that create files holding private keys (keymgr writes PEM files with the caller's umask)."""
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            umask=umask,
            check=False,
        )
    except FileNotFoundError as exc:
        raise AdapterError(f"{argv[0]} not found: {install_hint(argv[0])}") from exc
    except subprocess.TimeoutExpired as exc:
        raise AdapterError(f"{what}: no answer in {timeout:g} s") from exc
    if result.returncode != 0:
        said = failure_text(f"{result.stderr}\n{result.stdout}")
        raise AdapterError(f"{what}: {said}")
    return result.stdout


@contextmanager
def secret_file(name: str, data: bytes, *, owner: tuple[int, int] | None = None) -> Iterator[Path]:
    """A private key handed to a tool as a file (keymgr, pdnsutil take no stdin): in a fresh
    folder only we can enter, the file 0600 from its creation, both removed afterwards.
    ``owner`` gives both to the user the tool switches to (keymgr as root becomes knotd's)."""
    folder = Path(tempfile.mkdtemp(prefix="krs-secret-"))
    try:
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        if owner is not None:
            os.chown(folder, *owner)
            os.chown(path, *owner)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)
