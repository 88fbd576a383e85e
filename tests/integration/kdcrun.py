"""``krs-kdc`` run in this process against a state directory: exit code, stdout and stderr."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krs_plugin.crypto import HpkeKey, write_hpke_public
from krs_plugin.kdc.cli import main

CZ, ZONE, NODE = "kdc.example.", "example.com.", "ns1.edge.example."


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


class Kdc:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"

    def __call__(self, *args: str) -> Result:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--state", str(self.state), *args])
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
        return Result(code, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> Any:
        """Run with --json; the parsed output (the command must succeed)."""
        return self("--json", *args).json()

    def keys(self) -> dict[int, dict[str, Any]]:
        return {k["key_tag"]: k for k in self.ok("key", "list")}

    def generate(self, role: str, *more: str, zone: str = ZONE) -> int:
        return int(self.ok("key", "generate", "--zone", zone, "--role", role, *more)["key_tag"])

    def add_node(self, node: str = NODE, *zones: str) -> None:
        pub = self.root / f"{node}pub"
        write_hpke_public(pub, HpkeKey.generate())
        zone_args = [a for z in zones or (ZONE,) for a in ("--zone", z)]
        self.ok("node", "add", node, "--notify", "127.0.0.1:9", "--hpke-pubkey", str(pub),
                *zone_args)  # fmt: skip


def new_kdc(root: Path, *zones: str) -> Kdc:
    kdc = Kdc(root)
    kdc.ok("init", "--control-zone", CZ)
    for zone in zones or (ZONE,):
        kdc.ok("zone", "add", zone)
    return kdc
