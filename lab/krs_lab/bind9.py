"""BIND 9 (named) as a plain process: zones set up for keys from outside, an rndc control channel
with its own key, everything in one directory, on loopback.

The zone configuration follows docs/servers/bind9.md for the running named's version: BIND 9.18
takes external keys with ``inline-signing yes; auto-dnssec maintain;``, BIND 9.20 (which removed
``auto-dnssec``) with a ``dnssec-policy`` in ``manual-mode`` whose ``keys`` clause matches the
KDC's keys. Plus what a throw-away instance needs: explicit pid, session and managed-keys paths,
and ``dnssec-validation no`` so that named does not try to reach the root servers.

With a ``sysroot`` (lab/krs_lab/sysroot.py) named and its tools come from a debootstrap root of
another Debian release, so one host tests both generations.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krs_lab.ports import free_port
from krs_lab.process import LabError, LabServer, ServerProcess, server_binary
from krs_lab.sysroot import Sysroot
from krs_lab.zones import unsigned_zone_text

POLICY = "krs"
"""The lab's dnssec-policy for zones that take the KDC's keys (BIND 9.20)."""


def policy_text(
    name: str,
    keys: Sequence[tuple[str, str]],
    purge_keys: str = "P1D",
    dnskey_ttl: int | None = None,
) -> str:
    """A ``dnssec-policy`` for keys from outside (docs/servers/bind9.md): ``manual-mode`` so
    named never creates, rolls or retires a key by itself, one entry per (role, algorithm) the
    KDC sends, ``lifetime unlimited`` so no rollover of named's own is ever due; ``dnskey-ttl``,
    the TTL named 9.20 serves the DNSKEY RRset with (the key files' is not used), when given."""
    entries = "".join(
        f"        {role} key-directory lifetime unlimited algorithm {algorithm};\n"
        for role, algorithm in keys
    )
    ttl = "" if dnskey_ttl is None else f"    dnskey-ttl {dnskey_ttl};\n"
    return (
        f'dnssec-policy "{name}" {{\n'
        "    manual-mode yes;\n"
        f"{ttl}"
        f"    keys {{\n{entries}    }};\n"
        f"    purge-keys {purge_keys};\n"
        "};\n"
    )


def version_tuple(text: str) -> tuple[int, int]:
    """(9, 20) from ``named -v`` / ``rndc status`` text such as "BIND 9.20.30-1~deb13u1"."""
    match = re.search(r"BIND (\d+)\.(\d+)", text)
    if match is None:
        raise LabError(f"cannot tell the BIND version from {text!r}")
    return int(match.group(1)), int(match.group(2))


@dataclass
class Bind9Lab(LabServer):
    """A named instance in ``root``; ``start()`` writes everything and waits until it answers."""

    root: Path
    zones: Sequence[str]
    host: str = "127.0.0.1"
    port: int = 0
    control_port: int = 0
    signed_zones: Sequence[str] | None = None  # default: all zones are set up for signing
    policy_zones: Sequence[str] = ()  # zones under "dnssec-policy default" (refused by bind9)
    user: str | None = None  # run named -u <user>; the key directory stays root's (a pitfall test)
    sysroot: Sysroot | None = None  # named from this root instead of the host's packages
    policy_keys: Sequence[tuple[str, str]] = (  # the 9.20 policy's keys clause
        ("ksk", "ecdsap256sha256"),
        ("zsk", "ecdsap256sha256"),
    )
    extra_zone_options: dict[str, str] = field(default_factory=dict)  # zone -> raw options
    zone_policies: dict[str, str] = field(default_factory=dict)  # zone -> policy (9.20)
    extra_config: str = ""  # raw statements (more dnssec-policy blocks, say)
    dnskey_ttl: int | None = None  # the 9.20 policy's dnskey-ttl (None: named's, 1h)
    process: ServerProcess | None = field(default=None, init=False)
    _version: tuple[int, int] | None = field(default=None, init=False)

    @property
    def key_directory(self) -> Path:
        return self.root / "keys"

    @property
    def rndc_key(self) -> Path:
        return self.root / "rndc.key"

    @property
    def named_conf(self) -> Path:
        return self.root / "named.conf"

    @property
    def bin_directory(self) -> Path:
        """Wrapper scripts for this root's tools (only with a sysroot)."""
        return self.root / "bin"

    def tool(self, name: str) -> str:
        """How to run BIND tool ``name`` (rndc, named-checkconf, ...) against this instance."""
        if self.sysroot is not None:
            return str(self.sysroot.write_wrapper(self.bin_directory, name))
        return server_binary(name) or name

    def command(self, name: str, *args: str) -> list[str]:
        return [self.tool(name), *args]

    def rndc(self, *args: str) -> str:
        """rndc against this instance; its output (LabError with it when rndc fails)."""
        argv = self.command("rndc", "-k", str(self.rndc_key), "-s", self.host)
        result = subprocess.run(
            [*argv, "-p", str(self.control_port), *args], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise LabError(f"rndc {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    @property
    def version(self) -> tuple[int, int]:
        """The (major, minor) version of the named this lab runs."""
        if self._version is None:
            named = self._named()
            argv = self.sysroot.wrap([named, "-v"]) if self.sysroot else [named, "-v"]
            out = subprocess.run(argv, capture_output=True, text=True).stdout
            self._version = version_tuple(out)
        return self._version

    @property
    def uses_policy(self) -> bool:
        """Whether zones take external keys through dnssec-policy manual-mode (BIND >= 9.20)."""
        return self.version >= (9, 20)

    def _named(self) -> str:
        if self.sysroot is not None:
            named = self.sysroot.binary("named")
            if named is None:
                raise LabError(f"named is not installed in {self.sysroot.path}")
            return named
        named = server_binary("named")
        if named is None:
            raise LabError("named is not installed (apt-get install bind9 bind9-utils)")
        return named

    def adapter_settings(self) -> dict[str, Any]:
        """``adapter.settings`` for krs.yaml, pointing at this instance."""
        rndc: dict[str, Any] = {
            "key_file": str(self.rndc_key),
            "server": self.host,
            "port": self.control_port,
        }
        settings: dict[str, Any] = {
            "key_directory": str(self.key_directory),
            "server": f"{self.host}:{self.port}",
            "rndc": rndc,
            "named_conf": str(self.named_conf),
        }
        if self.sysroot is not None:
            rndc["binary"] = self.tool("rndc")
            settings["named_checkconf"] = self.tool("named-checkconf")
        return settings

    def zone_dnssec(self, zone: str, signed: set[str]) -> str:
        """The zone's signing options, for this named's version."""
        if zone in self.policy_zones:
            lines = ["inline-signing yes;", "dnssec-policy default;"]
        elif zone not in signed:
            lines = []
        elif self.uses_policy:
            policy = self.zone_policies.get(zone, POLICY)
            lines = ["inline-signing yes;", f'dnssec-policy "{policy}";', "checkds no;"]
        else:
            lines = ["inline-signing yes;", "auto-dnssec maintain;"]
        if lines:
            lines.append(f'key-directory "{self.key_directory}";')
        lines += [self.extra_zone_options[zone]] if zone in self.extra_zone_options else []
        return "".join(f"    {line}\n" for line in lines)

    def write_config(self) -> None:
        self._named()
        self.port = self.port or free_port(self.host)
        self.control_port = self.control_port or free_port(self.host)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_directory.mkdir(mode=0o700, exist_ok=True)
        if not self.rndc_key.exists():
            subprocess.run(
                self.command("rndc-confgen", "-a", "-c", str(self.rndc_key)),
                check=True,
                capture_output=True,
            )
        signed = set(self.zones if self.signed_zones is None else self.signed_zones)
        blocks = []
        for zone in self.zones:
            file = self.root / f"{zone}zone"
            if not file.exists():
                file.write_text(unsigned_zone_text(zone))
            dnssec = self.zone_dnssec(zone, signed)
            blocks.append(f'zone "{zone}" {{\n    type primary;\n    file "{file}";\n{dnssec}}};\n')
        policy = (
            policy_text(POLICY, self.policy_keys, dnskey_ttl=self.dnskey_ttl)
            if self.uses_policy
            else ""
        )
        self.named_conf.write_text(
            f'include "{self.rndc_key}";\n'
            "options {\n"
            f'    directory "{self.root}";\n'
            f'    pid-file "{self.root}/named.pid";\n'
            f'    session-keyfile "{self.root}/session.key";\n'
            f'    managed-keys-directory "{self.root}";\n'
            f"    listen-on port {self.port} {{ {self.host}; }};\n"
            "    listen-on-v6 { none; };\n"
            "    recursion no;\n"
            "    notify no;\n"
            "    dnssec-validation no;\n"
            "};\n"
            f"controls {{ inet {self.host} port {self.control_port} allow {{ {self.host}; }} "
            'keys { "rndc-key"; }; };\n' + policy + self.extra_config + "".join(blocks)
        )

    def _give_to_user(self, user: str) -> None:
        """named -u drops to ``user``: it must own its directory and files (not the key
        directory, which stays root's in the pitfall test)."""
        if self.sysroot is not None:
            uid, gid = self.sysroot.user_ids(user)
        else:
            import pwd

            entry = pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
        os.chown(self.root, uid, gid)
        for path in self.root.iterdir():
            if path != self.key_directory:
                os.chown(path, uid, gid)

    def start(self, timeout: float = 20) -> None:
        self.write_config()
        argv = [self._named(), "-g", "-n", "1", "-c", str(self.named_conf)]
        if self.user is not None:
            argv += ["-u", self.user]
            self._give_to_user(self.user)
        if self.sysroot is not None:
            argv = self.sysroot.wrap(argv)
        self.process = ServerProcess("named", argv, self.root / "named.log", self.root)
        self.process.start()
        self.process.wait_answering(self.host, self.port, self.zones, timeout)
