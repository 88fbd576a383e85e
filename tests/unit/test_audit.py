"""The audit trail (kdc/audit.py): every event in the transaction that makes it, a chain that
finds a changed, removed, reordered or forged entry and a cut tail, evidence packs that verify
offline and show one zone only, and no secret in any entry."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from krs_plugin.crypto import JoseKey
from krs_plugin.errors import ConfigError
from krs_plugin.humantime import parse_past_time
from krs_plugin.kdc import audit
from krs_plugin.kdc.clistate import scrub_argv
from krs_plugin.kdc.identity import SIGNING_FILE, KdcIdentity, create_identity
from krs_plugin.kdc.keygen import new_key
from krs_plugin.kdc.store import StateError, Store

T = 1_800_000_000
ZONE, OTHER, NODE = "example.com.", "other.net.", "ns1.edge.example."


@pytest.fixture
def kdc(tmp_path: Path) -> tuple[Store, KdcIdentity]:
    identity = create_identity(tmp_path / "keys")
    store = Store(tmp_path / "kdc.db")
    store.actor = "operator test"
    return store, identity


def events(store: Store) -> None:
    """A few events of two zones, each through the store as the commands make them."""
    store.add_zone(ZONE, now=T)
    store.add_zone(OTHER, now=T + 1)
    store.add_node(NODE, notify_address="127.0.0.1:9", backend="hpke", hpke_pubkey="00" * 32,
                   jose_pubkey=None, signing_pubkey=None, zones=[ZONE, OTHER],
                   now=T + 2)  # fmt: skip
    new_key(store, ZONE, "KSK", 13, now=T + 3)
    zsk = new_key(store, ZONE, "ZSK", 13, now=T + 4)
    new_key(store, OTHER, "CSK", 13, now=T + 5)
    store.retire_key(ZONE, zsk.key_tag, force=True, now=T + 6)


def rows(store: Store) -> list[sqlite3.Row]:
    return store.db.execute("SELECT * FROM audit ORDER BY seq").fetchall()


def anchor(identity: KdcIdentity) -> list[JoseKey]:
    return [identity.signer.public_only()]


def untrigger(store: Store) -> None:
    """What an attacker with write access to kdc.db does first."""
    for name in ("audit_no_update", "audit_no_delete"):
        store.db.execute(f"DROP TRIGGER {name}")


def broken(store: Store, identity: KdcIdentity, **kwargs: object) -> audit.Break:
    verdict = audit.verify(store.db, anchor(identity), **kwargs)  # type: ignore[arg-type]
    assert verdict.broken is not None, "tampering not found"
    return verdict.broken


def test_every_event_has_its_signed_entry_and_the_chain_verifies(kdc) -> None:
    store, identity = kdc
    events(store)
    kinds = [r["kind"] for r in rows(store)]
    assert kinds == ["audit.key", "zone.add", "zone.add", "node.add", "node.add", "key.generate",
                     "key.generate", "key.generate", "key.state"]  # fmt: skip
    verdict = audit.verify(store.db, anchor(identity))
    assert verdict.ok and verdict.entries == 9 and verdict.head == (9, rows(store)[-1]["hash"])
    first = rows(store)[0]
    assert first["prev"] == audit.GENESIS and first["key"] == identity.signer.thumbprint
    retire = json.loads(rows(store)[-1]["details"])
    assert retire["from"] == "created" and retire["to"] == "retired" and retire["force"] is True


def test_reports_expiry_time_and_enrollment_are_recorded(kdc) -> None:
    """What serve records: a node's confirmation and failure report, an expiry, a key's time
    passing, an enrollment (the token only by its id, never the token or its whole hash)."""
    store, identity = kdc
    events(store)
    with store.transaction():
        for dist_id in ("a1", "a2", "a3"):
            store.add_distribution(dist_id, 1, NODE, zone=ZONE, content="key_operations",
                                   created_at=T, expires_at=T + 300, records=[b"x"],
                                   keys=[(ZONE, "1")])  # fmt: skip
    store.set_distribution_status("a1", NODE, "confirmed", now=T + 10,
                                  served=[{"zone": ZONE, "soa_serial": 7}])  # fmt: skip
    store.set_distribution_status("a2", NODE, "failed", now=T + 11, stage="apply",
                                  error="rndc: connection refused")  # fmt: skip
    store.expire_distributions(now=T + 400)
    ksk = store.keys(ZONE)[0]
    store.db.execute("UPDATE keys SET inactive_at = ? WHERE id = ?", (T + 500, ksk.id))
    store.db.execute("UPDATE keys SET state = 'active' WHERE id = ?", (ksk.id,))
    store.advance_key_states(now=T + 500)
    token = hashlib.sha256(b"the enrollment token").hexdigest()
    store.add_token(token, "ns2.edge.example.", backend="hpke", zones=[ZONE], package_digest="d",
                    expires_at=T + 900, now=T + 600)  # fmt: skip
    store.add_node("ns2.edge.example.", notify_address="127.0.0.1:9", backend="hpke",
                   hpke_pubkey="11" * 32, jose_pubkey=None, signing_pubkey=None, zones=[ZONE],
                   used_token=token, now=T + 601)  # fmt: skip
    found = {r["kind"]: json.loads(r["details"]) for r in rows(store)}
    assert found["distribution.confirmed"]["soa_serial"] == 7
    failed = found["distribution.failed"]
    assert (failed["stage"], failed["error"]) == ("apply", "rndc: connection refused")
    assert found["distribution.expired"] == {"distribution": "a3", "nodes": [NODE]}
    assert found["key.state"]["cause"] == "time" and found["key.state"]["to"] == "retired"
    assert found["enroll.create"]["token_id"] == token[:12]
    assert found["node.enroll"]["token_id"] == token[:12]
    text = "".join(r["details"] for r in rows(store))
    assert token not in text and "the enrollment token" not in text
    assert audit.verify(store.db, anchor(identity)).ok


def test_the_table_refuses_update_and_delete(kdc) -> None:
    store, _ = kdc
    events(store)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.db.execute("UPDATE audit SET actor = 'x' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.db.execute("DELETE FROM audit WHERE seq = 9")


def test_a_refused_change_leaves_no_entry_and_a_committed_one_always_has_one(kdc) -> None:
    store, _ = kdc
    events(store)
    before = len(rows(store))
    with pytest.raises(StateError):
        store.add_zone(ZONE)  # a duplicate: refused inside the transaction
    with pytest.raises(RuntimeError), store.transaction():
        store.add_zone("late.example.")
        raise RuntimeError("the process dies before COMMIT")
    assert len(rows(store)) == before and "late.example." not in store.zones()


def test_a_changed_entry_is_found_at_its_seq(kdc) -> None:
    store, identity = kdc
    events(store)
    untrigger(store)
    store.db.execute("UPDATE audit SET details = replace(details, 'true', 'false') WHERE seq = 9")
    found = broken(store, identity)
    assert (found.seq, found.reason) == (9, "changed")


def test_one_changed_byte_that_keeps_the_meaning_is_found(kdc) -> None:
    store, identity = kdc
    events(store)
    untrigger(store)
    store.db.execute("UPDATE audit SET details = replace(details, ':', ': ') WHERE seq = 4")
    assert (broken(store, identity).seq, broken(store, identity).reason) == (4, "changed")


def test_a_removed_entry_is_found(kdc) -> None:
    store, identity = kdc
    events(store)
    untrigger(store)
    store.db.execute("DELETE FROM audit WHERE seq = 5")
    found = broken(store, identity)
    assert (found.seq, found.reason) == (5, "removed")


def test_a_removed_entry_with_the_rest_renumbered_is_found(kdc) -> None:
    store, identity = kdc
    events(store)
    untrigger(store)
    store.db.execute("DELETE FROM audit WHERE seq = 5")
    store.db.execute("UPDATE audit SET seq = seq - 1 WHERE seq > 5")
    found = broken(store, identity)
    assert found.seq == 5 and found.reason in ("changed", "removed")


def test_two_swapped_entries_are_found_out_of_order(kdc) -> None:
    store, identity = kdc
    events(store)
    untrigger(store)
    store.db.execute("UPDATE audit SET seq = -1 WHERE seq = 6")
    store.db.execute("UPDATE audit SET seq = 6 WHERE seq = 7")
    store.db.execute("UPDATE audit SET seq = 7 WHERE seq = -1")
    found = broken(store, identity)
    assert (found.seq, found.reason) == (6, "out-of-order")


def test_swapped_contents_are_found_out_of_order(kdc) -> None:
    store, identity = kdc
    events(store)
    untrigger(store)
    a, b = (dict(r) for r in rows(store)[6:8])  # seq 7 and 8
    for row, other in ((a, b), (b, a)):
        store.db.execute(
            "UPDATE audit SET at = ?, kind = ?, zone = ?, node = ?, actor = ?, details = ?, "
            "salt = ? WHERE seq = ?",
            (other["at"], other["kind"], other["zone"], other["node"], other["actor"],
             other["details"], other["salt"], row["seq"]),
        )  # fmt: skip
    found = broken(store, identity)
    assert (found.seq, found.reason) == (7, "out-of-order")


def test_a_truncated_tail_is_found_against_the_noted_head(kdc) -> None:
    store, identity = kdc
    events(store)
    noted = audit.verify(store.db, anchor(identity)).head
    assert noted is not None
    store.add_zone("third.example.", now=T + 7)
    assert audit.verify(store.db, anchor(identity), expect_head=noted).ok  # grown: fine
    head = audit.verify(store.db, anchor(identity)).head
    assert head is not None
    untrigger(store)
    store.db.execute("DELETE FROM audit WHERE seq > 7")
    assert audit.verify(store.db, anchor(identity)).ok  # without a noted head: undetectable
    found = broken(store, identity, expect_head=head)
    assert (found.seq, found.reason) == (8, "truncated")


def test_a_rewritten_log_does_not_reach_the_noted_head(kdc) -> None:
    store, identity = kdc
    events(store)
    head = audit.verify(store.db, anchor(identity)).head
    assert head is not None
    found = broken(store, identity, expect_head=(head[0], "ab" * 32))
    assert (found.seq, found.reason) == (head[0], "changed")


def test_forged_content_with_a_recomputed_chain_fails_on_its_signature(kdc) -> None:
    """The attacker has kdc.db but not the signing key: the digests and hashes can be made
    right again, the signatures cannot."""
    store, identity = kdc
    events(store)
    untrigger(store)
    chain = [dict(r) for r in rows(store)]
    forged = json.loads(chain[8]["details"])
    forged["force"] = False
    chain[8]["details"] = audit.canonical_json(forged)
    prev = chain[7]["hash"]
    for item in chain[8:]:
        content = {**item, "details": json.loads(item["details"])}
        item["digest"] = audit.content_digest(content)
        item["prev"] = prev
        item["hash"] = prev = audit.chain_hash(prev, item["digest"], item["seq"])
        store.db.execute(
            "UPDATE audit SET details = ?, digest = ?, prev = ?, hash = ? WHERE seq = ?",
            (item["details"], item["digest"], item["prev"], item["hash"], item["seq"]),
        )
    found = broken(store, identity)
    assert (found.seq, found.reason) == (9, "signature")


def test_a_key_added_to_audit_keys_by_an_attacker_is_not_trusted(kdc) -> None:
    store, identity = kdc
    events(store)
    untrigger(store)
    mallory = audit.JoseSigner(JoseKey.generate())
    store.db.execute("INSERT INTO audit_keys VALUES (?, ?, ?)",
                     (mallory.thumbprint, audit.canonical_json(mallory.public_jwk), T))  # fmt: skip
    store.db.execute("DELETE FROM audit WHERE seq = 9")
    audit.append(store.db, mallory, "key.state", actor="operator test", zone=ZONE, now=T + 9,
                 details={"key_tag": 1, "to": "retired"})  # fmt: skip
    found = broken(store, identity)
    assert (found.seq, found.reason) == (9, "signature")


def test_after_a_signing_key_roll_the_old_entries_verify_with_the_new_key(tmp_path, kdc) -> None:
    store, identity = kdc
    events(store)
    new = JoseKey.generate()
    rolled = Store(tmp_path / "kdc.db", audit_signer=audit.JoseSigner(new))
    rolled.add_zone("after.example.", now=T + 20)
    kinds = [r["kind"] for r in rows(rolled)][-2:]
    assert kinds == ["audit.key", "zone.add"]
    assert json.loads(rows(rolled)[-2]["details"])["previous"] == identity.signer.thumbprint
    verdict = audit.verify(rolled.db, [new.public_only()])  # only the new key in hand
    assert verdict.ok and set(verdict.keys) == {new.thumbprint, identity.signer.thumbprint}
    # the old key alone no longer covers the new entries
    assert broken(rolled, identity).reason == "signature"


def test_without_the_signing_key_no_change_is_made_once_the_trail_began(tmp_path, kdc) -> None:
    store, _ = kdc
    events(store)
    store.close()
    (tmp_path / "keys" / SIGNING_FILE).rename(tmp_path / "elsewhere")
    again = Store(tmp_path / "kdc.db")
    with pytest.raises(ConfigError, match="signing key is missing"):
        again.add_zone("new.example.")
    assert "new.example." not in again.zones()


def test_a_database_without_kdc_keys_records_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "kdc.db")
    store.add_zone(ZONE)
    assert rows(store) == []


# --- evidence packs -----------------------------------------------------------------------------


def pack_of(store: Store, identity: KdcIdentity, **kwargs: object) -> dict:  # type: ignore[type-arg]
    return audit.export_pack(store.db, anchor(identity), **kwargs)  # type: ignore[arg-type]


def test_a_zone_pack_verifies_offline_and_shows_no_other_zone(kdc) -> None:
    store, identity = kdc
    events(store)
    pack = pack_of(store, identity, zone=ZONE, since=None)
    text = json.dumps(pack)
    assert OTHER not in text and "other" not in text
    assert ZONE in text
    assert pack["entries"][0]["seq"] == 2  # from the first entry of the zone
    whole = [e for e in pack["entries"] if "kind" in e]
    assert all(e["zone"] == ZONE for e in whole)
    hidden = [e for e in pack["entries"] if "kind" not in e]
    assert hidden and set(hidden[0]) == {"seq", "digest", "prev", "hash", "signature", "key"}
    # through JSON, as the auditor reads it
    verdict = audit.verify_pack(json.loads(text), anchor(identity))
    assert verdict.ok, verdict.broken


def test_a_pack_since_a_time_starts_there(kdc) -> None:
    store, identity = kdc
    events(store)
    pack = pack_of(store, identity, zone=ZONE, since=T + 4)
    assert pack["entries"][0]["seq"] == 7 and pack["filter"]["since"] == T + 4
    assert audit.verify_pack(pack, anchor(identity)).ok


@pytest.mark.parametrize(
    "change, reason",
    [
        ("details", "changed"),
        ("drop", "removed"),
        ("swap", "out-of-order"),
        ("cut", "truncated"),
        ("key", "signature"),
    ],
)
def test_an_altered_pack_fails(kdc, change: str, reason: str) -> None:
    store, identity = kdc
    events(store)
    pack = copy.deepcopy(pack_of(store, identity, zone=ZONE, since=None))
    entries = pack["entries"]
    whole = [i for i, e in enumerate(entries) if "kind" in e and e["kind"] == "key.generate"]
    if change == "details":
        entries[whole[0]]["details"]["role"] = "ZSK"
    elif change == "drop":
        del entries[3]
    elif change == "swap":
        entries[3], entries[4] = entries[4], entries[3]
    elif change == "cut":
        del entries[-1]
    elif change == "key":  # the pack's own key is never trusted: the auditor's is
        other = JoseKey.generate()
        verdict = audit.verify_pack(pack, [other.public_only()])
        assert verdict.broken is not None and verdict.broken.reason == reason
        return
    verdict = audit.verify_pack(pack, anchor(identity))
    assert verdict.broken is not None and verdict.broken.reason == reason, verdict.broken


def test_a_cut_pack_with_its_head_rewritten_fails_against_the_noted_head(kdc) -> None:
    store, identity = kdc
    events(store)
    pack = pack_of(store, identity, zone=ZONE, since=None)
    noted = (pack["head"]["seq"], pack["head"]["hash"])
    del pack["entries"][-1]
    pack["head"] = {"seq": pack["entries"][-1]["seq"], "hash": pack["entries"][-1]["hash"]}
    assert audit.verify_pack(pack, anchor(identity)).ok
    verdict = audit.verify_pack(pack, anchor(identity), expect_head=noted)
    assert verdict.broken is not None and verdict.broken.reason == "truncated"


def test_no_private_key_material_in_any_entry_or_pack(tmp_path, kdc) -> None:
    store, identity = kdc
    events(store)
    secrets: list[bytes] = []
    for row in store.keys(ZONE) + store.keys(OTHER):
        pem = row.private_pem
        secrets.append(pem)
        body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
        secrets.append(body)
        der = base64.b64decode(body)
        private = serialization.load_der_private_key(der, password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        scalar = private.private_numbers().private_value.to_bytes(32, "big")
        secrets += [der, scalar, scalar.hex().encode(), base64.b64encode(scalar)]
    for name in ("kdc.signing.privatekey", "kdc.jose.privatekey", "kdc.hpke.privatekey"):
        text = (tmp_path / "keys" / name).read_bytes()
        lines = [line.strip() for line in text.splitlines() if not line.startswith(b"#")]
        secrets += [ln for ln in lines if len(ln) > 40 and not ln.startswith((b'"x"', b'"y"'))]
    d = identity.signer.private_jwk()["d"].encode()
    secrets += [d, identity.jose.private_jwk()["d"].encode(), identity.hpke.private_hex().encode()]
    dump = (
        b"".join(b"|".join(str(v).encode() for v in tuple(r)) for r in rows(store))
        + json.dumps(pack_of(store, identity, zone=None, since=None)).encode()
    )
    for secret in secrets:
        assert secret not in dump, secret[:20]
    assert b"PRIVATE" not in dump


def test_an_entry_with_private_key_material_is_refused(kdc) -> None:
    store, identity = kdc
    with pytest.raises(audit.AuditError, match="private key material"):
        audit.append(store.db, audit.JoseSigner(identity.signer), "x", actor="a",
                     details={"oops": "-----BEGIN PRIVATE KEY-----"})  # fmt: skip


# --- command line pieces ------------------------------------------------------------------------


def test_secret_option_values_are_scrubbed_from_argv() -> None:
    assert scrub_argv(["key", "generate", "--pin", "1234", "--zone", "a."]) == [
        "key", "generate", "--pin", "<secret>", "--zone", "a."]  # fmt: skip
    assert scrub_argv(["x", "--so-pin=99", "--token-password", "pw", "--node", "n."]) == [
        "x", "--so-pin=<secret>", "--token-password", "<secret>", "--node", "n."]  # fmt: skip


def test_an_option_naming_a_secret_file_keeps_its_path() -> None:
    argv = ["custody", "migrate", "--pin-file", "/etc/krs-kdc/pin", "--pin", "1234"]
    assert scrub_argv(argv) == ["custody", "migrate", "--pin-file", "/etc/krs-kdc/pin", "--pin",
                                "<secret>"]  # fmt: skip


def test_since_takes_a_duration_back_or_an_iso_time() -> None:
    now = 1_800_000_000.0
    assert parse_past_time("7d", now=now) == now - 7 * 86400
    assert parse_past_time("300", now=now) == now - 300
    assert parse_past_time("2027-01-15T08:00:00Z") == 1_800_000_000
    assert parse_past_time("2027-01-15 08:00:00") == 1_800_000_000
    assert parse_past_time("2027-01-15") == 1_800_000_000 - 8 * 3600
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_past_time("last tuesday")


def test_expect_head_is_read_as_printed() -> None:
    assert audit.parse_head(f"42:{'AB' * 32}") == (42, "ab" * 32)
    with pytest.raises(ConfigError, match="SEQ:HASH"):
        audit.parse_head("42")


def test_the_chain_hash_is_sha256_of_prev_digest_and_seq() -> None:
    prev, digest = "11" * 32, "22" * 32
    expected = hashlib.sha256(bytes.fromhex(prev + digest) + (7).to_bytes(8, "big")).hexdigest()
    assert audit.chain_hash(prev, digest, 7) == expected
