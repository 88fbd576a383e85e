"""One distribution through the KRS: unpack, validate, apply policy, plan, apply, record.

The stages and their order are those of docs/architecture.md. Every refusal is recorded in the
state store with the stage that refused it, and nothing reaches the adapter before every check
has passed. Applying is all or nothing across the distribution's zones
(``transaction.apply_atomically``, the one owner of rollback), journalled for crash recovery.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.name

from krs_plugin.adapters.base import Adapter, ApplyResult, KeyPlan
from krs_plugin.adapters.transaction import apply_atomically, restore_zones
from krs_plugin.config import Config
from krs_plugin.confirmation import failure_report, served_part
from krs_plugin.crypto import JoseKey, load_hpke_private, load_hybrid_private, load_jose_key
from krs_plugin.crypto.pqsig import MldsaKey, load_mldsa_public
from krs_plugin.errors import DONE, KrsError, PolicyError, outcome_of, stage_of
from krs_plugin.memory import give_back
from krs_plugin.payload import Payload, Ping, RollKey, parse_payload
from krs_plugin.protocol import CHUNK
from krs_plugin.receiver import kdctrust
from krs_plugin.receiver.plan import build_plans
from krs_plugin.receiver.reconcile import adapter_identity
from krs_plugin.receiver.rekey import alternate_keys, retire_previous
from krs_plugin.receiver.store import ReceiverStore
from krs_plugin.receiver.unpack import NodeIdentity, unpack_distribution
from krs_plugin.sqlitedb import StateWriteError

log = logging.getLogger("krs_plugin.receiver.pipeline")


@dataclass(frozen=True)
class Outcome:
    distribution_id: str
    outcome: str  # applied | rejected | failed
    stage: str
    error: str | None = None
    results: tuple[ApplyResult, ...] = ()
    plans: tuple[KeyPlan, ...] = ()
    report: dict[str, object] = field(default_factory=dict)
    rekey_requested: bool = False  # a ping carried the KDC's ``rekey`` (receiver/rekey.py)
    rekey_backend: str | None = None  # ... naming a backend to move to (``rekey: NAME``)


@dataclass(frozen=True, slots=True)
class Carried:
    """What the pipeline keeps of a payload once its plans are made: the keys it carried, for
    the state store and the reports. The parsed entries themselves (each key with its envelope,
    timing and metadata, about 1 KB beyond what the plans share) are freed before the adapter
    applies a distribution of 20,000 keys."""

    entries: tuple[tuple[str, int | str], ...]
    """``(zone, key tag)`` of each key entry in the KDC's order, ``("ping", "nonce-...")`` of a
    ping: the confirmation's ``successful_keys``, one zone text per zone."""
    keys: tuple[tuple[str, int, int, int], ...]  # each roll_key: zone, tag, algorithm, flags
    removed: tuple[tuple[str, int], ...]  # each delete_key: zone, tag

    @classmethod
    def of(cls, payload: Payload) -> Carried:
        entries: list[tuple[str, int | str]] = []
        keys: list[tuple[str, int, int, int]] = []
        removed: list[tuple[str, int]] = []
        texts: dict[dns.name.Name, str] = {}
        for e in payload.entries:
            if isinstance(e, Ping):
                entries.append(("ping", f"nonce-{e.nonce}"))
                continue
            zone = texts.get(e.zone) or texts.setdefault(e.zone, e.zone.to_text())
            entries.append((zone, e.key_tag))
            if isinstance(e, RollKey):
                keys.append((zone, e.key_tag, e.key.algorithm, e.key.flags))
            else:
                removed.append((zone, e.key_tag))
        return cls(tuple(entries), tuple(keys), tuple(removed))

    @property
    def failed_keys(self) -> list[tuple[str, int]]:
        return [(zone, tag) for zone, tag in self.entries if isinstance(tag, int)]


def load_identity(config: Config) -> tuple[NodeIdentity, JoseKey | None, JoseKey | None]:
    """This node's keys, the KDC verification key and the node's signing key, from config."""
    identity = NodeIdentity(
        config.node_id,
        hpke=load_hpke_private(config.keys.hpke) if config.keys.hpke else None,
        jose=load_jose_key(config.keys.jose) if config.keys.jose else None,
        hybrid=load_hybrid_private(config.keys.hpke_pq) if config.keys.hpke_pq else None,
        alternates=lambda backend: alternate_keys(config, backend),
    )
    verifier = load_jose_key(config.kdc.verification_key) if config.kdc.verification_key else None
    signer = load_jose_key(config.keys.signing) if config.keys.signing else None
    return identity, verifier, signer


class Pipeline:
    def __init__(
        self,
        config: Config,
        adapter: Adapter,
        store: ReceiverStore,
        identity: NodeIdentity,
        verifier: JoseKey | None,
    ) -> None:
        self.config = config
        self.adapter = adapter
        self.store = store
        self.identity = identity
        self.verifier = verifier
        self.kdc = config.control_zone.to_text()
        self.adapter_id = adapter_identity(config)  # recorded with each apply
        pq_file = config.kdc.pq_verification_key  # required ML-DSA-65 signature, when set
        self.pq_verifiers: tuple[MldsaKey, ...] = (load_mldsa_public(pq_file),) if pq_file else ()

    def process(
        self,
        dist_id: str,
        manifest: CHUNK,
        chunks: Sequence[CHUNK],
        *,
        now: float | None = None,
        dry_run: bool = False,
    ) -> Outcome:
        """Check, plan and (unless ``dry_run``) apply one distribution; never raises KrsError.
        Applying holds the state's lock (``ReceiverStore.exclusive``): one apply at a time."""
        if dry_run:
            return self._process(dist_id, manifest, chunks, now, dry_run)
        with self.store.exclusive():
            return self._process(dist_id, manifest, chunks, now, dry_run)

    def _process(self, dist_id: str, manifest: CHUNK, chunks: Sequence[CHUNK], now: float | None,
                 dry_run: bool) -> Outcome:  # fmt: skip
        """``process``, the lock held unless ``dry_run``."""
        moment = time.time() if now is None else now
        serial = int(dist_id, 16)
        known: Carried | None = None  # the payload once read: its keys go in a failure report
        try:
            self._check_replay(dist_id, serial)
            trusted = [t.key for t in kdctrust.trusted_keys(self.store.db, self.verifier)]
            unpacked = unpack_distribution(
                dist_id,
                manifest,
                chunks,
                self.identity,
                trusted or None,
                now=moment,
                limits=self.config.limits,
                allow_unsigned=self.config.kdc.allow_unsigned,
                clock_skew=self.config.clock_skew,
                pq_verifiers=self.pq_verifiers,
            )
            if not unpacked.signed:
                log.warning("distribution %s accepted UNSIGNED (allow_unsigned: true)", dist_id)
            retire_after = unpacked.manifest.metadata.retire_time
            verified_by = unpacked.verified_by
            opened_with = unpacked.opened_with
            cleartext = [unpacked.plaintext]
            del unpacked  # parse_payload holds the cleartext (megabytes) alone, and frees it
            payload = parse_payload(
                cleartext.pop(),  # once it is text
                now=moment,
                expected_distribution_id=dist_id,
                clock_skew=int(self.config.clock_skew),
            )
            known = Carried.of(payload)
            rekey_asked = any(isinstance(e, Ping) and e.rekey for e in payload.entries)
            move_to = next((e.rekey_backend for e in payload.entries
                            if isinstance(e, Ping) and e.rekey_backend), None)  # fmt: skip
            if opened_with is not None and not dry_run:
                retire_previous(self.config, opened_with)  # sealed to the new key: old ones go
            if verified_by is not None and not dry_run:
                self._trust(dist_id, verified_by, payload, moment)
            self._check_zones(payload)
            plans = build_plans(
                payload, self.adapter.current_keys, now=int(moment), retire_after=retire_after
            )
            del payload  # the plans hold the keys; ``known`` what the reports need
            give_back()  # the cleartext and its parse, freed in the middle of the heap
            if dry_run:
                return Outcome(dist_id, "planned", "plan", plans=tuple(plans))
            results = self._apply(dist_id, plans)
        except KrsError as exc:
            stage = stage_of(exc)  # errors.STAGES, docs/operations.md "Errors and what to do"
            outcome = outcome_of(stage)
            if not dry_run:
                self.store.record_outcome(
                    dist_id, self.kdc, serial, outcome, stage=stage, error=str(exc), now=moment,
                    report=self.failure_report(outcome, stage, str(exc), known),
                )  # fmt: skip
            log.warning("distribution %s %s at %s: %s", dist_id, outcome, stage, exc)
            return Outcome(dist_id, outcome, stage, str(exc))
        assert known is not None
        report = self._report(known, results)
        self.store.record_applied(
            dist_id, self.kdc, serial, list(known.keys), list(known.removed), report, now=moment,
            adapter=self.adapter_id,
        )  # fmt: skip
        log.info("distribution %s applied: %d zone(s)", dist_id, len(plans))
        return Outcome(
            dist_id, "applied", DONE, None, tuple(results), tuple(plans), report, rekey_asked,
            move_to,
        )  # fmt: skip

    def recover(self) -> list[str]:
        """Roll back applies that a crash interrupted, so each zone holds its old key set; the
        caller fetches those distributions again to complete them. Returns their ids."""
        with self.store.exclusive():
            return self._recover()

    def _recover(self) -> list[str]:
        recovered = []
        for dist_id, snapshots in self.store.interrupted():
            outcome = restore_zones(
                self.adapter, {dns.name.from_text(z): s for z, s in snapshots.items()}
            )
            error = "interrupted while applying; rolled back to the previous keys"
            self.store.record_outcome(
                dist_id,
                self.kdc,
                int(dist_id, 16),
                "failed",
                stage="apply",
                error=error,
                report=self.failure_report("failed", "apply", error),
            )
            self.store.end_apply(dist_id)
            log.warning("distribution %s was interrupted mid-apply%s", dist_id, outcome)
            recovered.append(dist_id)
        return recovered

    def _trust(self, dist_id: str, signer: JoseKey, payload: Payload, now: float) -> None:
        """What the distribution says of the KDC's keys (``kdc_keys``, ours: docs/payload.md),
        taken because ``signer``, a key this node trusts, verified it (docs/security.md,
        "Rotation"); without it, only which key verified, tried first next time."""
        if not payload.kdc_keys:
            kdctrust.note_verified(self.store.db, signer, now=now)
            return
        added, dropped = kdctrust.accept_announcement(
            self.store.db, signer, payload.kdc_keys, self.verifier, dist_id, now=now
        )
        for thumbprint in added:
            log.warning("distribution %s: KDC key %s now trusted (announced)", dist_id, thumbprint)
        for thumbprint in dropped:
            log.warning("distribution %s: KDC key %s no longer trusted", dist_id, thumbprint)

    def _check_replay(self, dist_id: str, serial: int) -> None:
        seen = self.store.seen(dist_id)
        if seen is not None and seen.outcome == "applied":
            raise PolicyError(f"distribution {dist_id} was already applied (replay)")
        last = self.store.last_serial(self.kdc)
        if last is not None and serial <= last:
            raise PolicyError(
                f"distribution {dist_id} (serial {serial}) is not newer than the last applied "
                f"from {self.kdc} (serial {last}, {last:x}): replayed or stale"
            )

    def _check_zones(self, payload: Payload) -> None:
        foreign = sorted(z.to_text() for z in payload.zones if z not in self.config.zones)
        if foreign:
            raise PolicyError(
                f"distribution names zone(s) not served by this node: {', '.join(foreign)} "
                f"(configured: {', '.join(sorted(z.to_text() for z in self.config.zones))})"
            )

    def _apply(self, dist_id: str, plans: list[KeyPlan]) -> list[ApplyResult]:
        """Apply zone by zone, all or nothing (``apply_atomically`` restores the zones it
        touched if one fails), with the snapshots journalled first for crash recovery."""

        def journal(snapshots: dict[dns.name.Name, str]) -> None:
            self.store.begin_apply(dist_id, {z.to_text(): s for z, s in snapshots.items()})

        try:
            return apply_atomically(self.adapter, plans, journal)
        except KrsError:
            # A journal row left by a full disk is replaced by the next apply's (begin_apply)
            # or rolled back again at the next start, to where it already is: no harm.
            with contextlib.suppress(StateWriteError):
                self.store.end_apply(dist_id)
            raise

    def failure_report(
        self, outcome: str, stage: str, error: str, payload: Payload | Carried | None = None
    ) -> dict[str, object] | None:
        """The report telling the KDC this node rejected the distribution or failed to apply it
        (docs/protocol.md section 6), or None when it is not sent: for ``fetch`` (the servers
        down: tried again, and the KDC would not hear it anyway), and, when the keys are unknown
        (the payload not read), from a node that does not sign its reports: a tdns KDC takes a
        report without ``failed_keys`` for a success, and only our KDC knows signing keys."""
        if stage == "fetch":
            return None
        if isinstance(payload, Payload):
            payload = Carried.of(payload)
        keys = [] if payload is None else payload.failed_keys
        if not keys and self.config.keys.signing is None:
            return None
        report = failure_report(self.config.node_id.to_text(), outcome, stage, error, keys)
        report["kdc_keys"] = kdctrust.thumbprints(self.store.db, self.verifier)
        return report

    def _report(
        self, payload: Payload | Carried, results: Sequence[ApplyResult] = ()
    ) -> dict[str, object]:
        """The confirmation: tdns's ``successful_keys``, and ours ``served``, what the server
        serves for each zone of the distribution, read back after the apply was verified
        (docs/protocol.md section 6; ``compact_report`` cuts it to fit)."""
        if isinstance(payload, Payload):
            payload = Carried.of(payload)
        ok = [{"zone_name": zone, "key_id": str(key_id)} for zone, key_id in payload.entries]
        return {
            "node_id": self.config.node_id.to_text(),
            "successful_keys": ok,
            "served": served_part(self.adapter.name, results),
            "kdc_keys": kdctrust.thumbprints(self.store.db, self.verifier),  # ours: section 6
        }
