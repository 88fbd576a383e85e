"""`krs-kdc serve` and `krs run` as real processes: distribute, and the keys arrive and are
confirmed, with no command run on the node."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from netutil import free_port

from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    write_hpke_private,
    write_hpke_public,
    write_jose_private,
    write_jose_public,
)
from krs_plugin.dnssec import read_bind_key_pair
from krs_plugin.kdc.distribute import key_of
from krs_plugin.kdc.store import Store
from krs_plugin.protocol import notify_name

BIN = Path(sys.executable).parent
CZ, ZONE = "kdc.example.", "example.com."


def run(*args: str) -> str:
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("backend", "notify_lost"), [("hpke", False), ("jose", False), ("hpke", True)]
)
def test_distribute_ends_with_key_files_on_the_node_and_confirmed_at_the_kdc(
    tmp_path: Path, backend: str, notify_lost: bool
) -> None:
    """With ``notify_lost`` the KDC sends NOTIFY to a port nobody listens on: the poller must
    find the distribution instead."""
    state, node_dir = tmp_path / "kdc", tmp_path / "node"
    (node_dir / "keys").mkdir(parents=True)
    kdc_port, notify_port = free_port(), free_port()
    kdc_notify_port = free_port() if notify_lost else notify_port
    run("krs-kdc", "--state", str(state), "init", "--control-zone", CZ)
    run("krs-kdc", "--state", str(state), "zone", "add", ZONE)
    run("krs-kdc", "--state", str(state), "key", "generate", "--zone", ZONE, "--role", "KSK")
    run("krs-kdc", "--state", str(state), "key", "generate", "--zone", ZONE, "--role", "ZSK")
    if backend == "hpke":
        key = HpkeKey.generate()
        write_hpke_private(node_dir / "node.key", key)
        write_hpke_public(node_dir / "node.pub", key)
    else:
        jkey = JoseKey.generate()
        write_jose_private(node_dir / "node.key", jkey)
        write_jose_public(node_dir / "node.pub", jkey)
    signer = JoseKey.generate()
    write_jose_private(node_dir / "signing.key", signer, use="sig")
    write_jose_public(node_dir / "signing.pub", signer, use="sig")
    run(
        "krs-kdc",
        "--state",
        str(state),
        "node",
        "add",
        "ns1.edge.example.",
        "--notify",
        f"127.0.0.1:{kdc_notify_port}",
        f"--{backend}-pubkey",
        str(node_dir / "node.pub"),
        "--signing-pubkey",
        str(node_dir / "signing.pub"),
        "--zone",
        ZONE,
    )
    config = node_dir / "krs.yaml"
    config.write_text(
        json.dumps(
            {
                "node_id": "ns1.edge.example.",
                "keys": {
                    backend: str(node_dir / "node.key"),
                    "signing": str(node_dir / "signing.key"),
                },
                "kdc": {"verification_key": str(state / "keys" / "kdc.signing.pubkey")},
                "control_zone": CZ,
                "control_servers": [f"127.0.0.1:{kdc_port}"],
                "notify": {
                    "listen": [f"127.0.0.1:{notify_port}"],
                    "allowed_sources": ["127.0.0.0/8"],
                },
                "adapter": {"type": "directory", "settings": {"path": str(node_dir / "keys")}},
                "zones": [ZONE],
                "state": str(node_dir / "krs.db"),
                "poll_interval": 1 if notify_lost else 600,
            }
        )
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = contextlib.ExitStack()
    processes = [
        subprocess.Popen(
            [
                str(BIN / "krs-kdc"),
                "--state",
                str(state),
                "serve",
                "--listen",
                f"127.0.0.1:{kdc_port}",
                "--notify-retry",
                "0.3",
            ],
            stdout=stack.enter_context(open(logs / "kdc.log", "w")),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [str(BIN / "krs"), "run", "-c", str(config)],
            stdout=stack.enter_context(open(logs / "krs.log", "w")),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        ),
    ]
    try:
        wait_until(
            lambda: "listening for NOTIFY" in (logs / "krs.log").read_text(), 20, "krs run to start"
        )
        started = time.time()
        dist_id = json.loads(
            run("krs-kdc", "--state", str(state), "--json", "distribute", "--zone", ZONE)
        )["distribution_id"]

        def confirmed() -> bool:
            rows = json.loads(
                run("krs-kdc", "--state", str(state), "--json", "distribution", "list")
            )
            return [r["status"] for r in rows] == ["confirmed"]

        wait_until(
            confirmed,
            30,
            f"distribution {dist_id} to be confirmed:\n"
            + (logs / "krs.log").read_text()
            + (logs / "kdc.log").read_text(),
        )
        elapsed = time.time() - started
        store = Store(state / "kdc.db")
        expected = {key_of(k).dnskey for k in store.keys(ZONE)}
        store.close()
        files = sorted((node_dir / "keys").glob("*.private"))
        assert {read_bind_key_pair(f)[0].dnskey for f in files} == expected
        assert elapsed < 20

        # A repeated NOTIFY for an applied distribution is answered but fetches nothing.
        query = dns.message.make_query(notify_name(dist_id, CZ), dns.rdatatype.SOA)
        query.set_opcode(dns.opcode.NOTIFY)
        reply = dns.query.udp(query, "127.0.0.1", port=notify_port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR  # loopback is allowed here
        status = json.loads(run("krs", "status", "-c", str(config), "--json"))
        assert [s["outcome"] for s in status] == ["applied"]  # the repeat fetched nothing new
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=10)
        stack.close()
