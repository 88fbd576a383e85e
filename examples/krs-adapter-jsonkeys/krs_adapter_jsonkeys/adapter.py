"""The ``jsonkeys`` adapter: each zone's DNSSEC keys in one JSON file, for a home-grown signer.

An adapter that lives outside krs-plugin (docs/adapters.md, "A worked example"): this module and one
line in pyproject.toml's ``[project.entry-points."krs_plugin.adapters"]``. It suits a signer of
one's own that reads its keys from a JSON key store rather than from BIND's key files. The store is
a directory with one file per zone, named after the zone in lower case, final dot included, then
``json`` (``example.com.json``), mode 0600::

    {
      "format": 1,
      "zone": "example.com.",
      "keys": [
        {
          "tag": 12345,
          "algorithm": 13,
          "flags": 257,
          "role": "KSK",
          "dnskey": "example.com.\\t3600\\tIN\\tDNSKEY\\t257 3 13 mdsswUyr3DPW132mOi8V9xESWE8j...",
          "private": "Private-key-format: v1.3\\nAlgorithm: 13 (ECDSAP256SHA256)\\nPrivateKey: ...",
          "timing": {"created": 1767225600, "publish": 1767225600, "activate": 1767225600,
                     "inactive": null, "delete": null, "sync_publish": null,
                     "sync_delete": null}
        }
      ]
    }

``private`` is BIND's ``.private`` text without times: the times are in ``timing`` (Unix seconds)
only, so the signer never finds two that disagree. There is no server to load or ask: the signer
reads the file whenever it likes, so an apply edits the keys in memory, replaces the file once,
atomically, and verifies by reading it back.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
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
from krs_plugin.dnssec import KeyTiming
from krs_plugin.errors import AdapterError, ConfigError, KeyFileError, KrsError
from krs_plugin.files import SECRET_MODE, atomic_write

FORMAT = 1
"""The file format's version: a signer can refuse a file it was not written for."""

TIMING_FIELDS = tuple(f.name for f in fields(KeyTiming))

Entry = dict[str, Any]
"""One key as the file holds it (the format above), in that field order."""


def entry(planned: PlannedKey) -> Entry:
    """The entry the file is to hold for ``planned``."""
    key = planned.key
    return {
        "tag": key.key_tag,
        "algorithm": key.algorithm,
        "flags": key.flags,
        "role": planned.role,
        "dnskey": key.dnskey_text(),
        "private": key.to_bind_private(),
        "timing": asdict(planned.timing),
    }


def read_keys(path: Path) -> list[Entry]:
    """The entries of the store file ``path`` (none when there is no file yet). A file that is
    not what ``write_keys`` writes is a KeyFileError naming it: never guess at key material."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f'"format" is not {FORMAT}')
        if not isinstance(doc.get("keys"), list):
            raise ValueError('no "keys" list')
        return [_checked(raw) for raw in doc["keys"]]
    except (ValueError, KeyError, TypeError, KrsError) as exc:
        raise KeyFileError(f"{path}: not a jsonkeys key store: {exc}") from None


def _checked(raw: object) -> Entry:
    """``raw`` as ``entry`` builds one (same fields, same order, all five times): so an entry
    read back compares equal to the planned one when the key and its timing are the same."""
    if not isinstance(raw, dict) or not isinstance(raw.get("timing"), dict):
        raise ValueError("a key is not an object with a timing object")
    checked = {n: raw[n] for n in ("tag", "algorithm", "flags", "role", "dnskey", "private")}
    for name, kind in (("tag", int), ("algorithm", int), ("flags", int), ("role", str)):
        if not isinstance(checked[name], kind):
            raise ValueError(f"key field {name!r} is not a {kind.__name__}")
    if not (isinstance(checked["dnskey"], str) and isinstance(checked["private"], str)):
        raise ValueError("a key's dnskey or private is not text")
    checked["timing"] = asdict(KeyTiming(**{f: raw["timing"].get(f) for f in TIMING_FIELDS}))
    return checked


def write_keys(path: Path, zone: dns.name.Name, keys: list[Entry]) -> None:
    """Replace the store file with ``keys``: 0600 from the moment it exists, never half written
    (krs_plugin.files.atomic_write), in an order that does not depend on the order of the plan."""
    doc = {
        "format": FORMAT,
        "zone": zone.canonicalize().to_text(),
        "keys": sorted(keys, key=lambda e: (e["tag"], e["algorithm"])),
    }
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), SECRET_MODE)


@dataclass(kw_only=True)
class JsonChange(ZoneChange):
    """An apply in progress: the zone's keys as the file is to hold them, edited in memory by
    the key hooks and written once, by ``load``."""

    path: Path
    keys: list[Entry]


class JsonKeysAdapter(BaseAdapter[JsonChange]):
    """``adapter.type: jsonkeys``; ``adapter.settings.path``: the key store directory (relative
    to krs.yaml's directory when relative)."""

    name = "jsonkeys"
    settings_keys = frozenset({"path"})  # any other key is refused by the base, naming it

    def configure(self, settings: Mapping[str, Any]) -> None:
        raw = settings.get("path")
        if not isinstance(raw, str):
            raise ConfigError(
                "adapter.settings.path: required for the jsonkeys adapter (the key store directory)"
            )
        self.path = self.path_setting(raw)

    def file(self, zone: dns.name.Name) -> Path:
        """The zone's store file. A zone name with a ``/`` (legal in DNS) is refused: it would
        name a file outside the store."""
        name = zone.canonicalize().to_text() + "json"
        if "/" in name:
            raise AdapterError(f"zone {zone}: its name cannot name a file in {self.path}")
        return self.path / name

    def directory_problems(self) -> list[Problem]:
        """What stops any write: checked by every apply before anything is written."""
        if not self.path.is_dir():
            return [Problem(f"key store {self.path} does not exist", f"mkdir -m 0700 {self.path}")]
        if not os.access(self.path, os.W_OK | os.X_OK):
            return [Problem(f"key store {self.path} is not writable", "fix its owner or mode")]
        return []

    def check(self) -> list[Problem]:
        """The directory, then each served zone's file: a damaged file found by ``krs doctor``
        is better than one found by the next distribution (which would refuse to touch it)."""
        problems = self.directory_problems()
        if problems:
            return problems
        fix = "repair it or restore it from a backup: until then the zone's distributions fail"
        for zone in self.zones:
            try:
                read_keys(self.file(zone))
            except KrsError as exc:
                problems.append(Problem(str(exc), fix))
        return problems

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return [
            InstalledKey(zone, e["tag"], e["algorithm"], e["flags"], KeyTiming(**e["timing"]))
            for e in read_keys(self.file(zone))
        ]

    def snapshot(self, zone: dns.name.Name) -> str:
        """The file's bytes, or that there is none: a restore is then exact."""
        try:
            data: bytes | None = self.file(zone).read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            raise AdapterError(f"{self.file(zone)}: cannot read: {exc.strerror or exc}") from None
        return json.dumps({"bytes": None if data is None else base64.b64encode(data).decode()})

    def restore(self, zone: dns.name.Name, snapshot: str) -> str:
        """Put the file back as ``snapshot`` found it (or remove it), and the temporary file of
        a write that was killed with it. No server to tell: the signer reads the file."""
        path = self.file(zone)
        for leftover in self.path.iterdir():
            if leftover.name.startswith(f".{path.name}."):  # atomic_write's temporary file
                leftover.unlink(missing_ok=True)
        data = json.loads(snapshot)["bytes"]
        if data is None:
            path.unlink(missing_ok=True)
            return f"{path.name} removed (the zone had no keys)"
        atomic_write(path, base64.b64decode(data), SECRET_MODE)
        return f"{path.name} restored"

    # --- the apply hooks (krs_plugin.adapters.base.BaseAdapter.apply) ---------------------------

    def begin(self, zone: dns.name.Name, plan: KeyPlan, now: int) -> JsonChange:
        """Refuse, before anything is written: an unwritable store, a key of another zone (the
        file would lie about its zone) and a damaged file (read_keys)."""
        problems = self.directory_problems()
        if problems:
            raise AdapterError(problems[0].what)
        for planned in plan.install:
            if planned.key.zone != zone:
                raise AdapterError(f"key {planned.key.key_tag} is for {planned.key.zone}")
        path = self.file(zone)
        return JsonChange(zone=zone, plan=plan, now=now, path=path, keys=read_keys(path))

    def write_key(self, change: JsonChange, planned: PlannedKey) -> bool:
        new = entry(planned)
        for i, old in enumerate(change.keys):
            if (old["tag"], old["algorithm"]) == (new["tag"], new["algorithm"]):  # BIND's key id
                if old == new:
                    return False
                change.keys[i] = new
                return True
        change.keys.append(new)
        return True

    def retire_key(self, change: JsonChange, tag: int) -> bool:
        for e in change.keys:
            if e["tag"] == tag:
                if e["timing"]["inactive"] is not None:
                    return False
                e["timing"] = {**e["timing"], "inactive": change.now}
                if change.plan.retire_delete_at is not None:
                    e["timing"]["delete"] = change.plan.retire_delete_at
                return True
        return False

    def remove_key(self, change: JsonChange, tag: int) -> bool:
        for i, e in enumerate(change.keys):
            if e["tag"] == tag:
                del change.keys[i]
                return True
        return False

    def load(self, change: JsonChange) -> None:
        """Write the file, once: the signer sees the old key set or the new one, never half a
        plan. Nothing is written when nothing changed (a re-applied plan leaves the file as it
        is, modification time included)."""
        if change.changed:
            change.step = f"write {change.path}"
            write_keys(change.path, change.zone, change.keys)

    def verify(self, change: JsonChange) -> Verification:
        """The file, read back, holds each planned key exactly as planned (DNSKEY, private key,
        role, timing) and none of the removed ones: what the signer will read."""
        try:
            stored = read_keys(change.path)
        except KrsError as exc:
            return Verification(False, (str(exc),))
        details = [
            f"key {planned.key.key_tag} is not in {change.path} as planned"
            for planned in change.plan.install
            if entry(planned) not in stored
        ]
        present = {e["tag"] for e in stored}
        details += [
            f"key {tag} is still in {change.path}" for tag in change.plan.remove if tag in present
        ]
        return Verification(not details, tuple(details))
