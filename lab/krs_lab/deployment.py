"""A KDC and a node on loopback as real processes (``krs-kdc serve``, ``krs run``): KDC state,
node keys, krs.yaml, start, distribute, wait, stop. The main job (``krs-demo``) and the tests that
need the whole path use it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from krs_lab.nodekeys import write_node_keys
from krs_lab.ports import free_port
from krs_lab.process import LabError
from krs_lab.softhsm import lab_init_options

BIN = Path(sys.executable).parent
CZ, ZONE, NODE = "kdc.example.", "example.com.", "ns1.edge.example."


def run(*args: str) -> str:
    """One ``krs``/``krs-kdc`` command from this environment; LabError with its stderr."""
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise LabError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]
) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise LabError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.1)


class Deployment:
    """One KDC state with a zone (KSK + ZSK) and one node that serves it."""

    def __init__(
        self,
        root: Path,
        backend: str = "hpke",
        *,
        zones: tuple[str, ...] = (ZONE,),
        kdc_notify_port: int | None = None,
        adapter: dict[str, Any] | None = None,
        generate_keys: bool = True,
    ) -> None:
        self.root = root
        self.state, self.node_dir, self.logs = root / "kdc", root / "node", root / "logs"
        (self.node_dir / "keys").mkdir(parents=True)
        self.logs.mkdir()
        self.kdc_port, self.notify_port = free_port(), free_port()
        self.zones = zones
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.stack = contextlib.ExitStack()
        self.kdc("init", "--control-zone", CZ, *lab_init_options(self.state))
        for zone in zones:
            self.kdc("zone", "add", zone)
            if generate_keys:
                self.kdc("key", "generate", "--zone", zone, "--role", "KSK")
                self.kdc("key", "generate", "--zone", zone, "--role", "ZSK")
        node_keys = write_node_keys(self.node_dir, backend)
        zone_args = [a for z in zones for a in ("--zone", z)]
        self.kdc(
            "node", "add", NODE, "--notify", f"127.0.0.1:{kdc_notify_port or self.notify_port}",
            *node_keys, *zone_args,
        )  # fmt: skip
        self.config_path = self.node_dir / "krs.yaml"
        self.config: dict[str, Any] = {
            "node_id": NODE,
            "keys": {
                backend: str(self.node_dir / "node.key"),
                "signing": str(self.node_dir / "signing.key"),
            },
            "kdc": {"verification_key": str(self.state / "keys" / "kdc.signing.pubkey")},
            "control_zone": CZ,
            "control_servers": [f"127.0.0.1:{self.kdc_port}"],
            "notify": {
                "listen": [f"127.0.0.1:{self.notify_port}"],
                "allowed_sources": ["127.0.0.0/8"],
            },
            "adapter": adapter
            or {"type": "directory", "settings": {"path": str(self.node_dir / "keys")}},
            "zones": list(zones),
            "state": str(self.node_dir / "krs.db"),
            "poll_interval": 600,
        }

    # --- commands -----------------------------------------------------------------------------

    def kdc(self, *args: str) -> str:
        return run("krs-kdc", "--state", str(self.state), *args)

    def write_config(self, **changes: Any) -> None:
        """Write krs.yaml the way editors do: a new file renamed over the old one."""
        self.config.update(changes)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config))
        os.replace(tmp, self.config_path)

    def distribute(self, *args: str) -> str:
        out = self.kdc("--json", "distribute", *args)
        return str(json.loads(out)["distribution_id"])

    def distributions(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(self.kdc("--json", "distribution", "list"))
        return rows

    def status(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(
            run("krs", "status", "-c", str(self.config_path), "--json")
        )
        return rows

    # --- processes ----------------------------------------------------------------------------

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.stack.enter_context(open(self.logs / f"{name}.log", "ab"))  # noqa: SIM115
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.processes[name] = process
        return process

    def start_kdc(
        self, name: str = "kdc", port: int | None = None, serve_args: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """``krs-kdc serve`` (with ``serve_args``), returned once it listens (its "krs-kdc
        serving" line)."""
        log = self.logs / f"{name}.log"
        seen = log.read_text().count("krs-kdc serving") if log.exists() else 0
        process = self.start(
            name,
            [
                str(BIN / "krs-kdc"),
                "--state",
                str(self.state),
                "serve",
                "--listen",
                f"127.0.0.1:{port or self.kdc_port}",
                "--notify-retry",
                "0.3",
                *serve_args,
            ],
        )
        wait_until(
            lambda: log.read_text().count("krs-kdc serving") > seen or process.poll() is not None,
            20,
            f"krs-kdc serve ({log})",
        )
        if process.poll() is not None:
            raise LabError(f"krs-kdc serve exited ({process.returncode}): see {log}")
        return process

    def start_krs(
        self, name: str = "krs", env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        if not self.config_path.exists():
            self.write_config()
        log = self.logs / f"{name}.log"
        seen = log.read_text().count("listening for NOTIFY") if log.exists() else 0
        process = self.start(name, [str(BIN / "krs"), "run", "-c", str(self.config_path)], env)
        wait_until(
            lambda: (
                log.read_text().count("listening for NOTIFY") > seen or process.poll() is not None
            ),
            20,
            lambda: f"krs run to start:\n{log.read_text()}",
        )
        if process.poll() is not None:
            raise LabError(f"krs run exited with {process.returncode}:\n{log.read_text()}")
        return process

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def all_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(self.logs.iterdir()))

    def wait_confirmed(self, dist_id: str, timeout: float = 30) -> None:
        def confirmed() -> bool:
            return any(
                r["id"] == dist_id and r["status"] == "confirmed" for r in self.distributions()
            )

        wait_until(confirmed, timeout, lambda: f"{dist_id} confirmed:\n{self.all_logs()}")

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        for name in list(self.processes):
            self.stop(name)
        self.stack.close()
