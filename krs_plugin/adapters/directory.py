"""The ``directory`` adapter: BIND-format key files in one folder, the embedded default.

It is what the KRS does when no nameserver is configured, and a building block for operator hooks
(a folder that a script or BIND's ``key-directory`` reads). There is no server to load or ask:
verifying is reading the files back. The smallest example of ``BaseAdapter`` (docs/adapters.md).

The distribution's ``cds`` marking (docs/payload.md) is kept beside the keys, in
``K<zone>+krs-cds.json`` (cdsset.py), and reported as the ``cds`` and ``cdnskey`` the folder
"serves", so a directory node passes a gate that compares CDS sets.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.name

from krs_plugin.adapters.base import (
    BaseAdapter,
    InstalledKey,
    KeyPlan,
    PlannedKey,
    Problem,
    Verification,
    ZoneChange,
)
from krs_plugin.adapters.cdsset import (
    NO_MARKING,
    Marking,
    key_changed,
    marking_file,
    next_marking,
    read_marking,
    write_marking,
)
from krs_plugin.adapters.cdsset import expected as cds_expected
from krs_plugin.adapters.dnscheck import is_active, is_published, signs_unpublished
from krs_plugin.adapters.keyfiles import KeyFolder, decode_snapshot, encode_snapshot, tags_in
from krs_plugin.dnssec.bindfiles import bind_private_text
from krs_plugin.errors import AdapterError, ConfigError


@dataclass(kw_only=True)
class FolderChange(ZoneChange):
    """An apply to the folder, with the zone's CDS marking before and after the plan."""

    cds_before: Marking = NO_MARKING
    cds_after: Marking = NO_MARKING


class DirectoryAdapter(BaseAdapter[FolderChange]):
    name = "directory"
    settings_keys = frozenset({"path"})

    def configure(self, settings: Mapping[str, Any]) -> None:
        raw = settings.get("path")
        if not isinstance(raw, str):
            raise ConfigError("adapter.settings.path: required for the directory adapter")
        self.path = self.path_setting(raw)
        self.folder = KeyFolder(self.path)

    def check(self) -> list[Problem]:
        if not self.path.is_dir():
            return [
                Problem(f"key directory {self.path} does not exist", f"mkdir -m 0700 {self.path}")
            ]
        if not os.access(self.path, os.W_OK):
            return [Problem(f"key directory {self.path} is not writable", "fix its owner or mode")]
        return []

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return self.folder.installed_keys(zone)

    def read_served(self, zone: dns.name.Name) -> Mapping[str, object] | None:
        """The folder is what this node serves: its keys as a server would serve them now
        (published ones in the DNSKEY set, active KSKs signing it, active ZSKs, or the active
        KSKs/CSKs when there is no ZSK, signing the zone), so that a policy's steps can pass the
        gate on a directory node too (docs/lifecycle.md, "The gate"). ``source`` says so. A key
        that signs unpublished (dnscheck.signs_unpublished: an algorithm rollover) is not in the
        DNSKEY set and signs as an active key does."""
        now = int(time.time())
        keys = [(key, timing) for _, key, timing in self.folder.read_keys(zone)]
        published = [(k, t) for k, t in keys if is_published(t, now)]
        active = [k for k, t in published if is_active(t, now)]
        active += [k for k, t in keys if signs_unpublished(t, now)]
        zsks = [k.key_tag for k in active if not k.flags & 1]
        served: dict[str, object] = {
            "zone": zone.to_text(),
            "read_at": now,
            "source": "key folder",
            "dnskey": sorted([k.key_tag, k.algorithm, k.flags] for k, _ in published),
            "dnskey_ttl": max((k.ttl for k, _ in published), default=None),
            "dnskey_signers": sorted(k.key_tag for k in active if k.flags & 1),
            "soa_signers": sorted(zsks or [k.key_tag for k in active]),
        }
        # CDS and CDNSKEY as dnscheck.read_served reports them, and only when there are some
        cds = self._cds(zone, read_marking(self.path, zone), keys, now)
        served.update((name, entries) for name, entries in cds.report().items() if entries)
        return served

    @staticmethod
    def _cds(zone: dns.name.Name, marking: Marking, keys: list[Any], now: int) -> Any:
        """What a server would serve as CDS/CDNSKEY for ``marking`` at ``now`` (cdsset.py)."""
        marked = [
            (k.key_tag, k.algorithm, k.flags, t)
            for k, t in keys
            if (k.key_tag, k.algorithm) in marking[0] and k.flags == 257
        ]
        return cds_expected(marked, marking[1], now)

    def snapshot(self, zone: dns.name.Name) -> str:
        return encode_snapshot(self.folder.snapshot(zone))

    def restore(self, zone: dns.name.Name, snapshot: str) -> str:
        self.folder.restore(zone, decode_snapshot(self.path, snapshot))
        return "key directory restored"

    # --- the apply hooks (base.BaseAdapter.apply) -------------------------------------------

    def begin(self, zone: dns.name.Name, plan: KeyPlan, now: int) -> FolderChange:
        problems = self.check()
        if problems:
            raise AdapterError(problems[0].what)
        self.folder.refuse_shared_file_names(zone, plan)
        before = read_marking(self.path, zone)
        return FolderChange(
            zone=zone, plan=plan, now=now, cds_before=before, cds_after=next_marking(plan, *before)
        )

    def write_key(self, change: FolderChange, planned: PlannedKey) -> bool:
        key = planned.key
        cds = key_changed(
            change.cds_before, change.cds_after, key.key_tag, key.algorithm, key.flags
        )
        return self.folder.write_key(key, planned.timing) or cds

    def retire_key(self, change: FolderChange, tag: int) -> bool:
        for _, key, timing in self.folder.read_keys(change.zone, tag)[:1]:
            if timing.inactive is None:
                new = replace(timing, inactive=change.now)
                if change.plan.retire_delete_at is not None:
                    new = replace(new, delete=change.plan.retire_delete_at)
                return self.folder.write_key(key, new)
        return False

    def remove_key(self, change: FolderChange, tag: int) -> bool:
        return self.folder.delete_key(change.zone, tag)

    def load(self, change: FolderChange) -> None:
        """Nothing to load: whatever reads the folder reads the files as they are. The CDS
        marking is written here, once, when the plan changes it."""
        if change.cds_after != change.cds_before:
            change.step = f"write {marking_file(self.path, change.zone).name}"
            write_marking(self.path, change.zone, change.cds_after)

    def verify(self, change: FolderChange) -> Verification:
        """The files on disk hold exactly the planned keys (there is no server to query): each
        installed key's ``.key`` file exists and its ``.private`` file holds exactly that key
        with the planned timing; no file is left named with a removed key's tag.

        Compares bytes instead of parsing the files back (a quarter of a millisecond a key:
        seconds for a distribution of 10,000 zones)."""
        files = self.folder.files(change.zone)
        names = {p.name for p in files}
        details = []
        for planned in change.plan.install:
            stem = self.path / planned.key.basename
            expected = bind_private_text(planned.key, planned.timing).encode()
            try:
                same = Path(f"{stem}.private").read_bytes() == expected
            except FileNotFoundError:
                same = False
            if not same or f"{stem.name}.key" not in names:
                details.append(f"key {planned.key.key_tag} is not in {self.path}")
        present = tags_in(dict.fromkeys(files, b""))
        for tag in change.plan.remove:
            if tag in present:
                details.append(f"key {tag} is still in {self.path}")
        planned_cds = getattr(change, "cds_after", None)  # None: a bare ZoneChange (tests)
        if planned_cds is not None and read_marking(self.path, change.zone) != planned_cds:
            where = marking_file(self.path, change.zone)
            details.append(f"the CDS marking in {where} is not as planned")
        return Verification(not details, tuple(details))

    def finish(self, change: FolderChange) -> None:
        """What a write cut short left (a full disk, a kill) goes: keyfiles.py."""
        self.folder.remove_incomplete(change.zone)
