"""Knot DNS (knotd) as a plain process: zones signed under a ``manual: on`` policy, a control
socket, a KASP database, everything in one directory, on loopback.

The config follows docs/servers/knot.md: signing on, keys only from outside (``manual: on``), and
``zonefile-sync: -1`` so Knot never writes signatures back into the unsigned source file. A zone
with signing on and no keys yet does not load (Knot answers SERVFAIL for it until the first keys
arrive), so ``start()`` waits for the control socket, and for the zones only when asked.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krs_lab.ports import free_port
from krs_lab.process import LabError, LabServer, ServerProcess, server_binary
from krs_lab.zones import unsigned_zone_text


@dataclass
class KnotLab(LabServer):
    """A knotd instance in ``root``; ``start()`` writes everything and waits for its socket."""

    root: Path
    zones: Sequence[str]
    host: str = "127.0.0.1"
    port: int = 0
    automatic_zones: Sequence[str] = ()  # zones under a policy Knot runs itself (refused)
    unsigned_zones: Sequence[str] = ()  # zones served with dnssec-signing off
    user: str | None = None  # "knot" to run as knot:knot, as the Debian package does
    dnskey_ttl: int | None = None  # the manual policy's dnskey-ttl (None: Knot's, the SOA TTL)
    cds_cdnskey_publish: str | None = None  # the manual policy's (None: Knot's, rollover)
    process: ServerProcess | None = field(default=None, init=False)

    @property
    def config(self) -> Path:
        return self.root / "knot.conf"

    @property
    def socket(self) -> Path:
        return self.root / "run" / "knot.sock"

    @property
    def kasp_db(self) -> Path:
        return self.root / "db" / "keys"

    def adapter_settings(self) -> dict[str, Any]:
        """``adapter.settings`` for krs.yaml, pointing at this instance."""
        return {
            "config": str(self.config),
            "server": f"{self.host}:{self.port}",
        }

    def write_config(self) -> None:
        if server_binary("knotd") is None:
            raise LabError("knotd is not installed (apt-get install knot knot-dnsutils)")
        self.port = self.port or free_port(self.host)
        for directory in (self.root, self.root / "run", self.root / "db", self.root / "zones"):
            directory.mkdir(parents=True, exist_ok=True)
        zones = []
        for zone in self.zones:
            file = self.root / "zones" / f"{zone}zone"
            if not file.exists():
                file.write_text(unsigned_zone_text(zone))
            signing = "off" if zone in self.unsigned_zones else "on"
            policy = "automatic" if zone in self.automatic_zones else "manual"
            zones.append(
                f"  - domain: {zone}\n    dnssec-signing: {signing}\n    dnssec-policy: {policy}\n"
            )
        user = f"    user: {self.user}:{self.user}\n" if self.user else ""
        # Knot serves the DNSKEY RRset with its policy's dnskey-ttl, not the key's TTL
        # (docs/servers/knot.md, section 1).
        dnskey_ttl = "" if self.dnskey_ttl is None else f"    dnskey-ttl: {self.dnskey_ttl}\n"
        if self.cds_cdnskey_publish is not None:
            dnskey_ttl += f"    cds-cdnskey-publish: {self.cds_cdnskey_publish}\n"
        self.config.write_text(
            "server:\n"
            f'    rundir: "{self.root}/run"\n'
            f'    pidfile: "{self.root}/run/knot.pid"\n'
            f"    listen: {self.host}@{self.port}\n"
            f"{user}"
            "control:\n"
            f'    listen: "{self.socket}"\n'
            "log:\n"
            "  - target: stderr\n"
            "    any: info\n"
            "database:\n"
            f'    storage: "{self.root}/db"\n'
            "policy:\n"
            "  - id: manual\n"
            "    manual: on\n"
            f"{dnskey_ttl}"
            "  - id: automatic\n"
            "    manual: off\n"
            "template:\n"
            "  - id: default\n"
            f'    storage: "{self.root}/zones"\n'
            "    zonefile-sync: -1\n"
            "    zonefile-load: difference-no-serial\n"
            "    journal-content: all\n"
            "zone:\n" + "".join(zones)
        )

    def knotc(self, *command: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["knotc", "-c", str(self.config), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, timeout: float = 20, wait_zones: Sequence[str] = ()) -> None:
        self.write_config()
        knotd = server_binary("knotd")
        assert knotd is not None
        if self.user is not None:
            for path in (self.root, *self.root.rglob("*")):
                shutil.chown(path, self.user, self.user)
        self.process = ServerProcess(
            "knotd", [knotd, "-c", str(self.config)], self.root / "knotd.log", self.root
        )
        self.process.start()
        deadline = time.monotonic() + timeout
        while self.knotc("status", timeout=5).returncode != 0:
            if not self.process.running:
                raise LabError(f"knotd exited: {self.process.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise LabError(f"knotd's control socket did not answer: {self.process.tail()}")
            time.sleep(0.05)
        self.process.wait_answering(
            self.host, self.port, wait_zones, max(0.1, deadline - time.monotonic())
        )
