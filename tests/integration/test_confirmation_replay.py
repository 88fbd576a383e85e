"""Issue 20, finding 1: a confirmation captured for one distribution and sent again, from another
address, for a later one while the node was stopped must not confirm the later one
(docs/protocol.md section 6). Real ``krs-kdc serve`` and ``krs run`` on loopback."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from daemonkit import CZ, ZONE, Deployment

from krs_plugin.protocol import CHUNK_TYPE, notify_name
from krs_plugin.protocol.edns import CONTENT_KEY_STATUS, ChunkOption

pytestmark = pytest.mark.integration

ATTACKER = "127.0.0.2"  # loopback, but not the node's address (127.0.0.1)


def captured_report(deployment: Deployment, dist_id: str) -> dict[str, object]:
    """The report the KRS sent for ``dist_id``: option 65004's JSON as the KDC received and
    recorded it, signature and all (what anyone on the path could have kept)."""
    (row,) = json.loads(deployment.kdc("--json", "distribution", "show", dist_id))
    report = json.loads(row["report"])
    assert isinstance(report, dict) and "signature" in report
    return report


def replay(deployment: Deployment, dist_id: str, report: dict[str, object]) -> int:
    """A confirmation NOTIFY for ``dist_id`` carrying ``report`` unchanged, sent from ATTACKER."""
    message = dns.message.make_query(
        notify_name(dist_id, CZ), dns.rdatatype.RdataType.make(CHUNK_TYPE)
    )
    message.set_opcode(dns.opcode.NOTIFY)
    message.flags = (message.flags | dns.flags.AA) & ~dns.flags.RD
    body = json.dumps(report, separators=(",", ":")).encode()
    message.use_edns(0, 0, 4096, options=[ChunkOption(CONTENT_KEY_STATUS, body)])
    reply = dns.query.udp(
        message, "127.0.0.1", port=deployment.kdc_port, source=ATTACKER, timeout=5
    )
    return int(reply.rcode())


def status(deployment: Deployment, dist_id: str) -> str:
    (row,) = [r for r in deployment.distributions() if r["id"] == dist_id]
    return str(row["status"])


def test_a_captured_confirmation_does_not_confirm_a_later_distribution(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    try:
        deployment.start_kdc()
        deployment.start_krs()
        first = deployment.distribute("--zone", ZONE)
        deployment.wait_confirmed(first)
        captured = captured_report(deployment, first)

        # The node stops; the KDC makes a new ZSK and distributes it: the node never gets it.
        deployment.stop("krs")
        deployment.kdc("key", "generate", "--zone", ZONE, "--role", "ZSK")
        second = deployment.distribute("--zone", ZONE)

        rcode = replay(deployment, second, captured)
        assert (rcode, status(deployment, second)) == (dns.rcode.REFUSED, "pending")
        log = deployment.log("kdc")
        assert f"confirmation for {second} from node" in log
        assert f"rejected: the report is for distribution '{first}'" in log

        # Sent again for its own distribution, it is a replay too; the first stays confirmed.
        assert replay(deployment, first, captured) == dns.rcode.REFUSED
        assert status(deployment, first) == "confirmed"

        # The node itself, running again, fetches the second distribution and confirms it.
        deployment.start_krs()
        deployment.wait_confirmed(second, timeout=90)
        tags = {k["key_tag"] for k in json.loads(deployment.kdc("--json", "key", "list"))}
        installed = {r["key_tag"] for r in installed_keys(deployment)}
        assert tags <= installed
    finally:
        deployment.close()


def installed_keys(deployment: Deployment) -> list[dict[str, object]]:
    """The keys ``krs run`` recorded as installed (its state database)."""
    with sqlite3.connect(deployment.node_dir / "krs.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT zone, key_tag FROM installed_keys")]
