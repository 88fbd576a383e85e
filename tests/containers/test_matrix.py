"""The scenario table across the container matrix: the KDC (its image) distributes, the KRS
sidecar of each nameserver image installs, and the test asks the nameserver from outside, over
DNS on loopback, validating every RRSIG with dnspython.

Each scenario has its own zone on each server (``<scenario>.<server>.test.``), signed with a KSK
and a ZSK by the first distribution, which the node received right after it enrolled.
"""

from __future__ import annotations

import time

import pytest

from tests.containers.matrix import Kdc, Pair, run_checked, wait_until

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1500)]  # the first one builds


def keys_of(kdc: Kdc, zone: str, role: str) -> list[int]:
    return [
        int(k["key_tag"])
        for k in kdc("key", "list", "--zone", zone)
        if k["role"] == role and k["state"] != "removed"
    ]


def distribute(kdc: Kdc, pair: Pair, zone: str) -> None:
    kdc.wait_confirmed(kdc.distribute(zone), pair.logs)


def test_add_zsk(pair: Pair, kdc: Kdc) -> None:
    zone = f"zsk.{pair.spec.name}.test."
    (ksk,), (first,) = keys_of(kdc, zone, "KSK"), keys_of(kdc, zone, "ZSK")
    zsk = kdc.generate(zone, "ZSK")
    distribute(kdc, pair, zone)
    now = pair.served(zone)
    assert now.tags == {ksk, first, zsk}
    assert now.soa_signers == {first, zsk}
    assert now.dnskey_signers == {ksk}


def test_add_ksk(pair: Pair, kdc: Kdc) -> None:
    zone = f"ksk.{pair.spec.name}.test."
    (first,), (zsk,) = keys_of(kdc, zone, "KSK"), keys_of(kdc, zone, "ZSK")
    ksk = kdc.generate(zone, "KSK")
    distribute(kdc, pair, zone)
    now = pair.served(zone)
    assert now.tags == {first, ksk, zsk}
    assert now.dnskey_signers == {first, ksk}
    assert now.soa_signers == {zsk}


def test_zsk_rollover_double_signature_then_retire_then_remove(pair: Pair, kdc: Kdc) -> None:
    zone = f"roll.{pair.spec.name}.test."
    (ksk,), (old,) = keys_of(kdc, zone, "KSK"), keys_of(kdc, zone, "ZSK")

    new = kdc.generate(zone, "ZSK")  # 1. the new ZSK joins: both sign
    distribute(kdc, pair, zone)
    assert pair.served(zone).soa_signers == {old, new}

    kdc("key", "retire", "--zone", zone, "--tag", str(old))  # 2. the old one stops signing
    distribute(kdc, pair, zone)
    now = pair.served(zone)
    assert now.tags == {ksk, old, new}
    assert now.soa_signers == {new}

    kdc("key", "remove", "--zone", zone, "--tag", str(old))  # 3. and is withdrawn
    distribute(kdc, pair, zone)
    now = pair.served(zone)
    assert now.tags == {ksk, new}
    assert now.soa_signers == {new} and now.dnskey_signers == {ksk}


def test_delete_a_ksk(pair: Pair, kdc: Kdc) -> None:
    zone = f"delete.{pair.spec.name}.test."
    (old,), (zsk,) = keys_of(kdc, zone, "KSK"), keys_of(kdc, zone, "ZSK")
    new = kdc.generate(zone, "KSK")
    distribute(kdc, pair, zone)
    # No parent in this test: the guard for a DS that may still be there is overridden.
    kdc("key", "remove", "--zone", zone, "--tag", str(old), "--force")
    distribute(kdc, pair, zone)
    now = pair.served(zone)
    assert now.tags == {new, zsk}
    assert now.dnskey_signers == {new} and now.soa_signers == {zsk}


def test_distribution_from_an_impostor_kdc_is_refused_and_changes_nothing(
    pair: Pair, kdc: Kdc, docker_client: object
) -> None:
    """Someone takes the KDC's address (the real one is down) and knows the node's public key,
    as anyone may: their distribution is sealed to the node, but not signed with the KDC's key."""
    zone = f"refused.{pair.spec.name}.test."
    before = pair.served(zone)
    assert len(before.tags) == 2 and before.soa_signers
    node = next(n for n in kdc("node", "list") if n["id"] == pair.node_id)
    assert kdc.container is not None
    kdc.stop()
    impostor = Kdc(docker_client, kdc.image, f"{kdc.name}-impostor", port=kdc.port)  # type: ignore[arg-type]
    try:
        impostor.start()
        assert impostor.container is not None
        run_checked(
            impostor.container,
            "sh", "-c", f"echo {node['hpke_pubkey']} > /tmp/node.pub",
        )  # fmt: skip
        impostor("zone", "add", zone)
        impostor.generate(zone, "CSK")
        impostor(
            "node", "add", pair.node_id, "--notify", node["notify_address"],
            "--hpke-pubkey", "/tmp/node.pub", "--zone", zone,
        )  # fmt: skip
        dist_id = impostor.distribute(zone)

        def refused() -> dict[str, object] | None:
            return next((r for r in pair.status() if r["id"] == dist_id), None)

        row = wait_until(refused, 60, lambda: f"the KRS to refuse {dist_id}:\n{pair.logs()}")
        assert row["outcome"] != "applied"
        assert "signature" in str(row["error"]).lower()
        after = pair.served(zone)
        assert after.tags == before.tags and after.soa_signers == before.soa_signers
    finally:
        impostor.close()
        kdc.start()
    # The real KDC, back, is still obeyed. Distribution ids are the Unix time, then +1 (tdns's
    # counter): back within the second the impostor distributed in, it would reuse the impostor's
    # id, which the KRS keeps as rejected and never fetches again (docs/containers.md, the next
    # tier). Here the real KDC's next id is a later one.
    wait_until(lambda: time.time() >= int(dist_id, 16) + 1, 5, lambda: "the next second")
    zsk = kdc.generate(zone, "ZSK")
    real = kdc.distribute(zone)
    assert real != dist_id, f"the real KDC reused the impostor's distribution id {dist_id}"
    kdc.wait_confirmed(real, pair.logs)
    assert zsk in pair.served(zone).soa_signers
