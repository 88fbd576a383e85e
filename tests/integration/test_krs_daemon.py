"""`krs-kdc serve` and `krs run` as real processes: distribute, and the keys arrive and are
confirmed, with no command run on the node."""

from __future__ import annotations

import time
from pathlib import Path

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from daemonkit import CZ, ZONE, Deployment
from netutil import free_port

from krs_plugin.dnssec import read_bind_key_pair
from krs_plugin.kdc.distribute import dnskey_of
from krs_plugin.kdc.store import Store
from krs_plugin.protocol import notify_name


def kdc_dnskeys(deployment: Deployment, zone: str = ZONE) -> set[str]:
    store = Store(deployment.state / "kdc.db")
    try:
        return {dnskey_of(k) for k in store.keys(zone)}
    finally:
        store.close()


def node_dnskeys(deployment: Deployment) -> set[str]:
    """The DNSKEYs of the complete key pairs in the node's folder. A pair being written (its
    ``.private`` first, then its ``.key``) is not installed yet, as the KRS itself reads it."""
    files = sorted((deployment.node_dir / "keys").glob("*.private"))
    return {read_bind_key_pair(f)[0].dnskey for f in files if f.with_suffix(".key").exists()}


@pytest.mark.parametrize(
    ("backend", "notify_lost"), [("hpke", False), ("jose", False), ("hpke", True)]
)
def test_distribute_ends_with_key_files_on_the_node_and_confirmed_at_the_kdc(
    tmp_path: Path, backend: str, notify_lost: bool
) -> None:
    """With ``notify_lost`` the KDC sends NOTIFY to a port nobody listens on: the poller must
    find the distribution instead."""
    deployment = Deployment(tmp_path, backend, kdc_notify_port=free_port() if notify_lost else None)
    deployment.write_config(poll_interval=1 if notify_lost else 600)
    try:
        deployment.start_kdc()
        deployment.start_krs()
        started = time.time()
        dist_id = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(dist_id)
        assert time.time() - started < 20
        assert node_dnskeys(deployment) == kdc_dnskeys(deployment)

        # A repeated NOTIFY for an applied distribution is answered but fetches nothing.
        query = dns.message.make_query(notify_name(dist_id, CZ), dns.rdatatype.SOA)
        query.set_opcode(dns.opcode.NOTIFY)
        reply = dns.query.udp(query, "127.0.0.1", port=deployment.notify_port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR  # loopback is allowed here
        assert [s["outcome"] for s in deployment.status()] == ["applied"]
    finally:
        deployment.close()
