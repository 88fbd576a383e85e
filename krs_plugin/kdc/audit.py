"""The audit trail: an append-only, hash-chained log of what the KDC did, each entry signed by
the KDC's signing key (docs/security.md, "Audit trail").

One job, four parts: ``append`` (in the transaction of the event it records), ``verify`` (the
whole chain in kdc.db), ``export_pack`` (an evidence pack for one zone and time) and
``verify_pack`` (the auditor's check, offline, with only the KDC's public key).

An entry's content is ``{actor, at, details, kind, node, salt, zone}`` as canonical JSON (sorted
keys, no whitespace); its ``digest`` is SHA-256 of that; its ``hash`` is SHA-256(prev hash ||
digest || seq as 8 bytes big-endian), the first entry's prev hash 32 zero bytes; its
``signature`` is ES256 over the hash (raw r||s, base64url) by the key whose RFC 7638
thumbprint is ``key``. The random ``salt`` keeps a pack's redacted entries (digest only) from
being confirmed by guessing their content.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from krs_plugin.crypto import JoseKey
from krs_plugin.crypto.keys import b64url_decode, b64url_encode
from krs_plugin.errors import ConfigError, KrsError
from krs_plugin.sqlitedb import transaction

PACK_FORMAT = "krs-kdc-audit-pack/1"
GENESIS = "00" * 32
KEY_KIND = "audit.key"  # a signing key's first entry, naming the key it follows

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    zone TEXT,
    node TEXT,
    actor TEXT NOT NULL,
    details TEXT NOT NULL,
    salt TEXT NOT NULL,
    digest TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT NOT NULL,
    key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_zone ON audit(zone, seq);
CREATE TABLE IF NOT EXISTS audit_keys (
    thumbprint TEXT PRIMARY KEY,
    jwk TEXT NOT NULL,
    added_at INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_keys_no_delete BEFORE DELETE ON audit_keys
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"""

_CONTENT = ("actor", "at", "details", "kind", "node", "salt", "zone")
_CHAIN = ("seq", "digest", "prev", "hash", "signature", "key")


class AuditError(KrsError):
    """An audit entry that cannot be written, or a pack that cannot be read."""


class AuditSigner(Protocol):
    """What signs the trail: today the KDC's signing key file, next a PKCS#11 token."""

    @property
    def thumbprint(self) -> str: ...

    @property
    def public_jwk(self) -> dict[str, str]: ...

    def sign(self, digest: bytes) -> bytes:
        """ES256 over ``digest`` (an entry's 32-byte hash): raw r||s, 64 bytes."""
        ...


class JoseSigner:
    """An ``AuditSigner`` over a P-256 key in memory (``keys/kdc.signing.privatekey``)."""

    def __init__(self, key: JoseKey) -> None:
        if key.private is None:
            raise ConfigError(f"audit signing key {key.fingerprint} has no private part")
        self._key = key

    @property
    def thumbprint(self) -> str:
        return self._key.thumbprint

    @property
    def public_jwk(self) -> dict[str, str]:
        return self._key.public_jwk

    def sign(self, digest: bytes) -> bytes:
        assert self._key.private is not None
        der = self._key.private.sign(digest, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def signature_valid(key: JoseKey, digest: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    try:
        key.public.verify(der, digest, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def content_digest(content: Mapping[str, Any]) -> str:
    data = {name: content[name] for name in _CONTENT}
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def chain_hash(prev: str, digest: str, seq: int) -> str:
    return hashlib.sha256(
        bytes.fromhex(prev) + bytes.fromhex(digest) + seq.to_bytes(8, "big")
    ).hexdigest()


@dataclass(frozen=True)
class Entry:
    seq: int
    at: int
    kind: str
    zone: str | None
    node: str | None
    actor: str
    details: dict[str, Any]
    salt: str
    digest: str
    prev: str
    hash: str
    signature: str
    key: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "zone": self.zone,
            "node": self.node,
            "actor": self.actor,
            "details": self.details,
            "salt": self.salt,
            "digest": self.digest,
            "prev": self.prev,
            "hash": self.hash,
            "signature": self.signature,
            "key": self.key,
        }

    def chain_json(self) -> dict[str, Any]:
        """The entry without its content: what a pack carries for another zone's entry."""
        return {name: getattr(self, name) for name in _CHAIN}


# --- append -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One entry to append: what happened (``kind``), to which zone and node, and its details."""

    kind: str
    zone: str | None = None
    node: str | None = None
    details: Mapping[str, Any] | None = None


def append(
    db: sqlite3.Connection,
    signer: AuditSigner,
    kind: str,
    *,
    actor: str,
    zone: str | None = None,
    node: str | None = None,
    details: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> Entry:
    """Append one entry (``append_many``)."""
    return append_many(db, signer, [Event(kind, zone, node, details)], actor=actor, now=now)[-1]


def append_many(
    db: sqlite3.Connection,
    signer: AuditSigner,
    events: Sequence[Event],
    *,
    actor: str,
    now: float | None = None,
) -> list[Entry]:
    """Append ``events`` in order, inside the caller's transaction (a savepoint of it, or one
    of its own): the event and its entries commit together. A signing key not yet in the trail
    first gets an ``audit.key`` entry, signed by itself, naming the key it follows."""
    stamp = int(time.time() if now is None else now)
    with transaction(db):
        head = db.execute("SELECT seq, hash, key FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev, last_key = (0, GENESIS, None) if head is None else (head[0], head[1], head[2])
        todo = list(events)
        if last_key != signer.thumbprint:
            db.execute(
                "INSERT OR IGNORE INTO audit_keys(thumbprint, jwk, added_at) VALUES (?, ?, ?)",
                (signer.thumbprint, canonical_json(signer.public_jwk), stamp),
            )
            todo.insert(0, Event(KEY_KIND, details={"jwk": signer.public_jwk,
                                                    "previous": last_key}))  # fmt: skip
        written = []
        for event in todo:
            seq += 1
            entry = _entry_of(signer, seq, prev, stamp, event, actor)
            written.append(entry)
            prev = entry.hash
        db.executemany(
            "INSERT INTO audit(seq, at, kind, zone, node, actor, details, salt, digest, prev, "
            "hash, signature, key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(e.seq, e.at, e.kind, e.zone, e.node, e.actor, canonical_json(e.details), e.salt,
              e.digest, e.prev, e.hash, e.signature, e.key) for e in written],
        )  # fmt: skip
    return written


def _entry_of(signer: AuditSigner, seq: int, prev: str, at: int, event: Event, actor: str) -> Entry:
    details = dict(event.details or {})
    text = canonical_json(details)
    if "PRIVATE KEY" in text:  # a last guard: key material never goes into the trail
        raise AuditError(
            f"audit entry {event.kind}: details hold private key material; not recorded"
        )
    salt = os.urandom(16).hex()
    content = {"actor": actor, "at": at, "details": details, "kind": event.kind,
               "node": event.node, "salt": salt, "zone": event.zone}  # fmt: skip
    digest = content_digest(content)
    hashed = chain_hash(prev, digest, seq)
    signature = b64url_encode(signer.sign(bytes.fromhex(hashed)))
    return Entry(seq, at, event.kind, event.zone, event.node, actor, details, salt, digest, prev,
                 hashed, signature, signer.thumbprint)  # fmt: skip


# --- reading ------------------------------------------------------------------------------------


def entries(
    db: sqlite3.Connection, *, zone: str | None = None, since: float | None = None
) -> list[Entry]:
    """The entries in seq order; ``zone``/``since``: those of the zone, from then."""
    where, args = _filter(zone, since)
    return [_entry(r) for r in db.execute(f"SELECT * FROM audit{where} ORDER BY seq", args)]


def _filter(zone: str | None, since: float | None) -> tuple[str, list[object]]:
    clauses: list[str] = []
    args: list[object] = []
    if zone is not None:
        clauses.append("zone = ?")
        args.append(zone)
    if since is not None:
        clauses.append("at >= ?")
        args.append(int(since) if since == int(since) else since)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def matches(entry: Entry, *, zone: str | None, since: float | None) -> bool:
    if since is not None and entry.at < since:
        return False
    return zone is None or entry.zone == zone


def _entry(row: sqlite3.Row) -> Entry:
    try:
        details = json.loads(row["details"])
    except ValueError:
        details = {"unreadable": row["details"]}
    if not isinstance(details, dict):
        details = {"unreadable": row["details"]}
    return Entry(
        row["seq"],
        row["at"],
        row["kind"],
        row["zone"],
        row["node"],
        row["actor"],
        details,
        row["salt"],
        row["digest"],
        row["prev"],
        row["hash"],
        row["signature"],
        row["key"],
    )


def stored_keys(db: sqlite3.Connection) -> dict[str, dict[str, str]]:
    """The signing keys the trail has seen, by thumbprint (public JWKs; trusted only as far as
    ``verify`` finds them endorsed)."""
    rows = db.execute("SELECT thumbprint, jwk FROM audit_keys ORDER BY added_at").fetchall()
    return {r["thumbprint"]: json.loads(r["jwk"]) for r in rows}


# --- verification -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Break:
    seq: int
    reason: str  # changed | removed | out-of-order | signature | truncated
    detail: str


@dataclass(frozen=True)
class Verdict:
    entries: int
    head: tuple[int, str] | None  # (seq, hash) of the last entry as stored
    broken: Break | None
    keys: tuple[str, ...]  # the thumbprints trusted

    @property
    def ok(self) -> bool:
        return self.broken is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "head": None if self.head is None else {"seq": self.head[0], "hash": self.head[1]},
            "broken": None if self.broken is None else self.broken.__dict__,
            "keys": list(self.keys),
        }


def parse_head(text: str) -> tuple[int, str]:
    """``SEQ:HASH`` as ``audit verify`` prints it."""
    seq, sep, hashed = text.strip().partition(":")
    hashed = hashed.lower()
    if (
        not sep
        or not seq.isdigit()
        or len(hashed) != 64
        or any(c not in "0123456789abcdef" for c in hashed)
    ):
        raise ConfigError(
            f"--expect-head: expected SEQ:HASH as audit verify prints it (42:<64 hex "
            f"digits>), got {text!r}"
        )
    return int(seq), hashed


def _public(jwk: Mapping[str, Any], thumbprint: str) -> JoseKey | None:
    try:
        key = JoseKey.from_jwk(jwk, where=f"audit key {thumbprint}")
    except KrsError:
        return None
    return key if key.thumbprint == thumbprint else None


def trusted_keys(
    chain: Sequence[Mapping[str, Any]], anchors: Iterable[JoseKey], known: Mapping[str, Any]
) -> dict[str, JoseKey]:
    """The keys the chain's signatures may be checked with: the anchors (the KDC's signing key
    as the operator or auditor has it), and every key an ``audit.key`` entry signed by a
    trusted key names as the one it follows (a signing-key roll), its JWK from ``known``."""
    trusted = {k.thumbprint: k for k in anchors}
    changed = True
    while changed:
        changed = False
        for item in chain:
            if item.get("kind") != KEY_KIND or item.get("key") not in trusted:
                continue
            details = item.get("details")
            previous = details.get("previous") if isinstance(details, dict) else None
            if not isinstance(previous, str) or previous in trusted or previous not in known:
                continue
            if not _signed(trusted[str(item["key"])], item):
                continue
            key = _public(known[previous], previous)
            if key is not None:
                trusted[previous] = key
                changed = True
    return trusted


def _signed(key: JoseKey, item: Mapping[str, Any]) -> bool:
    try:
        return signature_valid(
            key, bytes.fromhex(str(item["hash"])), b64url_decode(str(item["signature"]))
        )
    except (ValueError, KeyError):
        return False


class ChainIndex:
    """What the diagnosis of a break looks up, in a list of entries (a pack)."""

    def __init__(self, chain: Sequence[Mapping[str, Any]]) -> None:
        self.chain = chain

    def _find(self, field: str, value: object) -> Mapping[str, Any] | None:
        return next((e for e in self.chain if str(e.get(field)) == str(value)), None)

    def seq_of(self, field: str, value: str) -> int | None:
        """The seq of the entry whose ``field`` (hash or digest) is ``value``."""
        found = self._find(field, value)
        return None if found is None else int(found.get("seq", 0))

    def hash_at(self, seq: int) -> str | None:
        found = self._find("seq", seq)
        return None if found is None else str(found.get("hash"))


class DbIndex(ChainIndex):
    """The same lookups in kdc.db's table, for a chain read row by row."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def seq_of(self, field: str, value: str) -> int | None:
        column = {"hash": "hash", "digest": "digest"}[field]
        row = self.db.execute(f"SELECT seq FROM audit WHERE {column} = ?", (value,)).fetchone()
        return None if row is None else int(row[0])

    def hash_at(self, seq: int) -> str | None:
        row = self.db.execute("SELECT hash FROM audit WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])


def check_chain(
    chain: Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    trusted: Mapping[str, JoseKey],
    *,
    first_seq: int = 1,
    first_prev: str = GENESIS,
    expect_head: tuple[int, str] | None = None,
    index: ChainIndex | None = None,
    head: tuple[int, str] | None = None,
    count: int | None = None,
) -> Verdict:
    """Walk ``chain`` (entries as ``Entry.to_json`` or, without content, ``chain_json``) and
    report the first break: an entry missing (a gap in seq), out of order (its prev hash or
    content is another entry's), changed (content against digest, hash against prev, digest and
    seq), or a signature that is not a trusted key's; then the noted head, if given. A chain
    read row by row (not a list) comes with its ``index``, ``head`` and ``count``."""
    if isinstance(chain, Sequence):
        index = index or ChainIndex(chain)
        head = (int(chain[-1]["seq"]), str(chain[-1]["hash"])) if chain else None
        count = len(chain)
    assert index is not None
    keys = tuple(trusted)

    def broken(seq: int, reason: str, detail: str) -> Verdict:
        return Verdict(count or 0, head, Break(seq, reason, detail), keys)

    expected, prev = first_seq, first_prev
    for item in chain:
        try:
            seq = int(item["seq"])
            digest, hashed, stored_prev = str(item["digest"]), str(item["hash"]), str(item["prev"])
            signature = b64url_decode(str(item["signature"]))
            key = str(item["key"])
            bytes.fromhex(digest + hashed + stored_prev)
        except (KeyError, ValueError, TypeError) as exc:
            return broken(expected, "changed", f"entry unreadable: {exc}")
        if seq > expected and index.hash_at(expected) is not None:
            return broken(
                expected, "out-of-order", f"entry {seq} found where entry {expected} belongs"
            )
        if seq > expected:
            missing = str(expected) if seq == expected + 1 else f"{expected} to {seq - 1}"
            return broken(
                expected,
                "removed",
                f"entry {missing} missing: the chain goes from {expected - 1} to {seq}",
            )
        if seq < expected:
            return broken(seq, "out-of-order", f"entry {seq} found after entry {expected - 1}")
        if "kind" in item:
            problem = _content_problem(item, digest)
            if problem is not None:
                other = index.seq_of("digest", _recomputed(item))
                if other is not None and other != seq:
                    return broken(seq, "out-of-order", f"entry {seq} holds entry {other}'s content")
                return broken(seq, "changed", problem)
        if stored_prev != prev:
            other = index.seq_of("hash", stored_prev)
            if other is not None and other != seq - 1:
                return broken(
                    seq,
                    "out-of-order",
                    f"entry {seq} follows entry {other} (its prev "
                    f"hash is entry {other}'s), not entry {seq - 1}",
                )
            return broken(
                seq,
                "changed",
                f"entry {seq}'s prev hash is not entry {seq - 1}'s "
                "hash: an entry before it was changed or removed",
            )
        if chain_hash(stored_prev, digest, seq) != hashed:
            return broken(
                seq, "changed", f"entry {seq}'s hash does not match its prev hash, digest and seq"
            )
        signer = trusted.get(key)
        if signer is None:
            return broken(
                seq,
                "signature",
                f"entry {seq} is signed by key {key}, not a trusted KDC signing key",
            )
        if not signature_valid(signer, bytes.fromhex(hashed), signature):
            return broken(
                seq,
                "signature",
                f"entry {seq}'s signature does not verify with KDC signing key {key}: forged",
            )
        expected, prev = seq + 1, hashed
    if expect_head is not None:
        noted_seq, noted_hash = expect_head
        last = head[0] if head else first_seq - 1
        if noted_seq > last:
            return broken(
                last + 1,
                "truncated",
                f"the log ends at entry {last}; the noted head "
                f"is entry {noted_seq}: entries {last + 1} to {noted_seq} were removed",
            )
        if index.hash_at(noted_seq) != noted_hash:
            return broken(
                noted_seq,
                "changed",
                f"entry {noted_seq}'s hash is not the noted head's: the log was rewritten",
            )
    return Verdict(count or 0, head, None, keys)


def _recomputed(item: Mapping[str, Any]) -> str:
    try:
        return content_digest(item)
    except (KeyError, TypeError, ValueError):
        return ""


def _content_problem(item: Mapping[str, Any], digest: str) -> str | None:
    seq = item.get("seq")
    raw = item.get("details_text")
    if raw is not None and raw != canonical_json(item.get("details")):
        return f"entry {seq}'s details are not as written (not canonical JSON): changed"
    if _recomputed(item) != digest:
        return f"entry {seq}'s content does not match its digest: changed"
    return None


def verify(
    db: sqlite3.Connection,
    anchors: Sequence[JoseKey],
    *,
    expect_head: tuple[int, str] | None = None,
) -> Verdict:
    """The whole trail in kdc.db, against the KDC's signing key(s) ``anchors``, read row by
    row (a fleet's trail is millions of entries)."""
    own = not db.in_transaction
    if own:
        db.execute("BEGIN")  # one snapshot, while serve goes on appending
    try:
        return _verify(db, anchors, expect_head)
    finally:
        if own:
            db.execute("COMMIT")


def _verify(
    db: sqlite3.Connection, anchors: Sequence[JoseKey], expect_head: tuple[int, str] | None
) -> Verdict:
    query = "SELECT * FROM audit WHERE kind = ? ORDER BY seq"
    introductions = [_entry(r).to_json() for r in db.execute(query, (KEY_KIND,))]
    trusted = trusted_keys(introductions, anchors, stored_keys(db))
    last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    count = int(db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])

    def rows() -> Iterator[dict[str, Any]]:
        for row in db.execute("SELECT * FROM audit ORDER BY seq"):
            item = _entry(row).to_json()
            item["details_text"] = row["details"]
            yield item

    return check_chain(
        rows(),
        trusted,
        expect_head=expect_head,
        index=DbIndex(db),
        count=count,
        head=None if last is None else (int(last[0]), str(last[1])),
    )


# --- evidence packs -----------------------------------------------------------------------------


def export_pack(
    db: sqlite3.Connection,
    anchors: Sequence[JoseKey],
    *,
    zone: str | None,
    since: float | None,
    now: float | None = None,
) -> dict[str, Any]:
    """Every entry from the first that concerns ``zone`` from ``since`` to the head: those that
    concern it (and ``audit.key`` entries) whole, the others without content, so the chain
    verifies and other zones stay undisclosed. With the signing keys as JWK."""
    where, args = _filter(zone, since)
    start = db.execute(f"SELECT MIN(seq) FROM audit{where}", args).fetchone()[0]
    if start is None:
        what = f"zone {zone}" if zone else "any zone"
        raise AuditError(
            f"no audit entries for {what}"
            + (
                ""
                if since is None
                else f" since {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(since))}"
            )
        )
    shown = [_entry(r) for r in db.execute("SELECT * FROM audit WHERE seq >= ? ORDER BY seq",
                                            (start,))]  # fmt: skip
    out = [
        e.to_json() if e.kind == KEY_KIND or matches(e, zone=zone, since=since) else e.chain_json()
        for e in shown
    ]
    known = {**stored_keys(db), **{k.thumbprint: k.public_jwk for k in anchors}}
    used = dict.fromkeys(e.key for e in shown)
    return {
        "format": PACK_FORMAT,
        "exported_at": int(time.time() if now is None else now),
        "filter": {"zone": zone, "since": None if since is None else int(since)},
        "keys": [{**known[t], "kid": t} for t in used if t in known],
        "head": {"seq": shown[-1].seq, "hash": shown[-1].hash},
        "entries": out,
    }


def verify_pack(
    pack: Mapping[str, Any],
    anchors: Sequence[JoseKey],
    *,
    expect_head: tuple[int, str] | None = None,
) -> Verdict:
    """An evidence pack, offline: contiguous from its first entry to its head, every whole
    entry's content matching its digest, every hash chained, every signature a trusted key's
    (``anchors``: the KDC signing public key the auditor holds)."""
    if pack.get("format") != PACK_FORMAT:
        raise AuditError(
            f"not an audit evidence pack of format {PACK_FORMAT}: format {pack.get('format')!r}"
        )
    chain = pack.get("entries")
    if not isinstance(chain, list) or not chain or not all(isinstance(e, dict) for e in chain):
        raise AuditError("evidence pack without entries")
    known = {}
    for jwk in pack.get("keys") or []:
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
            known[jwk["kid"]] = {k: v for k, v in jwk.items() if k != "kid"}
    trusted = trusted_keys(chain, anchors, known)
    first = chain[0]
    try:
        first_seq, first_prev = int(first["seq"]), str(first["prev"])
    except (KeyError, ValueError, TypeError) as exc:
        raise AuditError(f"evidence pack: first entry unreadable: {exc}") from exc
    head = pack.get("head")
    noted = None
    if isinstance(head, dict) and "seq" in head and "hash" in head:
        noted = (int(head["seq"]), str(head["hash"]))
    verdict = check_chain(
        chain, trusted, first_seq=first_seq, first_prev=first_prev, expect_head=noted
    )
    if verdict.ok and verdict.head != noted:
        return Verdict(
            verdict.entries,
            verdict.head,
            Break(
                verdict.head[0] if verdict.head else 0,
                "truncated",
                f"the pack's entries end at {verdict.head} but its head says {noted}",
            ),
            verdict.keys,
        )
    if verdict.ok and expect_head is not None:  # a head noted elsewhere: the pack reaches it
        return check_chain(
            chain, trusted, first_seq=first_seq, first_prev=first_prev, expect_head=expect_head
        )
    return verdict
