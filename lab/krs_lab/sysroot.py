"""Servers of another Debian release, run as plain processes from a debootstrap root.

The labs run the nameserver the host's packages provide. To test the other Debian generation on
the same machine (BIND 9.20 from Debian 13 on a Debian 12 host, or 9.18 on a Debian 13 host) a
lab can run its binaries from a root made by ``debootstrap``: ``bwrap`` puts that root at ``/``
and binds the host's ``/tmp`` at the same place, so every path a lab writes (config, zone files,
key directory, logs) is the same inside and outside, and the process shares the host's loopback.

Roots live in ``/var/cache/krs-plugin/sysroots/<suite>`` (``KRS_SYSROOT_DIR`` overrides) and are
made once, by ``make_sysroot`` (``./run setup`` does it as root); docs/development.md.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from krs_lab.process import LabError

DEFAULT_DIR = Path("/var/cache/krs-plugin/sysroots")
SHARED_PATHS = ("/tmp",)  # the labs' directories are made under it (tempfile)
"""Host paths visible at the same place inside the root."""

BIND9_PACKAGES = ("bind9", "bind9-utils", "bind9-dnsutils")
MIRROR = "http://deb.debian.org/debian"


def sysroot_dir() -> Path:
    return Path(os.environ.get("KRS_SYSROOT_DIR") or DEFAULT_DIR)


def host_suite() -> str:
    """The host's Debian codename (bookworm, trixie, ...), or "" when it cannot be told."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME":
            return value.strip().strip('"')
    return ""


def other_generation(suite: str | None = None) -> str:
    """The Debian release tested beside the host's: trixie on bookworm, bookworm otherwise."""
    return "trixie" if (suite if suite is not None else host_suite()) == "bookworm" else "bookworm"


@dataclass(frozen=True)
class Sysroot:
    """A Debian root whose programs run through ``bwrap`` with the host's ``/tmp`` shared."""

    path: Path
    suite: str

    @classmethod
    def find(cls, suite: str) -> Sysroot | None:
        """The root for ``suite`` when it exists and is complete, else None."""
        path = sysroot_dir() / suite
        if (path / ".krs-complete").exists():
            return cls(path, suite)
        return None

    def binary(self, name: str) -> str | None:
        """The absolute path of ``name`` inside the root (as a process there sees it)."""
        for folder in ("usr/sbin", "usr/bin", "sbin", "bin"):
            if (self.path / folder / name).exists():
                return f"/{folder}/{name}"
        return None

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the root."""
        binds: list[str] = []
        for shared in SHARED_PATHS:
            binds += ["--bind", shared, shared]
        return [
            "bwrap",
            "--bind",
            str(self.path),
            "/",
            *binds,
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--die-with-parent",
            "--",
            *argv,
        ]

    def user_ids(self, user: str) -> tuple[int, int]:
        """uid and gid of ``user`` as the root's own ``/etc/passwd`` has them."""
        for line in (self.path / "etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise LabError(f"no user {user} in {self.path}/etc/passwd")

    def version(self, package: str) -> str:
        result = subprocess.run(
            self.wrap(["dpkg-query", "-W", "-f", "${Version}", package]),
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def write_wrapper(self, folder: Path, name: str) -> Path:
        """A script ``folder/name`` that runs ``name`` inside the root: what an adapter is
        configured with (e.g. ``rndc.binary``) to drive this root's server like a local one."""
        inner = self.binary(name)
        if inner is None:
            raise LabError(f"{name} is not installed in {self.path}")
        folder.mkdir(parents=True, exist_ok=True)
        script = folder / name
        script.write_text(
            "#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in self.wrap([inner])) + ' "$@"\n'
        )
        script.chmod(0o755)
        return script


def make_sysroot(
    suite: str, packages: tuple[str, ...] = BIND9_PACKAGES, mirror: str = MIRROR
) -> Sysroot:
    """debootstrap ``suite`` with ``packages`` (as root; a minute or two), unless already made.

    Made in a temporary folder and renamed into place, so an interrupted run leaves no half
    root that ``Sysroot.find`` would take."""
    found = Sysroot.find(suite)
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise LabError(f"making the {suite} root needs root (debootstrap): run ./run setup")
    for tool in ("debootstrap", "bwrap"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            raise LabError(f"{tool} is missing: apt-get install debootstrap bubblewrap")
    base = sysroot_dir()
    base.mkdir(parents=True, exist_ok=True)
    work = base / f".{suite}.partial"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    result = subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            suite,
            str(work),
            mirror,
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise LabError(f"debootstrap {suite} failed:\n{tail}")
    (work / ".krs-complete").write_text(" ".join(packages) + "\n")
    target = base / suite
    subprocess.run(["rm", "-rf", str(target)], check=True)
    work.rename(target)
    return Sysroot(target, suite)


def main(argv: list[str] | None = None) -> int:
    """``python -m krs_lab.sysroot [SUITE]``: make the root (default: the other
    generation's), print its path."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    suite = args[0] if args else other_generation()
    try:
        root = make_sysroot(suite)
    except LabError as exc:
        print(f"sysroot: {exc}", file=sys.stderr)
        return 1
    print(root.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
