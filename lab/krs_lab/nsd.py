"""NSD as a plain process: zones served from signed files that the nsd adapter writes, a control
channel on a unix socket (no TLS keys to make), everything in one directory, on loopback.

The layout follows docs/servers/nsd.md: for each zone an unsigned file the operator edits
(``unsigned/<zone>zone``) and the signed file NSD serves (``signed/<zone>zone.signed``). NSD has no
zone to serve before the first keys arrive, so ``start()`` puts the unsigned text in the served
file until then (NSD serves it unsigned), and waits until every zone answers.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krs_lab.ports import free_port
from krs_lab.process import LabError, LabServer, ServerProcess, server_binary
from krs_lab.zones import unsigned_zone_text


@dataclass
class NsdLab(LabServer):
    """An nsd instance in ``root``; ``start()`` writes everything and waits until it answers."""

    root: Path
    zones: Sequence[str]
    host: str = "127.0.0.1"
    port: int = 0
    configured_zones: Sequence[str] | None = None  # default: all of ``zones`` are in nsd.conf
    process: ServerProcess | None = field(default=None, init=False)

    @property
    def config(self) -> Path:
        return self.root / "nsd.conf"

    @property
    def socket(self) -> Path:
        return self.root / "nsd.ctl"

    def unsigned_file(self, zone: str) -> Path:
        return self.root / "unsigned" / f"{zone}zone"

    def signed_file(self, zone: str) -> Path:
        return self.root / "signed" / f"{zone}zone.signed"

    def adapter_settings(self) -> dict[str, Any]:
        """``adapter.settings`` for krs.yaml, pointing at this instance."""
        return {
            "config": str(self.config),
            "server": f"{self.host}:{self.port}",
            "key_directory": str(self.root / "keys"),
            "unsigned_file": str(self.root / "unsigned" / "{zone}zone"),
            "signed_file": str(self.root / "signed" / "{zone}zone.signed"),
        }

    def write_config(self) -> None:
        if server_binary("nsd") is None:
            raise LabError("nsd is not installed (apt-get install nsd)")
        self.port = self.port or free_port(self.host)
        for folder in ("unsigned", "signed", "keys"):
            (self.root / folder).mkdir(parents=True, exist_ok=True, mode=0o700)
        configured = self.zones if self.configured_zones is None else self.configured_zones
        blocks = []
        for zone in self.zones:
            unsigned = self.unsigned_file(zone)
            if not unsigned.exists():
                unsigned.write_text(unsigned_zone_text(zone))
            signed = self.signed_file(zone)
            if not signed.exists():
                shutil.copyfile(unsigned, signed)
            if zone in configured:
                blocks.append(f'zone:\n    name: "{zone}"\n    zonefile: "{signed}"\n')
        self.config.write_text(
            "server:\n"
            f"    ip-address: {self.host}@{self.port}\n"
            "    do-ip6: no\n"
            '    username: ""\n'
            '    chroot: ""\n'
            f'    zonesdir: "{self.root}"\n'
            '    database: ""\n'
            f'    zonelistfile: "{self.root}/zone.list"\n'
            f'    pidfile: "{self.root}/nsd.pid"\n'
            f'    xfrdfile: "{self.root}/xfrd.state"\n'
            f'    xfrdir: "{self.root}"\n'
            "    server-count: 1\n"
            "    verbosity: 2\n"
            "remote-control:\n"
            "    control-enable: yes\n"
            f'    control-interface: "{self.socket}"\n' + "".join(blocks)
        )

    def control(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsd-control", "-c", str(self.config), *command],
            capture_output=True,
            text=True,
            timeout=10,
        )

    def start(self, timeout: float = 20) -> None:
        self.write_config()
        nsd = server_binary("nsd")
        assert nsd is not None
        self.process = ServerProcess(
            "nsd", [nsd, "-d", "-c", str(self.config)], self.root / "nsd.log", self.root
        )
        self.process.start()
        configured = self.zones if self.configured_zones is None else self.configured_zones
        self.process.wait_answering(self.host, self.port, configured, timeout)
