"""The ``directory`` adapter: BIND-format key files in one folder, the embedded default.

It is what the KRS does when no nameserver is configured, and a building block for operator hooks
(a folder that a script or BIND's ``key-directory`` reads). Apply is atomic across all keys of a
plan: the files it touches are snapshotted first and restored if any step fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dns.name

from krs_plugin.adapters import keyfiles
from krs_plugin.adapters.base import (
    ApplyResult,
    InstalledKey,
    KeyPlan,
    Problem,
    Verification,
)
from krs_plugin.errors import AdapterError, ConfigError, KrsError


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

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return keyfiles.installed_keys(self.path, zone)

    def apply(self, zone: dns.name.Name, plan: KeyPlan) -> ApplyResult:
        problems = self.check()
        if problems:
            raise AdapterError(f"directory adapter: {problems[0].what}")
        before = keyfiles.snapshot_files(self.path, zone)
        installed: list[int] = []
        retired: list[int] = []
        removed: list[int] = []
        step = "start"
        try:
            now = int(time.time())
            for planned in plan.install:
                step = f"write key {planned.key.key_tag}"
                if keyfiles.write_key(self.path, planned.key, planned.timing):
                    installed.append(planned.key.key_tag)
            for tag in plan.retire:
                step = f"retire key {tag}"
                timing = next((k.timing for k in self.current_keys(zone) if k.key_tag == tag), None)
                if timing is not None and timing.inactive is None:
                    keyfiles.retime(
                        self.path, zone, tag, inactive=now, delete=plan.retire_delete_at
                    )
                    retired.append(tag)
            for tag in plan.remove:
                step = f"remove key {tag}"
                if keyfiles.delete_key_files(self.path, zone, tag):
                    removed.append(tag)
            step = "verify"
            verification = self.verify(zone, plan)
            if not verification.ok:
                raise AdapterError("; ".join(verification.details))
        except (KrsError, OSError) as exc:
            keyfiles.restore_files(self.path, zone, before)
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
        return keyfiles.encode_snapshot(keyfiles.snapshot_files(self.path, zone))

    def restore(self, zone: dns.name.Name, snapshot: str) -> None:
        keyfiles.restore_files(self.path, zone, keyfiles.decode_snapshot(self.path, snapshot))
