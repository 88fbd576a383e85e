"""The ``directory`` adapter: BIND-format key files in one folder, the embedded default.

It is what the KRS does when no nameserver is configured, and a building block for operator hooks
(a folder that a script or BIND's ``key-directory`` reads). Apply is atomic across all keys of a
plan: the files it touches are snapshotted first and restored if any step fails.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dns.name

from krs_plugin.adapters.base import (
    ApplyResult,
    InstalledKey,
    KeyPlan,
    Problem,
    Verification,
)
from krs_plugin.dnssec import KeyTiming, read_bind_key_pair, write_bind_key_pair
from krs_plugin.dnssec.bindfiles import bind_private_text
from krs_plugin.errors import AdapterError, ConfigError, KrsError
from krs_plugin.files import SECRET_MODE, atomic_write


class DirectoryAdapter:
    name = "directory"

    def __init__(self, settings: Mapping[str, Any], *, config_path: Path | None = None) -> None:
        unknown = sorted(set(settings) - {"path"})
        if unknown:
            raise ConfigError(f"adapter.settings: unknown key(s) for directory: {unknown}")
        raw = settings.get("path")
        if not isinstance(raw, str):
            raise ConfigError("adapter.settings.path: required for the directory adapter")
        path = Path(raw)
        if not path.is_absolute() and config_path is not None:
            path = config_path.parent / path
        self.path = path

    def check(self) -> list[Problem]:
        if not self.path.is_dir():
            return [
                Problem(f"key directory {self.path} does not exist", f"mkdir -m 0700 {self.path}")
            ]
        if not os.access(self.path, os.W_OK):
            return [Problem(f"key directory {self.path} is not writable", "fix its owner or mode")]
        return []

    def _files(self, zone: dns.name.Name) -> list[Path]:
        return sorted(self.path.glob(f"K{zone.to_text()}+*.private"))

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        keys = []
        for private in self._files(zone):
            key, timing = read_bind_key_pair(private)
            keys.append(InstalledKey(zone, key.key_tag, key.algorithm, key.flags, timing))
        return keys

    def apply(self, zone: dns.name.Name, plan: KeyPlan) -> ApplyResult:
        problems = self.check()
        if problems:
            raise AdapterError(f"directory adapter: {problems[0].what}")
        snapshot = {p: p.read_bytes() for p in self.path.glob(f"K{zone.to_text()}+*")}
        before = dict(snapshot)
        installed: list[int] = []
        retired: list[int] = []
        removed: list[int] = []
        step = "start"
        try:
            for planned in plan.install:
                step = f"write key {planned.key.key_tag}"
                stem = self.path / planned.key.basename
                new_private = bind_private_text(planned.key, planned.timing).encode()
                old = snapshot.get(Path(f"{stem}.private"))
                if old != new_private:
                    write_bind_key_pair(self.path, planned.key, planned.timing)
                    installed.append(planned.key.key_tag)
            for tag in plan.retire:
                step = f"retire key {tag}"
                for private in self._files(zone):
                    key, timing = read_bind_key_pair(private)
                    if key.key_tag == tag and timing.inactive is None:
                        now = int(time.time())
                        new_timing = KeyTiming(
                            timing.created, timing.publish, timing.activate, now, timing.delete
                        )
                        atomic_write(
                            private, bind_private_text(key, new_timing).encode(), SECRET_MODE
                        )
                        retired.append(tag)
            for tag in plan.remove:
                step = f"remove key {tag}"
                for private in self._files(zone):
                    key, _ = read_bind_key_pair(private)
                    if key.key_tag == tag:
                        private.unlink()
                        private.with_suffix(".key").unlink(missing_ok=True)
                        removed.append(tag)
            step = "verify"
            verification = self.verify(zone, plan)
            if not verification.ok:
                raise AdapterError("; ".join(verification.details))
        except (KrsError, OSError) as exc:
            self._restore(zone, before)
            raise AdapterError(
                f"directory adapter, zone {zone}: step '{step}' failed: {exc}; "
                "key directory restored"
            ) from exc
        changed = bool(installed or retired or removed)
        return ApplyResult(
            zone, changed, tuple(installed), tuple(retired), tuple(removed), verification
        )

    def verify(self, zone: dns.name.Name, plan: KeyPlan) -> Verification:
        """The files on disk hold exactly the planned keys (there is no server to query)."""
        present = {k.key_tag: k for k in self.current_keys(zone)}
        details = []
        for planned in plan.install:
            found = present.get(planned.key.key_tag)
            if found is None or found.flags != planned.key.flags:
                details.append(f"key {planned.key.key_tag} is not in {self.path}")
        for tag in plan.remove:
            if tag in present:
                details.append(f"key {tag} is still in {self.path}")
        return Verification(not details, tuple(details))

    def snapshot(self, zone: dns.name.Name) -> str:
        files = self.path.glob(f"K{zone.to_text()}+*")
        return json.dumps({p.name: base64.b64encode(p.read_bytes()).decode() for p in files})

    def restore(self, zone: dns.name.Name, snapshot: str) -> None:
        saved = json.loads(snapshot)
        self._restore(zone, {self.path / n: base64.b64decode(d) for n, d in saved.items()})

    def _restore(self, zone: dns.name.Name, before: dict[Path, bytes]) -> None:
        # ".K…" are atomic_write's temporary files, left behind when a write was killed
        for pattern in (f"K{zone.to_text()}+*", f".K{zone.to_text()}+*"):
            for path in self.path.glob(pattern):
                if path not in before:
                    path.unlink(missing_ok=True)
        for path, data in before.items():
            mode = SECRET_MODE if path.suffix == ".private" else 0o644
            atomic_write(path, data, mode)
