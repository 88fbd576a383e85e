"""The KDC as a hidden primary (issue 24, docs/scale.md): real BIND, Knot and NSD secondaries
transfer the control zone from `krs-kdc serve` with TSIG, and a `krs run` node whose control
servers are those secondaries only fetches, applies and confirms (to the KDC's address). With the
KDC stopped after publication, the node still finds and applies what was published; its
confirmation waits and reaches the KDC once it is back. One secondary down: the next one serves.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from krs_lab.deployment import CZ, Deployment, wait_until
from krs_lab.ports import free_port
from krs_lab.process import server_binary
from krs_lab.secondaries import Secondary, TransferKey, UpdatedPrimary, check_config

BINARIES = {"bind9": "named", "knot": "knotd", "nsd": "nsd"}


def installed(kind: str) -> bool:
    return server_binary(BINARIES[kind]) is not None


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path / "deploy")
    try:
        yield deployment
    finally:
        deployment.close()


def primary_args(deployment: Deployment, secondaries: list[Secondary], key_file: Path) -> list[str]:
    args = ["--tsig-key", str(key_file)]
    for secondary in secondaries:
        args += ["--also-notify", secondary.address]
    return args


def start_all(
    deployment: Deployment, tmp_path: Path, kinds: tuple[str, ...]
) -> tuple[list[Secondary], list[str]]:
    """The KDC with ``kinds`` as its secondaries, each having transferred the first version;
    krs.yaml names only the secondaries as control servers, the KDC as ``kdc.address``."""
    for kind in kinds:
        if not installed(kind):
            pytest.fail(f"{BINARIES[kind]} is not installed: ./run setup installs it")
    key = TransferKey.generate()
    key_file = key.write(tmp_path / "transfer.key")
    kdc_address = ("127.0.0.1", deployment.kdc_port)
    secondaries = [Secondary(kind, tmp_path / kind, CZ, kdc_address, key) for kind in kinds]
    for secondary in secondaries:  # ports first: the KDC NOTIFYs them from its start
        secondary.port = free_port()
    args = primary_args(deployment, secondaries, key_file)
    deployment.start_kdc(serve_args=args)
    for secondary in secondaries:
        secondary.start()
        deployment.stack.callback(secondary.stop)
    deployment.write_config(
        control_servers=[s.address for s in secondaries],
        kdc={**deployment.config["kdc"], "address": f"127.0.0.1:{deployment.kdc_port}"},
    )
    return secondaries, args


def kdc_serial(deployment: Deployment) -> int:
    import dns.message
    import dns.query
    import dns.rdatatype

    reply = dns.query.udp(
        dns.message.make_query(CZ, dns.rdatatype.SOA), "127.0.0.1", port=deployment.kdc_port,
        timeout=5,
    )  # fmt: skip
    return int(reply.answer[0][0].serial)


@pytest.mark.parametrize("kind", ["bind9", "knot", "nsd"])
def test_node_fetches_through_a_secondary_only(
    deployment: Deployment, tmp_path: Path, kind: str
) -> None:
    (secondary,), _ = start_all(deployment, tmp_path, (kind,))
    problem = check_config(secondary)
    assert problem is None or problem.returncode == 0, problem.stdout + problem.stderr
    deployment.start_krs()
    dist_id = deployment.distribute("--zone", "example.com.")
    deployment.wait_confirmed(dist_id, timeout=60)
    # the secondary serves the version with it, and that is where the node fetched it from
    assert secondary.serial() == kdc_serial(deployment)
    krs_log = deployment.log("krs")
    assert f"distribution {dist_id} applied" in krs_log
    [row] = [r for r in deployment.status() if r["id"] == dist_id]
    assert row["outcome"] == "applied"
    keys = {p.name for p in (deployment.node_dir / "keys").iterdir()}
    assert any(name.startswith("Kexample.com.") for name in keys), keys


def test_kdc_stopped_after_publication_nodes_still_apply(
    deployment: Deployment, tmp_path: Path
) -> None:
    secondaries, args = start_all(deployment, tmp_path, ("knot", "nsd"))
    before = kdc_serial(deployment)
    dist_id = deployment.distribute("--zone", "example.com.")
    wait_until(lambda: kdc_serial(deployment) > before, 10, "a new serial")
    serial = kdc_serial(deployment)
    wait_until(
        lambda: all(s.serial() == serial for s in secondaries),
        30,
        lambda: "\n".join(s.tail() for s in secondaries),
    )
    deployment.stop("kdc")
    # the node starts with the KDC gone: its poller finds the id at the secondaries
    deployment.start_krs()
    wait_until(
        lambda: any(r["id"] == dist_id and r["outcome"] == "applied" for r in deployment.status()),
        60,
        lambda: deployment.all_logs(),
    )
    assert next(r for r in deployment.distributions() if r["id"] == dist_id)["status"] == "pending"
    # the KDC back: the confirmation that waited reaches it
    deployment.start_kdc(serve_args=args)
    deployment.wait_confirmed(dist_id, timeout=90)


def test_failover_between_secondaries(deployment: Deployment, tmp_path: Path) -> None:
    secondaries, _ = start_all(deployment, tmp_path, ("bind9", "knot"))
    secondaries[0].stop()  # the first control server is down
    deployment.start_krs()
    dist_id = deployment.distribute("--zone", "example.com.")
    deployment.wait_confirmed(dist_id, timeout=90)
    assert secondaries[1].serial() == kdc_serial(deployment)
    assert deployment.config["control_servers"][0] == secondaries[0].address


def chunk_owners(primary: UpdatedPrimary, key: TransferKey) -> set[str]:
    """Owners of the CHUNK records the primary serves, read by AXFR."""
    import dns.query
    import dns.tsigkeyring
    import dns.xfr
    import dns.zone

    zone = dns.zone.Zone(CZ)
    keyring = dns.tsigkeyring.from_text({key.name: ("hmac-sha256", key.secret)})
    query, _ = dns.xfr.make_query(zone, serial=None, keyring=keyring)
    dns.query.inbound_xfr(primary.host, zone, query, port=primary.port, timeout=10)
    return {
        name.to_text()
        for name, node in zone.nodes.items()
        if any(r.rdtype == 65288 for r in node.rdatasets)
    }


def test_kdc_publishes_into_an_existing_primary_by_update(
    deployment: Deployment, tmp_path: Path
) -> None:
    """krs-kdc serve --publish-to: a BIND primary that takes signed UPDATEs serves the zone;
    the node fetches from it only, and an expired distribution leaves it again."""
    key = TransferKey.generate()
    primary = UpdatedPrimary(tmp_path / "primary", CZ, key)
    primary.start()
    deployment.stack.callback(primary.stop)
    key_file = key.write(tmp_path / "update.key")
    deployment.start_kdc(serve_args=["--publish-to", primary.address, "--tsig-key", str(key_file)])
    deployment.write_config(
        control_servers=[primary.address],
        kdc={**deployment.config["kdc"], "address": f"127.0.0.1:{deployment.kdc_port}"},
    )
    deployment.start_krs()
    dist_id = deployment.distribute("--zone", "example.com.")
    deployment.wait_confirmed(dist_id, timeout=60)
    assert any(dist_id in owner for owner in chunk_owners(primary, key))
    short = deployment.distribute("--zone", "example.com.", "--ttl", "3")
    wait_until(
        lambda: any(short in owner for owner in chunk_owners(primary, key)), 20, primary.tail
    )
    wait_until(
        lambda: not any(short in owner for owner in chunk_owners(primary, key)),
        30,
        lambda: deployment.log("kdc") + primary.tail(),
    )
    assert "published into" in deployment.log("kdc")


def publish_large(deployment: Deployment, chunks: int, size: int) -> tuple[str, list[bytes]]:
    """A distribution of ``chunks`` records of ``size`` data bytes (random: transfers do not
    read them), stored as `krs-kdc distribute` stores one; its id and the records' wire."""
    import os
    import time

    import dns.rdataclass
    import dns.rdatatype

    from krs_plugin.kdc.store import Store
    from krs_plugin.protocol import CHUNK, CHUNK_TYPE

    rdtype = dns.rdatatype.RdataType.make(CHUNK_TYPE)
    records = [
        CHUNK(dns.rdataclass.IN, rdtype, 1, b"", i, chunks, os.urandom(size)).to_digestable()
        for i in range(chunks + 1)
    ]
    store = Store(deployment.state / "kdc.db")
    try:
        now = int(time.time())
        with store.transaction():
            dist_id, serial = store.next_distribution_id(now)
            store.add_distribution(
                dist_id, serial, "ns1.edge.example.", zone=None, content="key_operations",
                created_at=now, expires_at=now + 600, records=records,
            )  # fmt: skip
    finally:
        store.close()
    return dist_id, records


@pytest.mark.parametrize("kind", ["bind9", "knot", "nsd"])
def test_chunks_of_60000_bytes_travel_whole(
    deployment: Deployment, tmp_path: Path, kind: str
) -> None:
    """Records of the largest chunk size, several per transfer message budget, through an IXFR
    (the secondary has the first version) to a real secondary, byte for byte."""
    import dns.message
    import dns.name
    import dns.query

    from krs_plugin.protocol import chunk_name, manifest_name

    (secondary,), _ = start_all(deployment, tmp_path, (kind,))
    before = kdc_serial(deployment)
    dist_id, records = publish_large(deployment, chunks=5, size=60000)
    wait_until(lambda: kdc_serial(deployment) > before, 10, "a new serial")
    secondary.wait_serial(kdc_serial(deployment), timeout=30)
    node, origin = dns.name.from_text("ns1.edge.example."), dns.name.from_text(CZ)
    for index, wire in enumerate(records):
        name = (
            manifest_name(node, dist_id, origin)
            if index == 0
            else chunk_name(index, node, dist_id, origin)
        )
        reply = ask_tcp(secondary, name)
        assert reply.answer, f"{kind} has no {name}"
        assert reply.answer[0][0].to_digestable() == wire
    assert "IXFR" in deployment.log("kdc") or "AXFR" in deployment.log("kdc")


def test_kdc_db_restored_behind_its_secondary_still_reaches_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    """kdc.db restored from a backup whose serial is older than the one a secondary serves: at
    start serve asks its secondaries and goes on above their serial, or they would keep their
    copy as the newer one and never take another change (RFC 1982)."""
    import sqlite3

    state = deployment.state / "kdc.db"
    with sqlite3.connect(state) as db:  # the zone's serial well ahead of the clock
        db.execute("INSERT OR REPLACE INTO meta VALUES ('control_zone_serial', ?)", (str(
            kdc_now() + 100_000),))  # fmt: skip
    (secondary,), args = start_all(deployment, tmp_path, ("knot",))
    ahead = secondary.wait_serial(None)
    assert ahead > kdc_now() + 50_000
    deployment.stop("kdc")
    with sqlite3.connect(state) as db:  # the restored backup: an older serial, another digest
        db.execute("UPDATE meta SET value = '1000' WHERE key = 'control_zone_serial'")
        db.execute("UPDATE meta SET value = 'x' WHERE key = 'control_zone_digest'")
    deployment.start_kdc(serve_args=args)
    deployment.start_krs()
    dist_id = deployment.distribute("--zone", "example.com.")
    deployment.wait_confirmed(dist_id, timeout=60)
    assert secondary.serial() == kdc_serial(deployment) > ahead
    assert "ahead of kdc.db's" in deployment.log("kdc")


def kdc_now() -> int:
    import time

    return int(time.time())


def ask_tcp(secondary: Secondary, name: object) -> object:
    """One CHUNK query over TCP, asked again when the connection is reset: NSD restarts its
    server process after a transfer, and a connection open then is reset (a KRS's fetcher
    takes that as a server down and asks again the same way)."""
    import time

    import dns.message
    import dns.query

    from krs_plugin.protocol import CHUNK_TYPE

    for attempt in range(5):
        query = dns.message.make_query(name, CHUNK_TYPE)  # type: ignore[arg-type]
        query.flags = 0
        try:
            return dns.query.tcp(query, secondary.host, port=secondary.port, timeout=5)
        except ConnectionResetError:
            if attempt == 4:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")
