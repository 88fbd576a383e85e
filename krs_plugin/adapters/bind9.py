"""BIND 9 adapter: key files in the zone's ``key-directory``, ``rndc loadkeys``, a DNS check.

BIND 9.18 takes externally managed keys in zones with ``inline-signing yes; auto-dnssec
maintain;`` (docs/servers/bind9.md). Zones under ``dnssec-policy`` are refused by ``check()`` and
before any file is touched: in 9.18, keys added to such a zone while named runs are retired at
once, and named may create keys of its own, which breaks a shared-key multi-signer setup.

BIND's own rules shape the steps (SERVERS.md, verified by hand):

- a key is only used with Publish/Activate times, so every key file carries its timing;
- ``rndc loadkeys`` exits 0 even when named could not read a key, so success is only ever
  decided by asking named over DNS (``dnscheck``);
- deleting a key's files does not unpublish it: a key is removed by setting Inactive and Delete
  to now, ``loadkeys``, waiting until it is gone from the DNSKEY RRset, and only then deleting
  its files. Rollback removes keys that a failed apply added the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dns.name

from krs_plugin.adapters import keyfiles
from krs_plugin.adapters.base import ApplyResult, InstalledKey, KeyPlan, Problem, Verification
from krs_plugin.adapters.dnscheck import KeyState, expectation, is_active, wait_served
from krs_plugin.adapters.settings import reject_unknown, seconds, server_address, settings_path
from krs_plugin.errors import AdapterError, ConfigError, KrsError

SETTINGS = {"key_directory", "key_directories", "server", "rndc", "owner", "verify_timeout"}
RNDC_SETTINGS = {"binary", "config", "key_file", "server", "port", "timeout"}


class Rndc:
    """``rndc`` with this instance's control-channel options; errors carry named's answer."""

    def __init__(self, settings: Mapping[str, Any], base: Path | None) -> None:
        unknown = sorted(set(settings) - RNDC_SETTINGS)
        if unknown:
            raise ConfigError(f"adapter.settings.rndc: unknown key(s): {', '.join(unknown)}")
        self.binary = str(settings.get("binary", "rndc"))
        self.timeout = seconds(settings, "timeout", 10, within="rndc.")
        self.args: list[str] = []
        for option, key in (("-c", "config"), ("-k", "key_file")):
            if key in settings:
                path = Path(str(settings[key]))
                if not path.is_absolute() and base is not None:
                    path = base / path
                self.args += [option, str(path)]
        if "server" in settings:
            self.args += ["-s", str(settings["server"])]
        if "port" in settings:
            port = settings["port"]
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigError(f"adapter.settings.rndc.port: must be 1..65535, got {port!r}")
            self.args += ["-p", str(port)]

    def __call__(self, *command: str) -> str:
        argv = [self.binary, *self.args, *command]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except FileNotFoundError as exc:
            raise AdapterError(f"rndc not found ({self.binary}): install bind9-utils") from exc
        except subprocess.TimeoutExpired as exc:
            raise AdapterError(
                f"rndc {' '.join(command)}: no answer in {self.timeout:g} s"
            ) from exc
        if result.returncode != 0:
            message = " ".join((result.stderr or result.stdout).split())
            raise AdapterError(f"rndc {' '.join(command)}: {message}")
        return result.stdout


class Bind9Adapter:
    name = "bind9"

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        config_path: Path | None = None,
        zones: Iterable[dns.name.Name] = (),
    ) -> None:
        reject_unknown(settings, SETTINGS, "bind9")
        base = config_path.parent if config_path is not None else None
        if "key_directory" not in settings:
            raise ConfigError("adapter.settings.key_directory: required for bind9")
        self.key_directory = settings_path(settings["key_directory"], base)
        self.key_directories = {
            dns.name.from_text(str(zone)): settings_path(path, base)
            for zone, path in dict(settings.get("key_directories") or {}).items()
        }
        self.host, self.port = server_address(settings)
        rndc = settings.get("rndc") or {}
        if not isinstance(rndc, Mapping):
            raise ConfigError("adapter.settings.rndc: must be a mapping")
        self.rndc = Rndc(rndc, base)
        self.owner = self._owner(settings.get("owner"))
        self.verify_timeout = seconds(settings, "verify_timeout", 10)
        self.zones = tuple(zones)

    @staticmethod
    def _owner(value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError("adapter.settings.owner: must be a user name (e.g. bind)")
        return value

    # --- where the files go and who owns them ------------------------------------------------

    def directory(self, zone: dns.name.Name) -> Path:
        return self.key_directories.get(zone, self.key_directory)

    def _file_owner(self, directory: Path) -> tuple[int, int] | None:
        """named must read the key files: give them to ``owner``, or, when the KRS runs as root,
        to the owner of the key directory (normally bind:bind). Otherwise they stay ours."""
        if self.owner is not None:
            import pwd

            entry = pwd.getpwnam(self.owner)
            return entry.pw_uid, entry.pw_gid
        if os.geteuid() == 0:
            info = directory.stat()
            if info.st_uid != 0:
                return info.st_uid, info.st_gid
        return None

    # --- the Adapter interface ------------------------------------------------------------

    def check(self) -> list[Problem]:
        problems: list[Problem] = []
        if shutil.which(self.rndc.binary) is None:
            return [Problem(f"rndc not found ({self.rndc.binary})", "apt-get install bind9-utils")]
        try:
            self.rndc("status")
        except AdapterError as exc:
            return [
                Problem(
                    f"named's control channel does not answer: {exc}",
                    "check the controls block in named.conf and adapter.settings.rndc",
                )
            ]
        for directory in {self.key_directory, *self.key_directories.values()}:
            if not directory.is_dir():
                problems.append(Problem(f"key directory {directory} does not exist"))
            elif not os.access(directory, os.W_OK):
                problems.append(Problem(f"key directory {directory} is not writable by the KRS"))
        for zone in self.zones:
            problem = self._zone_problem(zone)
            if problem is not None:
                problems.append(problem)
        return problems

    def _zone_problem(self, zone: dns.name.Name) -> Problem | None:
        """Why BIND cannot take pushed keys for ``zone``, or None."""
        name = zone.to_text()
        try:
            status = self.rndc("zonestatus", name)
        except AdapterError as exc:
            return Problem(
                f"BIND does not serve zone {name}: {exc}",
                f"add zone {name} to named.conf or remove it from zones in krs.yaml",
            )
        try:
            policy = self.rndc("dnssec", "-status", name)
        except AdapterError:
            policy = "Zone does not have dnssec-policy"
        if "does not have dnssec-policy" not in policy:
            return Problem(
                f"zone {name} uses dnssec-policy, which in BIND 9.18 retires keys added while "
                "named runs",
                f'use "inline-signing yes; auto-dnssec maintain;" for {name} '
                "(docs/servers/bind9.md)",
            )
        if "key maintenance: automatic" not in status:
            return Problem(
                f"zone {name} is not set up for signing with external keys",
                f'add "inline-signing yes; auto-dnssec maintain; key-directory" to zone {name}',
            )
        return None

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return keyfiles.installed_keys(self.directory(zone), zone)

    def snapshot(self, zone: dns.name.Name) -> str:
        return keyfiles.encode_snapshot(keyfiles.snapshot_files(self.directory(zone), zone))

    def restore(self, zone: dns.name.Name, snapshot: str) -> None:
        directory = self.directory(zone)
        self._rollback(zone, keyfiles.decode_snapshot(directory, snapshot))

    def apply(self, zone: dns.name.Name, plan: KeyPlan) -> ApplyResult:
        problem = self._zone_problem(zone)
        if problem is not None:  # before any file is touched
            raise AdapterError(f"bind9, zone {zone}: {problem.what}")
        directory = self.directory(zone)
        owner = self._file_owner(directory)
        before = keyfiles.snapshot_files(directory, zone)
        signing_before = self._active_tags(zone, int(time.time()))
        installed: list[int] = []
        retired: list[int] = []
        removed: list[int] = []
        step = "start"
        try:
            now = int(time.time())
            for planned in plan.install:
                step = f"write key {planned.key.key_tag}"
                if keyfiles.write_key(directory, planned.key, planned.timing, owner):
                    installed.append(planned.key.key_tag)
            for tag in plan.retire:
                step = f"retire key {tag}"
                timing = next((k.timing for k in self.current_keys(zone) if k.key_tag == tag), None)
                if timing is not None and (timing.inactive is None or timing.inactive > now):
                    keyfiles.retime(
                        directory, zone, tag, owner, inactive=now, delete=plan.retire_delete_at
                    )
                    retired.append(tag)
            for tag in plan.remove:
                step = f"remove key {tag}"
                if keyfiles.retime(directory, zone, tag, owner, inactive=now, delete=now):
                    removed.append(tag)
            # loadkeys leaves the RRSIGs of a key that stops signing in place until they are
            # due for refresh (days); sign re-signs the zone now, without them.
            stopped = signing_before - self._active_tags(zone, now)
            command = "sign" if stopped else "loadkeys"
            step = f"rndc {command}"
            self.rndc(command, zone.to_text())
            step = "verify"
            verification = self.verify(zone, plan)
            if not verification.ok:
                raise AdapterError(
                    "; ".join(verification.details) + f" after {self.verify_timeout:g} s. "
                    "rndc loadkeys reports success even when named cannot read a key file: "
                    f"check that the user named runs as can read {directory}, and named's log"
                )
            step = "delete removed key files"
            for tag in removed:
                keyfiles.delete_key_files(directory, zone, tag)
        except (KrsError, OSError) as exc:
            outcome = self._rollback(zone, before)
            raise AdapterError(
                f"bind9, zone {zone}: step '{step}' failed: {exc}; key directory restored"
                f" ({outcome})"
            ) from exc
        changed = bool(installed or retired or removed)
        return ApplyResult(
            zone, changed, tuple(installed), tuple(retired), tuple(removed), verification
        )

    def _active_tags(self, zone: dns.name.Name, now: int) -> set[int]:
        return {k.key_tag for k in self.current_keys(zone) if is_active(k.timing, now)}

    def verify(self, zone: dns.name.Name, plan: KeyPlan) -> Verification:
        """named serves the key files' keys as their timing says, signatures valid; the plan's
        removed keys gone."""
        return self._wait(zone, removed=plan.remove)

    def _wait(self, zone: dns.name.Name, removed: Iterable[int]) -> Verification:
        keys = [KeyState(k.key_tag, k.flags, k.timing) for k in self.current_keys(zone)]
        expect = expectation(zone, keys, removed, int(time.time()))
        return wait_served(expect, self.host, self.port, timeout=self.verify_timeout)

    def _rollback(self, zone: dns.name.Name, before: dict[Path, bytes]) -> str:
        """Put the zone's keys back to ``before``. Keys added since are unpublished first (set to
        Delete now and loaded), because named keeps serving a key whose files are simply
        deleted; their files go last. Returns what happened, for the error message."""
        directory = self.directory(zone)
        owner = self._file_owner(directory)
        old_tags = keyfiles.tags_in(before)
        added = [k.key_tag for k in self.current_keys(zone) if k.key_tag not in old_tags]
        try:
            now = int(time.time())
            for tag in added:
                keyfiles.retime(directory, zone, tag, owner, inactive=now, delete=now)
            keyfiles.write_files(before, owner)
            self.rndc("loadkeys", zone.to_text())
            result = self._wait(zone, removed=added)
        except (KrsError, OSError) as exc:
            keyfiles.restore_files(directory, zone, before)
            return f"named could not be told: {exc}; it reads the restored files when it can"
        keyfiles.restore_files(directory, zone, before)
        if not result.ok:
            return "named reloaded, but does not serve the old keys yet: " + "; ".join(
                result.details
            )
        return "named serves the previous keys again"
