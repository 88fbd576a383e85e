"""Issue 21, item 2: the KDC hears about a node's failure. A node that refuses a distribution, or
whose server does not take the keys, sends a signed failure report (docs/protocol.md section 6);
the KDC shows ``failed`` with the stage and the node's reason instead of ``pending`` and then
``expired``, a later success replaces the failure, and ``node show`` lists what the node
confirmed. Real ``krs-kdc serve`` and ``krs run`` on loopback."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest
from daemonkit import CZ, NODE, ZONE, Deployment, wait_until

from krs_plugin.confirmation import confirmation_message, failure_report
from krs_plugin.crypto import JoseKey, load_jose_key

pytestmark = pytest.mark.integration

OTHER = "example.net."


def show(deployment: Deployment, dist_id: str) -> dict[str, Any]:
    (row,) = json.loads(deployment.kdc("--json", "distribution", "show", dist_id))
    return dict(row)


def node_show(deployment: Deployment) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(deployment.kdc("--json", "node", "show", NODE))
    return data


def wait_status(deployment: Deployment, dist_id: str, status: str, timeout: float = 30) -> None:
    wait_until(
        lambda: show(deployment, dist_id)["status"] == status,
        timeout,
        lambda: f"{dist_id} {status}:\n{deployment.all_logs()}",
    )


def kdc_tags(deployment: Deployment, zone: str) -> dict[int, str]:
    keys = json.loads(deployment.kdc("--json", "key", "list", "--zone", zone))
    return {int(k["key_tag"]): str(k["role"]) for k in keys}


def test_a_node_that_refuses_a_distribution_shows_failed_with_stage_and_reason(
    tmp_path: Path,
) -> None:
    deployment = Deployment(tmp_path, zones=(ZONE, OTHER))
    deployment.write_config(zones=[ZONE])  # the KDC thinks it serves OTHER too; krs.yaml not
    try:
        deployment.start_kdc()
        deployment.start_krs()
        dist_id = deployment.distribute("--zone", OTHER, "--ttl", "8")
        wait_status(deployment, dist_id, "failed")
        row = show(deployment, dist_id)
        assert row["stage"] == "policy"
        assert "distribution names zone(s) not served by this node: example.net." in row["error"]
        report = json.loads(row["report"])
        assert (report["outcome"], report["stage"]) == ("rejected", "policy")
        named = {int(k["key_id"]) for k in report["failed_keys"]}
        assert named == set(kdc_tags(deployment, OTHER))
        assert (
            f"distribution {dist_id} for {NODE} failed (rejected at policy): distribution names "
            "zone(s) not served by this node" in deployment.log("kdc")
        )

        # Where an operator looks: distribution list and show, node list and show.
        listed = deployment.kdc("distribution", "list")
        assert f"{dist_id} {NODE}" in listed and "failed" in listed and "at policy:" in listed
        shown = deployment.kdc("distribution", "show", dist_id)
        assert "at policy (the node's report)" in shown and "not served by this node" in shown
        assert " failed  " in deployment.kdc("node", "list")
        node = node_show(deployment)
        assert node["status"] == "failed" and node["last_contact"] is not None
        assert (node["last_failure"]["distribution_id"], node["last_failure"]["stage"]) == (
            dist_id,
            "policy",
        )
        zones = {z["zone"]: z for z in node["zones"]}
        assert zones[OTHER]["distribution"]["status"] == "failed"
        assert zones[ZONE]["distribution"] is None and zones[ZONE]["keys"] == []
        assert "last failure" in deployment.kdc("node", "show", NODE)

        # Past its ttl it stays failed: expired means never heard of, and the KDC has.
        time.sleep(max(0.0, row["expires_at"] + 1.5 - time.time()))
        assert show(deployment, dist_id)["status"] == "failed"
    finally:
        deployment.close()


def test_a_failed_apply_shows_failed_and_the_later_success_replaces_it(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    deployment.write_config(poll_interval=1)  # a failed apply is tried again at each poll
    keys = deployment.node_dir / "keys"
    try:
        deployment.start_kdc()
        deployment.start_krs()
        shutil.rmtree(keys)  # the directory adapter's key directory is gone: apply fails
        dist_id = deployment.distribute("--zone", ZONE)
        wait_status(deployment, dist_id, "failed")
        row = show(deployment, dist_id)
        assert row["stage"] == "apply" and "does not exist" in row["error"]
        assert json.loads(row["report"])["outcome"] == "failed"
        node = node_show(deployment)
        assert node["status"] == "failed"
        assert node["zones"][0]["keys"] == []  # nothing confirmed yet

        # Tried again at every poll and failing the same way: the KDC is told once.
        time.sleep(3)
        assert deployment.log("kdc").count(f"distribution {dist_id} for {NODE} failed") == 1

        keys.mkdir(mode=0o700)  # the operator fixes it; the next poll applies it
        deployment.wait_confirmed(dist_id)
        row = show(deployment, dist_id)
        assert (row["status"], row["stage"], row["error"]) == ("confirmed", None, None)

        node = node_show(deployment)
        assert node["status"] == "ok" and node["last_failure"] is None
        (zone,) = node["zones"]
        assert zone["distribution"]["distribution_id"] == dist_id
        held = {k["key_tag"]: (k["role"], k["algorithm"], k["deleted"]) for k in zone["keys"]}
        assert held == {tag: (role, 13, False) for tag, role in kdc_tags(deployment, ZONE).items()}
        text = deployment.kdc("node", "show", NODE)
        assert f"node {NODE}: ok" in text and "holds   KSK alg 13 tag" in text
        assert " ok      " in deployment.kdc("node", "list")
    finally:
        deployment.close()


def send(deployment: Deployment, dist_id: str, report: dict[str, object], key: JoseKey) -> int:
    message = confirmation_message(dist_id, CZ, report, key, node_id=NODE)
    reply = dns.query.udp(message, "127.0.0.1", port=deployment.kdc_port, timeout=5)
    return int(reply.rcode())


def test_a_forged_or_unbound_failure_report_is_refused(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    try:
        deployment.start_kdc()
        dist_id = deployment.distribute("--zone", ZONE)
        tags = list(kdc_tags(deployment, ZONE))
        report = failure_report(NODE, "failed", "apply", "forged", [(ZONE, t) for t in tags])
        node_key = load_jose_key(deployment.node_dir / "signing.key")

        assert send(deployment, dist_id, report, JoseKey.generate()) == dns.rcode.REFUSED
        unsent = failure_report(NODE, "failed", "apply", "forged", [(ZONE, 1)])
        assert send(deployment, dist_id, unsent, node_key) == dns.rcode.REFUSED
        assert send(deployment, "c0ffee01", report, node_key) == dns.rcode.REFUSED
        row = show(deployment, dist_id)
        assert (row["status"], row["stage"], row["error"]) == ("pending", None, None)
        log = deployment.log("kdc")
        assert "rejected: confirmation signature" in log
        assert "which distribution" in log and "did not send" in log

        # The node's own key, bound to this distribution: taken; the same bytes again are not.
        message = confirmation_message(dist_id, CZ, report, node_key, node_id=NODE)
        reply = dns.query.udp(message, "127.0.0.1", port=deployment.kdc_port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR
        again = dns.message.from_wire(message.to_wire())
        reply = dns.query.udp(again, "127.0.0.1", port=deployment.kdc_port, timeout=5)
        assert reply.rcode() == dns.rcode.REFUSED
        assert show(deployment, dist_id)["status"] == "failed"
    finally:
        deployment.close()
