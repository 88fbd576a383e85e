"""Knot DNS adapter: keys into Knot's KASP database with ``keymgr``, knotd told with ``knotc``,
success decided over DNS.

Knot 3.2 takes externally managed keys in zones whose policy has ``manual: on`` and whose
``dnssec-signing`` is on (docs/servers/knot.md). What shapes the steps (verified by hand and by
the tests against knotd 3.2.6):

- keymgr may write the KASP database while knotd runs (LMDB; 20 import/delete cycles against a
  running knotd, no lock errors), so nothing is stopped: keys are imported, then
  ``knotc -b zone-keys-load`` makes knotd sign with them;
- keys go in as PKCS#8 PEM with ``keymgr import-pem`` and explicit ``ksk=``/``zsk=``, because a
  CSK is a key that is both (``import-bind`` would make a flag-257 key a KSK only) and because
  the times are then set in the same step;
- knotd refuses a key set in which an algorithm lacks an active KSK and ZSK, and a zone without
  keys, and then keeps serving the old signed zone: that refusal is a failed apply, rolled back;
- a key is unpublished by setting its remove time, loading, and checking over DNS; it is deleted
  from the KASP database only after that, so a rollback can always re-time it back;
- the snapshot holds each key's PEM from the keystore, so a key deleted by a completed zone can
  still be put back when a later zone of the same distribution fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.adapters.base import (
    BaseAdapter,
    InstalledKey,
    KeyPlan,
    PlannedKey,
    Problem,
    StepFailed,
    Verification,
    ZoneChange,
)
from krs_plugin.adapters.cdsset import expected as cds_expected
from krs_plugin.adapters.dnscheck import (
    Expectation,
    KeyState,
    expectation,
    is_active,
    signs_unpublished,
    wait_served,
)
from krs_plugin.adapters.knotctl import (
    KaspKey,
    KnotTools,
    Times,
    full_times,
    knot_key_id,
    knot_times,
)
from krs_plugin.adapters.settings import existing_file, seconds, server_address
from krs_plugin.adapters.tools import install_hint, secret_file
from krs_plugin.errors import AdapterError, ConfigError, KrsError

log = logging.getLogger(__name__)

KEYS_BACK_NOT_LOADED = (
    "the previous keys are back in Knot's KASP database (nothing is lost), but knotd could not "
    "be told to load them: it serves them once it runs again (or after knotc zone-keys-load)"
)
NO_WAY_BACK = (
    "the KASP database has no keys again, but knotd keeps serving the zone as last signed: "
    "Knot cannot load a signed zone without keys"
)

CDS_POLICIES = ("rollover", "delete-dnssec")
"""The cds-cdnskey-publish values under which Knot serves exactly what the KDC marks: rollover,
the CDS of the ready KSKs only (always and double-ds add the active ones: measured on 3.2.6), and
delete-dnssec, the delete records only."""

SETTINGS = {
    "config",
    "socket",
    "knotc",
    "keymgr",
    "server",
    "keystore",
    "owner",
    "timeout",
    "verify_timeout",
}


@dataclass(kw_only=True)
class KaspChange(ZoneChange):
    """An apply in Knot: the zone's KASP keys as read first, and the ids of the keys removed
    (deleted from the KASP database only once knotd no longer serves them)."""

    keys: list[KaspKey]
    cds_delete: bool = False  # the zone's policy serves the delete CDS/CDNSKEY
    removed_ids: list[str] = field(default_factory=list)


class KnotAdapter(BaseAdapter[KaspChange]):
    name = "knot"
    settings_keys = frozenset(SETTINGS)

    def configure(self, settings: Mapping[str, Any]) -> None:
        config = existing_file(
            self.path_setting(settings.get("config", "/etc/knot/knot.conf")),
            "config",
            "knotd's configuration, which knotc -c and keymgr -c read",
        )
        socket = self.path_setting(settings["socket"]) if "socket" in settings else None
        self.tools = KnotTools(
            config=config,
            socket=socket,
            knotc=str(settings.get("knotc", "knotc")),
            keymgr=str(settings.get("keymgr", "keymgr")),
            timeout=seconds(settings, "timeout", 10),
        )
        self.host, self.port = server_address(settings)
        self._keystore = self.path_setting(settings["keystore"]) if "keystore" in settings else None
        owner = settings.get("owner")
        if owner is not None and (not isinstance(owner, str) or not owner):
            raise ConfigError("adapter.settings.owner: must be a user name (e.g. knot)")
        self.owner = owner
        self.verify_timeout = seconds(settings, "verify_timeout", 10)
        self._batch_keys: dict[dns.name.Name, list[KaspKey]] = {}  # as verified, in a batch

    # --- where Knot keeps things ------------------------------------------------------------

    def keystore(self) -> Path:
        """The folder of the PEM keystore: ``keystore`` from the settings, else Knot's default
        (``<kasp-db>/keys``, the KASP database being ``<storage>/keys`` unless configured)."""
        if self._keystore is None:
            kasp = self.tools.conf_read("database.kasp-db")
            storage = self.tools.conf_read("database.storage") or "/var/lib/knot"
            kasp_path = Path(kasp) if kasp else Path(storage) / "keys"
            if not kasp_path.is_absolute():
                kasp_path = Path(storage) / kasp_path
            self._keystore = kasp_path / "keys"
        return self._keystore

    def _stage_owner(self) -> tuple[int, int] | None:
        """keymgr run as root switches to knotd's user before it opens the PEM: the staged file
        must be that user's. ``owner`` names it; as root the keystore's owner is taken."""
        if self.owner is not None:
            import pwd

            entry = pwd.getpwnam(self.owner)
            return entry.pw_uid, entry.pw_gid
        if os.geteuid() == 0:
            try:
                info = self.keystore().parent.stat()
            except OSError:
                return None
            if info.st_uid != 0:
                return info.st_uid, info.st_gid
        return None

    # --- the Adapter interface ------------------------------------------------------------

    def server_problem(self) -> str | None:
        """``knotc status``: knotd runs and answers its control socket."""
        try:
            self.tools.knotc("status")
        except AdapterError as exc:
            return f"knotd does not answer its control socket: {exc}"
        return None

    def check(self) -> list[Problem]:
        for binary in (self.tools.knotc_binary, self.tools.keymgr_binary):
            if shutil.which(binary) is None:
                return [Problem(f"{binary} not found", install_hint(binary))]
        try:
            self.tools.knotc("status")
        except AdapterError as exc:
            return [
                Problem(
                    f"knotd's control socket does not answer: {exc}",
                    "check that knotd runs, the control section of knot.conf, and that the "
                    "KRS user may use the socket (adapter.settings.config / socket)",
                )
            ]
        problems = [p for zone in self.zones if (p := self._zone_problem(zone)) is not None]
        keystore = self.keystore()
        if not os.access(keystore, os.R_OK | os.X_OK) and keystore.exists():
            problems.append(
                Problem(
                    f"the KRS cannot read Knot's keystore {keystore}, needed to roll back",
                    "run the KRS as root or as knotd's user (docs/servers/knot.md)",
                )
            )
        return problems

    def _zone_problem(self, zone: dns.name.Name) -> Problem | None:
        """Why Knot cannot take pushed keys for ``zone``, or None. Settings the zone does not
        set come from its template, as knotd applies them."""
        name = zone.to_text()
        try:
            settings = self.tools.conf_section(f"zone[{name}]")
        except AdapterError as exc:
            if "invalid identifier" in str(exc):
                return Problem(
                    f"Knot does not serve zone {name} (no such zone in its configuration)",
                    f"add zone {name} to knot.conf or remove it from zones in krs.yaml",
                )
            return Problem(f"knotd does not answer for zone {name}: {exc}", "is knotd running?")
        if "dnssec-signing" not in settings or "dnssec-policy" not in settings:
            template = settings.get("template", "default")
            with contextlib.suppress(AdapterError):  # no such template: Knot's defaults
                settings = {**self.tools.conf_section(f"template[{template}]"), **settings}
        if settings.get("dnssec-signing") != "on":
            return Problem(
                f"zone {name} has dnssec-signing off, so Knot would not sign with the keys",
                f"set dnssec-signing: on for {name} (docs/servers/knot.md)",
            )
        policy = settings.get("dnssec-policy", "default")
        items = {} if policy == "default" else self.tools.conf_section(f"policy[{policy}]")
        if items.get("manual") != "on":
            return Problem(
                f"zone {name} uses policy {policy}, which is not manual: Knot would generate "
                "and roll keys of its own",
                f"give {name} a policy with manual: on (docs/servers/knot.md)",
            )
        publish = items.get("cds-cdnskey-publish", "rollover")
        if publish not in CDS_POLICIES:
            return Problem(
                f"zone {name} uses policy {policy} with cds-cdnskey-publish: {publish}: Knot "
                "would serve CDS/CDNSKEY for keys the KDC did not mark",
                f"set cds-cdnskey-publish: rollover (Knot's default) in policy {policy}, or "
                "delete-dnssec while the KDC asks for the delete CDS (docs/servers/knot.md)",
            )
        digest = items.get("cds-digest-type", "sha256")
        if digest != "sha256":
            return Problem(
                f"zone {name} uses policy {policy} with cds-digest-type: {digest}: the KRS "
                "serves CDS with digest type 2 (SHA-256) on every server",
                f"remove cds-digest-type from policy {policy} (its default is sha256)",
            )
        return None

    def _cds_delete(self, zone: dns.name.Name) -> bool:
        """Whether the zone's policy has ``cds-cdnskey-publish: delete-dnssec``: Knot then serves
        the delete CDS/CDNSKEY (and no key's CDS), which no key timer can say."""
        name = zone.to_text()
        policy = self.tools.conf_read(f"zone[{name}].dnssec-policy")
        if policy is None:
            template = self.tools.conf_read(f"zone[{name}].template") or "default"
            with contextlib.suppress(AdapterError):
                policy = self.tools.conf_read(f"template[{template}].dnssec-policy")
        if policy is None or policy == "default":
            return False
        return self.tools.conf_read(f"policy[{policy}].cds-cdnskey-publish") == "delete-dnssec"

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return [
            InstalledKey(zone, k.tag, k.algorithm, k.flags, k.timing) for k in self.tools.keys(zone)
        ]

    def snapshot(self, zone: dns.name.Name) -> str:
        return json.dumps({"keys": self._snapshot_entries(self.tools.keys(zone))})

    def _snapshot_entries(self, kasp_keys: list[KaspKey]) -> list[dict[str, Any]]:
        keys = []
        for key in kasp_keys:
            entry: dict[str, Any] = {
                "id": key.key_id,
                "tag": key.tag,
                "algorithm": key.algorithm,
                "ksk": key.ksk,
                "zsk": key.zsk,
                "times": list(key.times),
            }
            if not key.public_only:
                entry["pem"] = base64.b64encode(self._pem(key.key_id)).decode()
            keys.append(entry)
        return keys

    def _pem(self, key_id: str) -> bytes:
        path = self.keystore() / f"{key_id}.pem"
        try:
            return path.read_bytes()
        except OSError as exc:
            raise AdapterError(
                f"knot: cannot read key {key_id} from the keystore ({exc}); the KRS needs it to "
                "roll back: run it as root or as knotd's user, or set adapter.settings.keystore"
            ) from exc

    def restore(self, zone: dns.name.Name, snapshot: str) -> str:
        outcome = self._restore(zone, json.loads(snapshot)["keys"])
        if outcome == NO_WAY_BACK or (outcome or "").startswith(KEYS_BACK_NOT_LOADED):
            log.warning("knot, zone %s: %s", zone, outcome)
            return str(outcome)
        if outcome is not None:
            raise AdapterError(f"knot, zone {zone}: restoring the previous keys: {outcome}")
        return "knotd serves the previous keys again"

    # --- the apply hooks (base.BaseAdapter.apply) -------------------------------------------

    def begin(self, zone: dns.name.Name, plan: KeyPlan, now: int) -> KaspChange:
        problem = self._zone_problem(zone)
        if problem is not None:  # before the KASP database is touched
            raise AdapterError(problem.what)
        cds_delete = self._cds_delete(zone)
        if plan.install:
            asked = any(p.cds == "delete" for p in plan.install)
            if asked and not cds_delete:
                raise AdapterError(
                    f"the distribution asks zone {zone} to serve the delete CDS/CDNSKEY, which "
                    "Knot serves only under a policy with cds-cdnskey-publish: delete-dnssec: "
                    "give the zone such a policy in knot.conf (docs/servers/knot.md)"
                )
            if cds_delete and not asked:
                raise AdapterError(
                    f"zone {zone}'s policy has cds-cdnskey-publish: delete-dnssec, so Knot "
                    "serves the delete CDS/CDNSKEY, but the distribution does not ask for it: "
                    "give the zone its policy with cds-cdnskey-publish: rollover again"
                )
        return KaspChange(
            zone=zone, plan=plan, now=now, keys=self.tools.keys(zone), cds_delete=cds_delete
        )

    def write_key(self, change: KaspChange, planned: PlannedKey) -> bool:
        """Import ``planned`` or bring its times up to date; False when Knot has it exactly."""
        key = planned.key
        cds = planned.cds == "publish" and planned.role != "ZSK"
        key_id = knot_key_id(key)
        existing = next((k for k in change.keys if k.key_id == key_id and not k.public_only), None)
        times = knot_times(planned.timing, change.now, cds, existing)
        if existing is not None:
            if existing.times == times:
                return False  # its CDS marking included: a change of cds is a change
            self._set_times(change, existing, times)
            return True
        ksk = planned.role in ("KSK", "CSK")
        zsk = planned.role in ("ZSK", "CSK")
        self._import(change.zone, key.to_pkcs8_pem(), key.algorithm, ksk=ksk, zsk=zsk, times=times)
        change.keys.append(KaspKey(key_id, key.key_tag, key.algorithm, ksk, zsk, False, times))
        return True

    @staticmethod
    def _replaced(keys: list[KaspKey], key: KaspKey, new: KaspKey | None) -> None:
        """``change.keys`` follows what the KASP database now holds (``verify_batch`` reads it
        from there instead of asking keymgr once more per zone)."""
        index = keys.index(key)
        if new is None:
            del keys[index]
        else:
            keys[index] = new

    def _set_times(self, change: KaspChange, key: KaspKey, times: Times) -> None:
        self.tools.set_times(change.zone, key.key_id, times)
        self._replaced(change.keys, key, replace(key, times=full_times(times)))

    def retire_key(self, change: KaspChange, tag: int) -> bool:
        retired = False
        for key in self._with_tag(change.keys, tag):
            retire, remove = key.times[3:5]
            if key.unpublished:
                retire = remove  # Knot retires it by its remove time (knotctl.TIMES)
            if retire == 0 or retire > change.now:
                new_remove = change.plan.retire_delete_at or remove
                self._set_times(change, key, key.retimed(change.now, new_remove))
                retired = True
        return retired

    def remove_key(self, change: KaspChange, tag: int) -> bool:
        """Set the remove time to now; the key leaves the KASP database in ``finish``."""
        found = False
        for key in self._with_tag(change.keys, tag):
            retire = key.times[3]
            retire = retire if 0 < retire <= change.now else change.now
            self._set_times(change, key, key.retimed(retire, change.now))
            change.removed_ids.append(key.key_id)
            found = True
        return found

    def load(self, change: KaspChange) -> None:
        if change.changed:
            change.step = "knotc zone-keys-load"
            self.tools.load_keys(change.zone)

    def verify(self, change: KaspChange) -> Verification:
        """knotd serves the KASP database's keys as their times say, signatures valid; the
        plan's removed keys gone."""
        return self._wait(change.zone, change.removed, change.cds_delete)

    def finish(self, change: KaspChange) -> None:
        change.step = "delete removed keys"
        for key_id in change.removed_ids:
            self.tools.delete(change.zone, key_id)
            gone = [k for k in change.keys if k.key_id == key_id]
            for key in gone:
                self._replaced(change.keys, key, None)

    # --- many zones at once (BaseAdapter.apply_batch) ---------------------------------------

    @contextlib.contextmanager
    def batch_context(self, zones: Sequence[dns.name.Name]) -> Iterator[None]:
        """knotd's configuration, zone status and the KASP database's zone list read once for
        the batch (KnotTools.batch): a new node's zones then cost no keymgr call to snapshot
        or check, only the imports."""
        with self.tools.batch():
            try:
                yield
            finally:
                self._batch_keys.clear()

    def load_batch(self, changes: Sequence[KaspChange]) -> None:
        """One ``knotc -b zone-keys-load`` (and one ``zone-reload`` for zones never loaded)
        naming every changed zone, instead of one knotc per zone; a zone knotd refuses fails
        the batch, named."""
        changed = [c for c in changes if c.changed]
        for change in changed:
            change.step = "knotc zone-keys-load"
        errors = self.tools.load_keys_many([c.zone for c in changed])
        for change in changed:
            error = errors.get(change.zone.to_text().lower())
            if error is not None:
                raise StepFailed(change, AdapterError(error))

    def verify_batch(self, changes: Sequence[KaspChange]) -> list[Verification]:
        """Every zone's expectation from the keys the apply wrote (``change.keys`` follows the
        KASP database), all zones asked at once over one connection."""
        expects = [self._expect(c.zone, c.keys, c.removed, c.cds_delete) for c in changes]
        for change in changes:
            self._batch_keys[change.zone] = list(change.keys)
        return self.wait_served_batch(expects, self.verify_timeout)

    @staticmethod
    def _with_tag(keys: list[KaspKey], tag: int) -> list[KaspKey]:
        return [k for k in keys if k.tag == tag and not k.public_only]

    def _import(
        self,
        zone: dns.name.Name,
        pem: bytes,
        algorithm: int,
        *,
        ksk: bool,
        zsk: bool,
        times: Iterable[int],
    ) -> str:
        """Hand keymgr the PEM in a private folder of its own, removed right after."""
        with secret_file("key.pem", pem, owner=self._stage_owner()) as path:
            return self.tools.import_pem(
                zone, path, algorithm, ksk=ksk, zsk=zsk, times=tuple(times)
            )

    def _wait(
        self, zone: dns.name.Name, removed: Iterable[int], cds_delete: bool | None = None
    ) -> Verification:
        """Until knotd serves the KASP keys as their times say, and the CDS/CDNSKEY of the keys
        marked for it (or the delete records, under a delete-dnssec policy)."""
        kasp = self.tools.keys(zone)
        return wait_served(
            self._expect(zone, kasp, removed, cds_delete),
            self.host,
            self.port,
            timeout=self.verify_timeout,
        )

    def _expect(
        self,
        zone: dns.name.Name,
        kasp_keys: Sequence[KaspKey],
        removed: Iterable[int],
        cds_delete: bool | None = None,
    ) -> Expectation:
        """What knotd must serve for the zone's KASP keys at their times."""
        now = int(time.time())
        kasp = [k for k in kasp_keys if not k.public_only]
        keys = [
            KeyState(
                k.tag,
                k.flags,
                k.timing,
                self._dnskey(zone, k) if signs_unpublished(k.timing, now) else None,
                k.algorithm,
            )
            for k in kasp
        ]
        if cds_delete is None:
            cds_delete = self._cds_delete(zone)
        marked = [(k.tag, k.algorithm, k.flags, k.timing) for k in kasp if k.cds]
        expect = replace(
            expectation(zone, keys, removed, now),
            cds=cds_expected(marked, cds_delete, now),
        )
        # A CSK marked for CDS is ready, not active, in Knot: next to an active key of its
        # algorithm that signs zone data, it signs only the DNSKEY RRset (and CDS/CDNSKEY).
        zone_signers = {
            k.algorithm for k in kasp if k.zsk and not k.cds and is_active(k.timing, now)
        }
        quiet = {k.tag for k in kasp if k.cds and k.zsk and k.algorithm in zone_signers}
        if quiet and expect.soa_signers - quiet:
            expect = replace(expect, soa_signers=expect.soa_signers - quiet)
        return expect

    def _dnskey(self, zone: dns.name.Name, key: KaspKey) -> DNSKEY:
        """A key's DNSKEY, from keymgr (its RRSIGs are validated against it while it signs
        unpublished)."""
        text = self.tools.dnskey(zone, key.key_id).split("DNSKEY", 1)[-1].strip()
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, text)
        assert isinstance(rdata, DNSKEY)
        return rdata

    def unpublished_dnskeys(self, zone: dns.name.Name) -> list[Any]:
        now = int(time.time())
        keys = self._batch_keys.get(zone)
        return [
            self._dnskey(zone, k)
            for k in (self.tools.keys(zone) if keys is None else keys)
            if not k.public_only and signs_unpublished(k.timing, now)
        ]

    def _restore(self, zone: dns.name.Name, before: list[dict[str, Any]]) -> str | None:
        """Make the zone's KASP keys ``before`` again and have knotd sign with them; None when
        knotd serves them, else what went wrong (for the error message)."""
        wanted = {entry["id"]: entry for entry in before}
        try:
            current = {k.key_id: k for k in self.tools.keys(zone)}
            added = [k for k in current.values() if k.key_id not in wanted]
            for key in added:
                self.tools.delete(zone, key.key_id)
            for key_id, entry in wanted.items():
                times = full_times(entry["times"])
                if key_id not in current:
                    if "pem" not in entry:
                        continue  # another signer's public key: not ours to bring back
                    self._import(
                        zone,
                        base64.b64decode(entry["pem"]),
                        entry["algorithm"],
                        ksk=entry["ksk"],
                        zsk=entry["zsk"],
                        times=times,
                    )
                elif current[key_id].times != times:
                    self.tools.set_times(zone, key_id, times)
        except (KrsError, OSError) as exc:
            return f"the previous keys could not all be put back into Knot's KASP database: {exc}"
        try:
            if not wanted:  # knotd cannot load a signed zone without keys
                return NO_WAY_BACK if added and self.tools.zone_loaded(zone) else None
            self.tools.load_keys(zone)
        except (KrsError, OSError) as exc:
            return f"{KEYS_BACK_NOT_LOADED} ({exc})"
        result = self._wait(zone, [k.tag for k in added])
        return None if result.ok else "; ".join(result.details)
