"""BIND 9 adapter: key files in the zone's key directory, ``rndc``, a DNS check.

BIND takes externally managed keys in two ways, chosen per zone from the running named's version
and the zone's configuration (docs/servers/bind9.md):

- BIND 9.18: ``inline-signing yes; auto-dnssec maintain;``. named acts on the timing in the key
  files by itself. Zones under ``dnssec-policy`` are refused: 9.18 retires keys added while named
  runs and creates keys of its own.
- BIND 9.20 (no ``auto-dnssec``): ``dnssec-policy`` with ``manual-mode yes`` and a ``keys`` clause
  that matches the KDC's keys. named then never creates, rolls or retires a key, and never moves
  a key forward by itself either: at every key time the KRS has named re-derive the key's states
  from its timing (bindstate.py), in ``apply`` and in ``maintain``.

What both share (verified by hand, docs/servers/bind9.md):

- a key is only used with Publish/Activate times, so every key file carries its timing;
- ``rndc loadkeys`` exits 0 even when named could not read a key, so success is only ever
  decided by asking named over DNS (``dnscheck``);
- deleting a key's files does not unpublish it: a key is removed by setting Inactive and Delete
  to now, loading keys, waiting until it is gone from the DNSKEY RRset, and only then deleting
  its files. Rollback removes keys that a failed apply added the same way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from krs_plugin.adapters import bindstate
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
from krs_plugin.adapters.bindconf import (
    BUILTIN_POLICIES,
    DEFAULT_RSA_BITS,
    NamedConfig,
    Policy,
    PolicyKey,
    read_named_config,
)
from krs_plugin.adapters.cdsset import (
    DELETE_CDNSKEY_TEXT,
    DELETE_CDS,
    DELETE_CDS_TEXT,
)
from krs_plugin.adapters.cdsset import expected as cds_expected
from krs_plugin.adapters.dnsbatch import Question, query_many_reduced
from krs_plugin.adapters.dnscheck import (
    Expectation,
    KeyState,
    expectation,
    is_active,
    read_served,
    wait_served,
)
from krs_plugin.adapters.keyfiles import (
    TIMING_SUFFIX,
    KeyFolder,
    decode_snapshot,
    encode_snapshot,
    tags_in,
    timing_record,
    write_files,
    write_key,
    write_key_files,
)
from krs_plugin.adapters.settings import existing_file, seconds, server_address
from krs_plugin.adapters.tools import run_tool
from krs_plugin.dnssec import KeyTiming
from krs_plugin.errors import AdapterError, ConfigError, KrsError
from krs_plugin.tsigkey import TsigKeyFileError, read_tsig_key

log = logging.getLogger(__name__)

SETTINGS = {
    "key_directory",
    "key_directories",
    "server",
    "rndc",
    "owner",
    "verify_timeout",
    "named_conf",
    "named_checkconf",
    "update_key",
}
RNDC_SETTINGS = {"binary", "config", "key_file", "server", "port", "timeout"}
DEFAULT_NAMED_CONF = "/etc/bind/named.conf"
POLICY_VERSION = (9, 20)
"""From this version on, zones take keys from outside through dnssec-policy manual-mode."""
RETRY_AFTER = 30.0  # seconds before maintain() tries a zone again after a failure
VERSION_TTL = 60.0  # seconds a named version read from rndc status is taken as current
MAX_ZONE_KEYS = 32
"""named signs with at most this many keys of a zone: with a 33rd, 9.18 and 9.20 both stopped
signing the DNSKEY RRset with the KSK (measured; BIND's DNS_MAXZONEKEYS)."""
RNDC_WORKERS = 4
"""rndc runs side by side in a batch: named has no command for the keys of all zones, so a batch
runs rndc zonestatus, dnssec -status and loadkeys per zone, a process each (most of their time
is starting up and the control channel's handshake, not named's work)."""
SIDE_BY_SIDE_SLICE = 64  # zones handed to the RNDC_WORKERS at once (see run_side_by_side)
NO_TAGS: frozenset[int] = frozenset()
"""The keys that signed before, for every zone with none (a new zone): an empty set each was
2 MB at 10,000 zones."""
POLICY_EXAMPLE = (
    'dnssec-policy "kdc" { manual-mode yes; keys { ksk key-directory lifetime unlimited '
    "algorithm ecdsap256sha256; zsk key-directory lifetime unlimited algorithm "
    "ecdsap256sha256; }; };"
)


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
        return run_tool(argv, f"rndc {' '.join(command)}", timeout=self.timeout)


def named_version(status: str) -> tuple[int, int]:
    """(9, 20) from ``rndc status``'s "version: BIND 9.20.30-1~deb13u1-Debian ..." line."""
    match = re.search(r"^version: BIND (\d+)\.(\d+)", status, re.MULTILINE)
    if match is None:
        raise AdapterError(f"rndc status: no BIND version in its answer: {status[:200]!r}")
    return int(match.group(1)), int(match.group(2))


class ZoneRefused(AdapterError):
    """The zone's configuration cannot take keys from outside; carries the Problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.what)
        self.problem = problem


@dataclass(frozen=True)
class ZoneMode:
    """How named takes a zone's keys: through auto-dnssec (9.18) or a manual-mode policy."""

    manual_policy: bool = False  # False: auto-dnssec maintain (9.18)
    policy: Policy | None = None  # the policy, when named was asked


@dataclass(kw_only=True)
class BindChange(ZoneChange):
    """An apply in BIND: how named takes the zone's keys, the folder and owner of its key files,
    and which keys signed before (a key that stops signing needs ``rndc sign``)."""

    mode: ZoneMode
    keys: KeyFolder
    owner: tuple[int, int] | None
    signing_before: AbstractSet[int] = frozenset()  # NO_TAGS when none: one object for all
    cds_delete: bool | None = None
    """Whether the zone is to serve RFC 8078's delete CDS/CDNSKEY after the apply (9.18: added
    or removed by dynamic update, when there is an update key); None: a plan that installs no
    key leaves them as they are (cdsset.next_marking)."""


class Bind9Adapter(BaseAdapter[BindChange]):
    name = "bind9"
    settings_keys = frozenset(SETTINGS)

    def configure(self, settings: Mapping[str, Any]) -> None:
        if "key_directory" not in settings:
            raise ConfigError("adapter.settings.key_directory: required for bind9")
        self.key_directory = self.path_setting(settings["key_directory"])
        self.key_directories = {
            dns.name.from_text(str(zone)): self.path_setting(path)
            for zone, path in dict(settings.get("key_directories") or {}).items()
        }
        self.host, self.port = server_address(settings)
        rndc = settings.get("rndc") or {}
        if not isinstance(rndc, Mapping):
            raise ConfigError("adapter.settings.rndc: must be a mapping")
        self.rndc = Rndc(rndc, self.settings_dir)
        self.named_conf = existing_file(
            self.path_setting(settings.get("named_conf", DEFAULT_NAMED_CONF)),
            "named_conf",
            "named's configuration, which the KRS and named-checkconf read",
        )
        self.named_checkconf = str(settings.get("named_checkconf", "named-checkconf"))
        self.owner = self._owner(settings.get("owner"))
        self.verify_timeout = seconds(settings, "verify_timeout", 10)
        # BIND 9.18: the TSIG key of the dynamic updates that serve RFC 8078's delete records
        # (named's session key with update-policy local); read at each use, since named writes
        # a new session key each time it starts.
        raw_key = settings.get("update_key")
        self.update_key = None if raw_key is None else self.path_setting(raw_key)
        self._retry_at: dict[dns.name.Name, float] = {}
        self._version: tuple[tuple[int, int], float] | None = None
        self._folders: dict[Path, KeyFolder] = {}
        self._modes: dict[dns.name.Name, ZoneMode | Exception] | None = None  # in a batch
        self._config: NamedConfig | AdapterError | None = None  # named.conf, in _prefetch_modes

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

    def keys(self, zone: dns.name.Name) -> KeyFolder:
        """The zone's key directory, read through its index (one per folder)."""
        path = self.directory(zone)
        folder = self._folders.get(path)
        if folder is None:
            folder = self._folders[path] = KeyFolder(path)
        return folder

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

    # --- which way named takes the zone's keys ------------------------------------------------

    def version(self) -> tuple[int, int]:
        """The running named's (major, minor) version, from its control channel; asked again
        after VERSION_TTL. A named upgraded meanwhile is safe: the zone check of the other
        generation refuses its zones (9.18 refuses dnssec-policy, 9.20 wants it) until then."""
        now = time.monotonic()
        if self._version is None or now - self._version[1] > VERSION_TTL:
            self._version = (named_version(self.rndc("status")), now)
        return self._version[0]

    def _zone_mode(self, zone: dns.name.Name, version: tuple[int, int]) -> ZoneMode:
        """How named takes ``zone``'s keys; ZoneRefused (with the fix) when it cannot. In a
        batch, as ``batch_context`` asked named for every zone at once."""
        known = None if self._modes is None else self._modes.get(zone)
        if isinstance(known, Exception):
            raise known
        if known is not None:
            return known
        return self._ask_zone_mode(zone, version)

    def _ask_zone_mode(self, zone: dns.name.Name, version: tuple[int, int]) -> ZoneMode:
        name = zone.to_text()
        try:
            status = self.rndc("zonestatus", name)
        except AdapterError as exc:
            if "no matching zone" not in str(exc):  # named is down, not the zone missing
                self._version = None
                raise AdapterError(
                    f"named does not answer on its control channel ({exc}): is named running? "
                    "(the key files are untouched)"
                ) from exc
            raise ZoneRefused(
                Problem(
                    f"BIND does not serve zone {name}: {exc}",
                    f"add zone {name} to named.conf or remove it from zones in krs.yaml",
                )
            ) from exc
        try:
            policy_status = self.rndc("dnssec", "-status", name)
        except AdapterError as exc:
            if "dnssec-policy" not in str(exc):  # 9.18 answers "does not have" as a failure
                raise ZoneRefused(
                    Problem(
                        f"named cannot tell the key state of zone {name}: {exc}",
                        "let the user named runs as read and write the key directory "
                        "(docs/servers/bind9.md, permissions)",
                    )
                ) from exc
            policy_status = str(exc)
        has_policy = "does not have dnssec-policy" not in policy_status
        if version < POLICY_VERSION:
            if has_policy:
                raise ZoneRefused(
                    Problem(
                        f"zone {name} uses dnssec-policy, which in BIND 9.18 retires keys added "
                        "while named runs",
                        f'use "inline-signing yes; auto-dnssec maintain;" for {name} '
                        "(docs/servers/bind9.md)",
                    )
                )
            if "key maintenance: automatic" not in status:
                raise ZoneRefused(
                    Problem(
                        f"zone {name} is not set up for signing with external keys",
                        f'add "inline-signing yes; auto-dnssec maintain; key-directory" to zone '
                        f"{name}",
                    )
                )
            return ZoneMode()
        if not has_policy:
            raise ZoneRefused(
                Problem(
                    f"zone {name} is not signed by named: BIND {version[0]}.{version[1]} takes "
                    "keys from outside only under a dnssec-policy with manual-mode",
                    f'add "dnssec-policy kdc; inline-signing yes; key-directory ..." to zone '
                    f"{name} with {POLICY_EXAMPLE} (docs/servers/bind9.md)",
                )
            )
        return ZoneMode(manual_policy=True, policy=self._manual_policy(zone, policy_status))

    def _manual_policy(self, zone: dns.name.Name, policy_status: str) -> Policy:
        """The zone's policy from named.conf, checked to be one named takes keys from outside
        with (manual-mode, keys that never roll, the KRS's key directory)."""
        name = zone.to_text()
        match = re.search(r"^dnssec-policy: (\S+)", policy_status, re.MULTILINE)
        policy_name = match.group(1) if match else "?"
        if policy_name in BUILTIN_POLICIES:
            raise ZoneRefused(
                Problem(
                    f"zone {name} uses the built-in dnssec-policy {policy_name}, under which "
                    "named makes and rolls keys of its own",
                    f"define a policy with manual-mode, e.g. {POLICY_EXAMPLE}, and use it for "
                    f"{name} (docs/servers/bind9.md)",
                )
            )
        try:
            config = self._named_config()
        except AdapterError as exc:
            raise ZoneRefused(
                Problem(
                    f"cannot read dnssec-policy {policy_name} of zone {name}: {exc}",
                    "set adapter.settings.named_conf to the file named runs with and let the "
                    "KRS read it (named-checkconf from bind9-utils is needed)",
                )
            ) from exc
        zone_config = config.zone(name)
        policy = config.policies.get(policy_name)
        if zone_config is None or policy is None:
            missing = f"zone {name}" if zone_config is None else f"dnssec-policy {policy_name}"
            raise ZoneRefused(
                Problem(
                    f"{self.named_conf} has no {missing}, but the running named has: named.conf "
                    "changed since named last loaded it, or named runs another file",
                    "rndc reconfig, or set adapter.settings.named_conf to the file named runs with",
                )
            )
        problem = policy_problem(name, policy, config, zone_config, self.directory(zone))
        if problem is not None:
            raise ZoneRefused(problem)
        return policy

    def _named_config(self) -> NamedConfig:
        """named.conf as named-checkconf prints it: once per batch (10,000 zones each asking
        would read a 10,000-zone file 10,000 times), else at each call."""
        if self._config is None or self._modes is None:
            return read_named_config(self.named_checkconf, self.named_conf)
        if isinstance(self._config, AdapterError):
            raise self._config
        return self._config

    def _zone_problem(self, zone: dns.name.Name, version: tuple[int, int]) -> Problem | None:
        try:
            self._zone_mode(zone, version)
        except ZoneRefused as refused:
            return refused.problem
        except AdapterError as exc:  # named stopped answering during the check
            return Problem(str(exc), "start named, or check adapter.settings.rndc")
        return None

    # --- the Adapter interface ------------------------------------------------------------

    def server_problem(self) -> str | None:
        """``rndc status``: named runs and answers its control channel."""
        try:
            self.rndc("status")
        except (AdapterError, OSError) as exc:
            return f"named's control channel does not answer: {exc}"
        return None

    def check(self) -> list[Problem]:
        problems: list[Problem] = []
        if shutil.which(self.rndc.binary) is None:
            return [Problem(f"rndc not found ({self.rndc.binary})", "apt-get install bind9-utils")]
        self._version = None  # what named runs now, not a minute ago
        try:
            version = self.version()
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
        if self.update_key is not None:
            try:
                update_tsig_key(self.update_key)
            except AdapterError as exc:
                problems.append(
                    Problem(
                        str(exc),
                        "name named's session key (update-policy local) or a TSIG key the "
                        "zone's update-policy grants CDS and CDNSKEY, readable by the KRS",
                    )
                )
        for zone in self.zones:
            problem = self._zone_problem(zone, version)
            if problem is not None:
                problems.append(problem)
        return problems

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return self.keys(zone).installed_keys(zone)

    def snapshot(self, zone: dns.name.Name) -> str:
        """The zone's key files; with an update key also whether named serves the delete
        CDS/CDNSKEY (zone data, not files), when it answers."""
        files = encode_snapshot(self.keys(zone).snapshot(zone))
        if self.update_key is None:
            return files
        delete = self._serves_delete(zone)
        if delete is None:
            return files
        return json.dumps({"files": json.loads(files), "cds_delete": delete})

    def restore(self, zone: dns.name.Name, snapshot: str) -> str:
        data = json.loads(snapshot)
        cds_delete = None
        if isinstance(data, dict) and "files" in data:  # key files are never named "files"
            cds_delete, snapshot = data.get("cds_delete"), json.dumps(data["files"])
        before = decode_snapshot(self.directory(zone), snapshot)
        return self._rollback(zone, before, self._restore_mode(zone), cds_delete)

    def _restore_mode(self, zone: dns.name.Name) -> ZoneMode:
        """The zone's mode for a restore, which must work with named down (crash recovery at
        start): asked of named when it answers, else told by the files (timing records are
        only written for 9.20 zones)."""
        try:
            return self._zone_mode(zone, self.version())
        except AdapterError:
            files = self.keys(zone).files(zone)
            if any(path.name.endswith(TIMING_SUFFIX) for path in files):
                return ZoneMode(manual_policy=True)
            return ZoneMode()

    # --- the apply hooks (base.BaseAdapter.apply) -------------------------------------------

    def begin(self, zone: dns.name.Name, plan: KeyPlan, now: int) -> BindChange:
        mode = self._zone_mode(zone, self.version())
        check_no_unpublished_signer(plan)
        self.keys(zone).refuse_shared_file_names(zone, plan)
        keys_after = self._roles_after(zone, plan)
        check_key_count(len(keys_after))
        if mode.policy is not None:
            check_keys_against_policy(zone, plan, mode.policy)
            check_both_roles_per_algorithm(keys_after)
        return BindChange(
            zone=zone,
            plan=plan,
            now=now,
            mode=mode,
            keys=self.keys(zone),
            owner=self._file_owner(self.directory(zone)),
            signing_before=self._active_tags(zone, now) or NO_TAGS,
            cds_delete=self._cds_delete_wanted(zone, plan, mode, now),
        )

    def _cds_delete_wanted(
        self, zone: dns.name.Name, plan: KeyPlan, mode: ZoneMode, now: int
    ) -> bool | None:
        """Whether the zone is to serve the RFC 8078 delete records after ``plan`` (a plan that
        installs keys decides, cdsset.next_marking; None: as it does now); refused, before
        anything is written, where named cannot serve them."""
        name = zone.to_text()
        if not plan.install:
            return None
        if not any(planned.cds == "delete" for planned in plan.install):
            return False
        if mode.manual_policy:
            raise AdapterError(
                f"cds 'delete' for {name}: BIND 9.20 under dnssec-policy serves the RFC 8078 "
                "delete CDS/CDNSKEY only under the built-in policy 'insecure', under which "
                "named takes the zone's keys out on its own schedule, and removes such records "
                "added as zone data at its next key event; the KRS cannot have it serve them: "
                "have the parent's DS removed another way"
            )
        if self.update_key is None:
            raise AdapterError(
                f"cds 'delete' for {name}: BIND 9.18 serves the RFC 8078 delete CDS/CDNSKEY "
                "only as zone data, which the KRS adds by dynamic update: add "
                f"'update-policy local;' to zone {name} and set adapter.settings.update_key to "
                "named's session key (/run/named/session.key)"
            )
        return True

    def write_key(self, change: BindChange, planned: PlannedKey) -> bool:
        manual = change.mode.manual_policy  # 9.20 rewrites timing in the key files
        written = change.keys.write_key(
            planned.key, bind_timing(planned), change.owner, keep_timing=manual
        )
        if written and manual:
            bindstate.reset_state(change.keys.path, planned.key, planned.role, change.owner)
        return written

    def retire_key(self, change: BindChange, tag: int) -> bool:
        timing = next((k.timing for k in self.current_keys(change.zone) if k.key_tag == tag), None)
        if timing is None or (timing.inactive is not None and timing.inactive <= change.now):
            return False
        delete = change.plan.retire_delete_at
        change.keys.retime(
            change.zone, tag, change.owner, inactive=change.now, delete=delete,
            sync_delete=change.now if timing.sync_publish is not None else None,
        )  # fmt: skip
        return True

    def remove_key(self, change: BindChange, tag: int) -> bool:
        """Deleted as of now; the files go in ``finish``, once named no longer serves it."""
        now = change.now
        timing = next((k.timing for k in self.current_keys(change.zone) if k.key_tag == tag), None)
        if timing is None:
            return False
        change.keys.retime(
            change.zone, tag, change.owner, inactive=now, delete=now,
            sync_delete=now if timing.sync_publish is not None else None,
        )  # fmt: skip
        return True

    def load(self, change: BindChange) -> None:
        command = self._before_load(change)
        self.rndc(command, change.zone.to_text())
        self._after_load(change)

    def _before_load(self, change: BindChange) -> str:
        """What comes before named is told (9.20's key states, the delete records out); the
        rndc command that tells it."""
        if change.mode.manual_policy:
            change.step = "reset key states"
            self._reset_states(change.zone, change.now, change.owner)
        # loadkeys leaves the RRSIGs of a key that stops signing in place until they are
        # due for refresh (days); sign re-signs the zone now, without them.
        stopped = change.signing_before - self._active_tags(change.zone, change.now)
        command = "sign" if stopped else "loadkeys"
        # the delete records are never served beside a key's CDS: out before the keys'
        # CDS come, in after they went
        updates = self.update_key is not None and not change.mode.manual_policy
        if change.cds_delete is False and updates and self._serves_delete(change.zone) is not False:
            change.step = "withdraw the delete CDS/CDNSKEY"
            self._set_delete_records(change.zone, False)
        if change.cds_delete:
            change.step = "withdraw the keys' CDS/CDNSKEY"
            self._unmark_others(change)
        change.step = f"rndc {command}"
        return command

    def _after_load(self, change: BindChange) -> None:
        if change.cds_delete and self._serves_delete(change.zone) is not True:
            change.step = "publish the delete CDS/CDNSKEY"
            self._set_delete_records(change.zone, True)

    # --- many zones at once (BaseAdapter.apply_batch) ---------------------------------------

    @contextlib.contextmanager
    def batch_context(self, zones: Sequence[dns.name.Name]) -> Iterator[None]:
        """Every zone's mode asked of named side by side (``RNDC_WORKERS`` rndc at a time) and
        named.conf read once, before the batch's zones are checked one by one."""
        if self._modes is not None:
            yield
            return
        self._modes = {}
        try:
            with contextlib.ExitStack() as stack:
                for folder in {self.keys(zone).path: self.keys(zone) for zone in zones}.values():
                    stack.enter_context(folder.batch())  # every zone's keys kept parsed
                self._prefetch_modes(zones)
                yield
        finally:
            self._modes = self._config = None

    def _prefetch_modes(self, zones: Sequence[dns.name.Name]) -> None:
        """Every zone's mode, from named.conf where it can be; named.conf is let go after it
        (every zone of the batch has its mode then: megabytes at 10,000 zones, held through
        the batch before; docs/benchmarks.md, "BIND 9.20 at 10,000 zones")."""
        try:
            version = self.version()
        except AdapterError:
            return  # named down: each zone asks for itself, and says so
        try:
            self._config = read_named_config(self.named_checkconf, self.named_conf)
        except AdapterError as exc:
            self._config = exc  # said for a 9.20 zone's policy, as when asked alone
        assert self._modes is not None
        try:
            if not isinstance(self._config, AdapterError):
                self._modes.update(self._modes_from_config(zones, version, self._config))
            rest = [zone for zone in zones if zone not in self._modes]
            asked = run_side_by_side(lambda zone: self._ask_zone_mode(zone, version), rest)
            self._modes.update(asked)
        finally:
            self._config = None

    def _modes_from_config(
        self, zones: Sequence[dns.name.Name], version: tuple[int, int], config: NamedConfig
    ) -> dict[dns.name.Name, ZoneMode]:
        """The zones that named.conf sets up right for the KRS and that named answers for (one
        SOA question each, pipelined): their mode without two rndc runs each. Any other zone is
        asked of named as when it is alone, so every refusal reads as it always did; a zone
        whose running configuration is older than named.conf fails at loadkeys or in the
        verification, and is rolled back."""
        modes = {}
        for zone in zones:
            mode = self._mode_in_config(zone, version, config)
            if mode is not None:
                modes[zone] = mode
        answered = set(serving(list(modes), self.host, self.port))
        return {zone: mode for zone, mode in modes.items() if zone in answered}

    def _mode_in_config(
        self, zone: dns.name.Name, version: tuple[int, int], config: NamedConfig
    ) -> ZoneMode | None:
        """The zone's mode as named.conf has it, when that is one the KRS takes keys through
        (9.18: inline-signing and auto-dnssec maintain, no policy; 9.20: inline-signing and a
        manual-mode policy that passes ``policy_problem``); None otherwise."""
        name = zone.to_text()
        zone_config = config.zone(name)
        if zone_config is None or zone_config.options.get("inline-signing") != "yes":
            return None
        policy_name = config.zone_policy(zone_config)
        if version < POLICY_VERSION:
            maintain = zone_config.options.get("auto-dnssec") == "maintain"
            return ZoneMode() if maintain and policy_name in (None, "none") else None
        policy = config.policies.get(policy_name or "")
        if policy is None or policy.name in BUILTIN_POLICIES:
            return None
        if policy_problem(name, policy, config, zone_config, self.directory(zone)) is not None:
            return None
        return ZoneMode(manual_policy=True, policy=policy)

    def load_batch(self, changes: Sequence[BindChange]) -> None:
        """Each zone prepared (key states, delete records), then ``rndc loadkeys`` (or
        ``sign``) for all zones, ``RNDC_WORKERS`` at a time: named has no command that loads
        the keys of every zone."""
        commands = {}
        for change in changes:
            try:
                commands[change.zone] = self._before_load(change)
            except self.failures as exc:
                raise StepFailed(change, exc) from exc
        by_zone = {change.zone: change for change in changes}
        told = run_side_by_side(lambda zone: self.rndc(commands[zone], zone.to_text()), by_zone)
        for zone, outcome in told.items():
            if isinstance(outcome, Exception):
                raise StepFailed(by_zone[zone], outcome)
        for change in changes:
            try:
                self._after_load(change)
            except self.failures as exc:
                raise StepFailed(change, exc) from exc

    def verify_batch(self, changes: Sequence[BindChange]) -> list[Verification]:
        """Every zone's keys as their timing says, all zones asked at once."""
        expects = []
        for change in changes:
            delete = change.cds_delete
            if delete is None and not change.mode.manual_policy:
                delete = self._serves_delete(change.zone)
            expects.append(self._expect(change.zone, change.plan.remove, bool(delete)))
        results = self.wait_served_batch(expects, self.verify_timeout)
        return [
            r if r.ok else Verification(False, (*r.details, self._verify_hint(c)))
            for c, r in zip(changes, results, strict=True)
        ]

    def _unmark_others(self, change: BindChange) -> None:
        """``delete`` ends every key's CDS, also of keys the plan does not name
        (cdsset.next_marking)."""
        named = {planned.key.key_tag for planned in change.plan.install}
        for _, key, timing in change.keys.read_keys(change.zone):
            if key.key_tag in named or timing.sync_publish is None:
                continue
            unmarked = bind_timing(PlannedKey(key, "KSK", timing, None))
            change.keys.write_key(key, unmarked, change.owner)
            if change.mode.manual_policy:  # not reached: 9.20 refuses delete
                bindstate.reset_state(change.keys.path, key, None, change.owner)

    def _serves_delete(self, zone: dns.name.Name) -> bool | None:
        """Whether named serves the delete CDS now; None when it does not answer."""
        served = read_served(zone, self.host, self.port)
        if "error" in served:
            return None
        return list(DELETE_CDS) in list(served.get("cds") or [])  # type: ignore[call-overload]

    def _set_delete_records(self, zone: dns.name.Name, present: bool) -> None:
        """BIND 9.18: add or remove RFC 8078's delete CDS/CDNSKEY by dynamic update, signed
        with ``update_key`` (named keeps them, signed, across its key events). Adding what is
        there, or removing what is not, changes nothing."""
        if self.update_key is None:
            return
        try:
            tsig = update_tsig_key(self.update_key)
            ttl = max((key.ttl for _, key, _ in self.keys(zone).read_keys(zone)), default=3600)
            update = dns.update.UpdateMessage(zone, keyring=tsig)
            if present:
                update.add(zone, ttl, "CDS", DELETE_CDS_TEXT)
                update.add(zone, ttl, "CDNSKEY", DELETE_CDNSKEY_TEXT)
            else:
                update.delete(zone, "CDS", DELETE_CDS_TEXT)
                update.delete(zone, "CDNSKEY", DELETE_CDNSKEY_TEXT)
            reply = dns.query.tcp(update, self.host, port=self.port, timeout=self.rndc.timeout)
        except (EOFError, dns.exception.DNSException) as exc:
            raise AdapterError(f"dynamic update of {zone}'s delete CDS/CDNSKEY: {exc}") from exc
        if reply.rcode() != dns.rcode.NOERROR:
            raise AdapterError(
                f"named refused the dynamic update of {zone}'s delete CDS/CDNSKEY "
                f"({dns.rcode.to_text(reply.rcode())}): zone {zone} needs 'update-policy local;' "
                f"and adapter.settings.update_key named's session key ({self.update_key})"
            )

    def verify(self, change: BindChange) -> Verification:
        """named serves the key files' keys as their timing says, signatures valid; the plan's
        removed keys gone."""
        delete = change.cds_delete
        if delete is None and not change.mode.manual_policy:
            delete = self._serves_delete(change.zone)
        result = self._wait(change.zone, removed=change.plan.remove, delete=bool(delete))
        if result.ok:
            return result
        return Verification(False, (*result.details, self._verify_hint(change)))

    def _verify_hint(self, change: BindChange) -> str:
        return (
            f"(after {self.verify_timeout:g} s; rndc loadkeys reports success even when named "
            f"cannot read a key file: check that the user named runs as can read "
            f"{change.keys.path}, and named's log)"
        )

    def finish(self, change: BindChange) -> None:
        change.step = "delete removed key files"
        self._delete_withdrawn(change.zone, change.now)
        change.keys.remove_incomplete(change.zone)  # what a write cut short left: keyfiles.py

    def _delete_withdrawn(self, zone: dns.name.Name, cutoff: int) -> None:
        """Delete the files of every key deleted as of ``cutoff`` (no later than the DNS check's
        moment, which just saw named no longer serve them): the plan's removals, and keys a
        rollback left deleted while named was down."""
        folder = self.keys(zone)
        for _, key, timing in folder.read_keys(zone):
            if timing.delete is not None and timing.delete <= cutoff:
                folder.delete_key(zone, key.key_tag)

    def _roles_after(self, zone: dns.name.Name, plan: KeyPlan) -> list[tuple[int, int, str, bool]]:
        """(tag, algorithm, role, active) of every key the zone would have after ``plan``."""
        directory = self.directory(zone)
        now = int(time.time())
        keys = {}
        for _, key, timing in self.keys(zone).read_keys(zone):
            if key.key_tag in plan.remove:
                continue
            state = bindstate.read_state(bindstate.state_path(directory, key))
            active = is_active(timing, now) and key.key_tag not in plan.retire
            keys[key.key_tag] = (
                key.key_tag,
                key.algorithm,
                bindstate.role_of(state, key.flags),
                active,
            )
        for planned in plan.install:  # a held key's tag: refused before (KeyFolder)
            key = planned.key
            keys[key.key_tag] = (
                key.key_tag,
                key.algorithm,
                planned.role,
                is_active(planned.timing, now),
            )
        return list(keys.values())

    def _reset_states(
        self, zone: dns.name.Name, now: int, owner: tuple[int, int] | None
    ) -> list[str]:
        """BIND 9.20: have named re-derive, from its timing, the states of every key of
        ``zone`` whose states say otherwise than its timing for ``now`` (bindstate.py).
        Returns why, one line per key, for the log."""
        directory = self.directory(zone)
        reasons = []
        for private, key, timing in self.keys(zone).read_keys(zone):
            if not timing_record(private).exists():  # a key from before 9.20
                if timing.sync_publish is not None and timing.sync_publish != timing.activate:
                    # named's own SyncPublish (it adds one to a KSK that has none); the KRS's is
                    # always the key's Activate time (bind_timing)
                    timing = replace(timing, sync_publish=None)
                write_key(directory, key, timing, owner, keep_timing=True)
            reason = bindstate.needs_reset(directory, key, timing, now)
            if reason is None:
                continue
            if reason != "named has not read its state yet":
                # named re-derives the states from the timing in the key files, where it may
                # have written times of its own (a Delete after a retire): the KDC's first
                write_key_files(directory, key, timing, owner)
                bindstate.reset_state(directory, key, None, owner)
            reasons.append(f"key {key.key_tag}: {reason}")
        return reasons

    def _active_tags(self, zone: dns.name.Name, now: int) -> set[int]:
        return {k.key_tag for k in self.current_keys(zone) if is_active(k.timing, now)}

    def _wait(
        self, zone: dns.name.Name, removed: Iterable[int], delete: bool | None = False
    ) -> Verification:
        """Wait until named serves the zone's keys as their timing says, and the CDS/CDNSKEY
        of the keys marked ``publish`` that are active (cdsset.py; named publishes them at
        once on loadkeys, 9.18 and 9.20 measured), or the delete records (``delete``; None:
        not known, the CDS/CDNSKEY are not checked)."""
        expect = self._expect(zone, removed, delete)
        return wait_served(expect, self.host, self.port, timeout=self.verify_timeout)

    def _expect(
        self, zone: dns.name.Name, removed: Iterable[int], delete: bool | None = False
    ) -> Expectation:
        """What named must serve for the zone's key files (see ``_wait``)."""
        now = int(time.time())
        current = self.current_keys(zone)
        keys = [KeyState(k.key_tag, k.flags, k.timing) for k in current]
        expect = expectation(zone, keys, removed, now)
        if delete is not None:
            marked = [
                (k.key_tag, k.algorithm, k.flags, k.timing)
                for k in current
                if k.flags == 257 and k.timing.sync_publish is not None
            ]
            expect = replace(expect, cds=cds_expected(marked, delete, now))
        return expect

    def _rollback(
        self,
        zone: dns.name.Name,
        before: dict[Path, bytes],
        mode: ZoneMode,
        cds_delete: bool | None = None,
    ) -> str:
        """Put the zone's keys back to ``before``. Keys added since are unpublished first (set to
        Delete now and loaded), because named keeps serving a key whose files are simply
        deleted; their files go last. Returns what happened, for the error message."""
        folder = self.keys(zone)
        owner = self._file_owner(folder.path)
        old_tags = tags_in(before)
        added = [k.key_tag for k in self.current_keys(zone) if k.key_tag not in old_tags]
        try:
            now = int(time.time())
            for tag in added:
                folder.retime(zone, tag, owner, inactive=now, delete=now)
            write_files(before, owner)
            if mode.manual_policy:
                self._reset_states(zone, now, owner)
            if cds_delete is False:
                self._set_delete_records(zone, False)
            self.rndc("sign" if mode.manual_policy else "loadkeys", zone.to_text())
            if cds_delete:
                self._set_delete_records(zone, True)
            result = self._wait(zone, removed=added, delete=cds_delete)
        except (KrsError, OSError) as exc:
            # named keeps serving a key whose files are simply gone (9.18): the added keys stay,
            # deleted as of now, so named withdraws them when it reads the directory again; the
            # next successful apply deletes their files.
            folder.restore(zone, before, keep_tags=frozenset(added), owner=owner)
            kept = f" (keys {sorted(added)} stay, deleted as of now)" if added else ""
            return f"named could not be told: {exc}; it reads the restored files when it can{kept}"
        folder.restore(zone, before, owner=owner)
        if not result.ok:
            return "named reloaded, but does not serve the old keys yet: " + "; ".join(
                result.details
            )
        return "named serves the previous keys again"

    # --- BIND 9.20: acting on key times ---------------------------------------------------

    def maintain(self) -> float:
        """BIND 9.20 in manual-mode does not act on key times by itself: at each Publish,
        Activate, Inactive and Delete time of a zone's keys, have named re-derive those keys'
        states, re-sign when a key stopped signing, and check over DNS. Returns the seconds until
        the next such time (an hour when there is none; 9.18 acts by itself)."""
        now = time.time()
        try:
            version = self.version()
        except AdapterError as exc:
            log.warning("bind9: key times not checked, named does not answer: %s", exc)
            return RETRY_AFTER
        if version < POLICY_VERSION:
            return 3600.0
        for zone in self.zones:
            if self._retry_at.get(zone, 0.0) > now:
                continue
            try:
                self._maintain_zone(zone)
                self._retry_at.pop(zone, None)
            except (KrsError, OSError) as exc:
                self._retry_at[zone] = now + RETRY_AFTER
                log.error(
                    "bind9, zone %s: acting on key times failed (next try in %d s): %s",
                    zone, RETRY_AFTER, exc,
                )  # fmt: skip
        return self._next_wait(time.time())

    def _maintain_zone(self, zone: dns.name.Name) -> None:
        directory = self.directory(zone)
        now = int(time.time())
        due, stopped = False, False
        for _, key, timing in self.keys(zone).read_keys(zone):
            if bindstate.needs_reset(directory, key, timing, now) is None:
                continue
            due = True
            state = bindstate.read_state(bindstate.state_path(directory, key))
            believed = bindstate.named_phase(state, key.flags)
            stopped |= bool(believed and believed.signing and not is_active(timing, now))
        if not due:
            return
        mode = self._zone_mode(zone, self.version())
        if not mode.manual_policy:
            return
        reasons = self._reset_states(zone, now, self._file_owner(directory))
        log.info("bind9, zone %s: key times passed: %s", zone, "; ".join(reasons))
        # as in apply: sign when a key stopped signing, or its RRSIGs stay for days
        self.rndc("sign" if stopped else "loadkeys", zone.to_text())
        result = self._wait(zone, removed=())  # 9.20: never the delete records
        if not result.ok:
            raise AdapterError("; ".join(result.details))

    def _next_wait(self, now: float) -> float:
        moments = []
        for zone in self.zones:
            retry = self._retry_at.get(zone, 0.0)
            if retry > now:
                moments.append(retry)
                continue
            moments += [t for t in self.keys(zone).key_times(zone) if t > now]
        if not moments:
            return 3600.0
        return max(1.0, min(moments) - now)


def serving(zones: Sequence[dns.name.Name], host: str, port: int) -> list[dns.name.Name]:
    """The zones named answers an SOA for (authoritatively, NOERROR), asked all at once (each
    reply reduced to yes or no as it arrives: 10,000 messages held were 40 MB)."""
    questions = [(zone, dns.rdatatype.SOA) for zone in zones]
    replies = query_many_reduced(questions, host, port, _serves_soa)
    return [zone for zone, yes in zip(zones, replies, strict=True) if yes is True]


def _serves_soa(reply: dns.message.Message, question: Question) -> bool:
    if reply.rcode() != dns.rcode.NOERROR or not reply.flags & dns.flags.AA:
        return False
    rrset = reply.get_rrset(reply.answer, question[0], dns.rdataclass.IN, dns.rdatatype.SOA)
    return rrset is not None


def run_side_by_side(
    call: Callable[[dns.name.Name], object], zones: Iterable[dns.name.Name]
) -> dict[dns.name.Name, Any]:
    """``call`` for each zone, ``RNDC_WORKERS`` at a time: each zone's result, or the
    KrsError or OSError it raised (kept to be raised where that zone is handled)."""

    def one(zone: dns.name.Name) -> object:
        try:
            return call(zone)
        except (KrsError, OSError) as exc:
            return exc

    zones = list(zones)
    out: dict[dns.name.Name, Any] = {}
    with ThreadPoolExecutor(max_workers=RNDC_WORKERS) as pool:
        # a slice at a time: Executor.map submits everything at once, and 10,000 futures
        # waiting (each with its lock and condition) were 15 MB of krs run's peak
        for start in range(0, len(zones), SIDE_BY_SIDE_SLICE):
            part = zones[start : start + SIDE_BY_SIDE_SLICE]
            out.update(zip(part, pool.map(one, part), strict=True))
    return out


def bind_timing(planned: PlannedKey) -> KeyTiming:
    """The key's timing as named is to have it: the KDC's, and for a KSK or CSK the CDS/CDNSKEY
    window its ``cds`` says, always explicitly. ``publish``: SyncPublish at its Activate time
    and SyncDelete at its Inactive time, so named serves the CDS exactly while the key is active
    (cdsset.has_cds, the same on every server; 9.18 and 9.20 both act on those times). Otherwise
    no SyncPublish (9.20: DS state hidden) and a SyncDelete at its first time (9.18 withdraws a
    CDS past it). Taken from the key's own times, not the apply's moment: the same distribution
    sent again changes nothing, and a ``cds`` that changes rewrites the key's files."""
    timing = planned.timing
    if planned.role == "ZSK":
        return replace(timing, sync_publish=None, sync_delete=None)
    if planned.cds == "publish" and timing.activate is not None:
        return replace(timing, sync_publish=timing.activate, sync_delete=timing.inactive)
    times = (timing.created, timing.publish, timing.activate)
    since = min((t for t in times if t is not None), default=0)
    return replace(timing, sync_publish=None, sync_delete=since)


def update_tsig_key(path: Path) -> dns.tsig.Key:
    """``update_key``'s TSIG key (named's session key, or one made with tsig-keygen), read by the
    project's one reader of BIND key files; its error becomes the adapter's."""
    try:
        return read_tsig_key(path)
    except TsigKeyFileError as exc:
        raise AdapterError(f"update_key: {exc}") from None


def policy_problem(
    name: str, policy: Policy, config: NamedConfig, zone: Any, key_directory: Path
) -> Problem | None:
    """Why a zone under ``policy`` cannot take keys from the KRS, or None."""
    where = f"dnssec-policy {policy.name} (zone {name})"
    if not policy.manual_mode:
        return Problem(
            f"{where} has no manual-mode: named would retire the KDC's keys and make its own",
            f"add 'manual-mode yes;' to dnssec-policy {policy.name} (BIND 9.20.13 or later)",
        )
    if policy.offline_ksk:
        return Problem(
            f"{where} uses offline-ksk: named would sign the DNSKEY set only from an imported "
            "SKR, not with the KDC's KSK",
            f"remove offline-ksk from dnssec-policy {policy.name}",
        )
    if not policy.keys:
        return Problem(
            f"{where} has no keys clause: named would not know which of the KDC's keys to use",
            f"add a keys clause, e.g. {POLICY_EXAMPLE}",
        )
    if zone.options.get("inline-signing") == "no":
        return Problem(
            f"zone {name} has inline-signing no: named would sign its zone file in place",
            f"set 'inline-signing yes;' in zone {name}",
        )
    for entry in policy.keys:
        if entry.lifetime != "unlimited":
            return Problem(
                f"{where}: '{entry.text()}' has a lifetime, so named wants to roll the KDC's "
                "key when it ends (the KDC decides rollovers)",
                f"use 'lifetime unlimited' in dnssec-policy {policy.name}",
            )
        folder = config.store_directory(zone, entry)
        if folder is None:
            return Problem(f"{where}: key-store {entry.store} is not defined in named.conf")
        if os.path.normpath(folder) != os.path.normpath(key_directory):
            return Problem(
                f"{where}: named looks for its {entry.role} files in {folder}, the KRS writes "
                f"them to {key_directory}",
                "make adapter.settings.key_directory (or key_directories) the zone's "
                "key-directory (or its key-store's directory)",
            )
    return None


def matching_entry(role: str, key: Any, policy: Policy) -> PolicyKey | None:
    """The policy entry named would match ``key`` with (dns_kasp_key_match: role, algorithm,
    length, tag range), or None."""
    wanted = {"KSK": "ksk", "ZSK": "zsk", "CSK": "csk"}[role]
    length = bindstate.key_length(key)
    for entry in policy.keys:
        if entry.role != wanted or entry.algorithm != key.algorithm:
            continue
        if key.algorithm in (5, 7, 8, 10) and (entry.length or DEFAULT_RSA_BITS) != length:
            continue
        if entry.tag_range is not None and not (
            entry.tag_range[0] <= key.key_tag <= entry.tag_range[1]
        ):
            continue
        return entry
    return None


def check_keys_against_policy(zone: dns.name.Name, plan: KeyPlan, policy: Policy) -> None:
    """Every key the plan installs must match an entry of the zone's policy: named treats a key
    that matches none as unwanted (it would retire and replace it, were it not for
    manual-mode). Refused before anything is written."""
    for planned in plan.install:
        key = planned.key
        if matching_entry(planned.role, key, policy) is None:
            entries = " ".join(e.text() for e in policy.keys)
            length = bindstate.key_length(key)
            raise AdapterError(
                f"key {key.key_tag} ({planned.role}, algorithm {key.algorithm}, {length} bits) "
                f"matches no entry of dnssec-policy {policy.name} ({entries}): add "
                f"'{planned.role.lower()} key-directory lifetime unlimited algorithm "
                f"{key.algorithm}{f' {length}' if key.algorithm in (5, 7, 8, 10) else ''};' "
                "to its keys clause"
            )


def check_both_roles_per_algorithm(keys: list[tuple[int, int, str, bool]]) -> None:
    """BIND 9.20 signs the DNSKEY RRset only with keys in the KSK role and the zone's data only
    with keys in the ZSK role (9.18 let a lone KSK or ZSK sign everything): an algorithm with an
    active key but no active key of the other role would leave the DNSKEY RRset or the zone's
    data without a signature of that algorithm, and the zone would not validate (RFC 4035
    section 2.2). Refused before anything is written, as Knot refuses it."""
    signs_dnskey = {alg for _, alg, role, active in keys if active and role in ("KSK", "CSK")}
    signs_zone = {alg for _, alg, role, active in keys if active and role in ("ZSK", "CSK")}
    for tag, alg, role, active in sorted(keys):
        if not active:
            continue
        if role == "ZSK" and alg not in signs_dnskey:
            missing, what = "KSK or CSK", "the DNSKEY set only with keys in the KSK role"
        elif role == "KSK" and alg not in signs_zone:
            missing, what = "ZSK or CSK", "the zone's data only with keys in the ZSK role"
        else:
            continue
        raise AdapterError(
            f"key {tag} ({role}, algorithm {alg}) would have no active {missing} of algorithm "
            f"{alg} beside it: BIND 9.20 signs {what}, so the zone would not validate; send "
            "the other role's key of that algorithm with it"
        )


def check_no_unpublished_signer(plan: KeyPlan) -> None:
    """A key with an Activate time and no Publish time is one the KDC wants to sign while its
    DNSKEY is not published (an algorithm rollover's first step, docs/lifecycle.md): named
    cannot. 9.18 and 9.20 both take their signing keys from the DNSKEY RRset they serve
    (zone.c findzonekeys; lab/experiments/unpublished_signing*.sh), and without a Publish time
    named would publish the key at its Activate time instead. Refused before anything is
    written."""
    for planned in plan.install:
        timing = planned.timing
        if timing.publish is None and timing.activate is not None:
            raise AdapterError(
                f"key {planned.key.key_tag} ({planned.role}, algorithm {planned.key.algorithm}) "
                "is to sign while its DNSKEY is not published (an Activate time and no Publish "
                "time): named signs only with keys of the DNSKEY RRset it serves (BIND 9.18 and "
                "9.20), so it cannot take this step of an algorithm rollover; a zone with BIND "
                "nodes rolls its algorithm with the KDC policy's algorithm-method liberal (the "
                "new DNSKEYs published and signing at once; docs/servers/bind9.md)"
            )


def check_key_count(count: int) -> None:
    """Refuse a key set named cannot sign with (MAX_ZONE_KEYS), before anything is written."""
    if count > MAX_ZONE_KEYS:
        raise AdapterError(
            f"the zone would have {count} keys; named signs with at most {MAX_ZONE_KEYS} keys "
            "of a zone (with more, it stops signing the DNSKEY set): have the KDC remove "
            "retired keys first"
        )
