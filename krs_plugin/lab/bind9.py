"""BIND 9 (named) as a plain process: zones with ``inline-signing yes; auto-dnssec maintain;``, an
rndc control channel with its own key, everything in one directory, on loopback.

The config follows docs/servers/bind9.md (the mode made for external key managers), plus what a
throw-away instance needs: explicit pid, session and managed-keys paths, and
``dnssec-validation no`` so that named does not try to reach the root servers.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krs_plugin.lab.ports import free_port
from krs_plugin.lab.process import LabError, LabServer, ServerProcess, server_binary
from krs_plugin.lab.zones import unsigned_zone_text


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
    process: ServerProcess | None = field(default=None, init=False)

    @property
    def key_directory(self) -> Path:
        return self.root / "keys"

    @property
    def rndc_key(self) -> Path:
        return self.root / "rndc.key"

    def adapter_settings(self) -> dict[str, Any]:
        """``adapter.settings`` for krs.yaml, pointing at this instance."""
        return {
            "key_directory": str(self.key_directory),
            "server": f"{self.host}:{self.port}",
            "rndc": {
                "key_file": str(self.rndc_key),
                "server": self.host,
                "port": self.control_port,
            },
        }

    def write_config(self) -> None:
        named = server_binary("named")
        if named is None:
            raise LabError("named is not installed (apt-get install bind9 bind9-utils)")
        self.port = self.port or free_port(self.host)
        self.control_port = self.control_port or free_port(self.host)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_directory.mkdir(mode=0o700, exist_ok=True)
        if not self.rndc_key.exists():
            subprocess.run(
                ["rndc-confgen", "-a", "-c", str(self.rndc_key)],
                check=True,
                capture_output=True,
            )
        signed = set(self.zones if self.signed_zones is None else self.signed_zones)
        blocks = []
        for zone in self.zones:
            file = self.root / f"{zone}zone"
            if not file.exists():
                file.write_text(unsigned_zone_text(zone))
            dnssec = ""
            if zone in self.policy_zones:
                dnssec = "    inline-signing yes;\n    dnssec-policy default;\n"
            elif zone in signed:
                dnssec = "    inline-signing yes;\n    auto-dnssec maintain;\n"
            if dnssec:
                dnssec += f'    key-directory "{self.key_directory}";\n'
            blocks.append(f'zone "{zone}" {{\n    type primary;\n    file "{file}";\n{dnssec}}};\n')
        (self.root / "named.conf").write_text(
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
            'keys { "rndc-key"; }; };\n' + "".join(blocks)
        )

    def start(self, timeout: float = 20) -> None:
        self.write_config()
        named = server_binary("named")
        assert named is not None
        argv = [named, "-g", "-n", "1", "-c", str(self.root / "named.conf")]
        if self.user is not None:
            argv += ["-u", self.user]
            shutil.chown(self.root, self.user, self.user)
            for path in self.root.iterdir():
                if path != self.key_directory:
                    shutil.chown(path, self.user, self.user)
        self.process = ServerProcess(
            "named",
            argv,
            self.root / "named.log",
            self.root,
        )
        self.process.start()
        self.process.wait_answering(self.host, self.port, self.zones, timeout)
