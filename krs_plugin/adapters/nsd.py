"""NSD adapter: NSD does not sign, so the adapter does. It keeps the received keys (BIND key
files in its own folder), signs the operator's unsigned zone file with the active ones, checks
the result, renames it over the file NSD serves and runs ``nsd-control reload <zone>``.

What shapes the steps (docs/servers/nsd.md, verified by hand on NSD 4.6.1):

- NSD loads a broken file "with success" (``nsd-control`` prints ok) and then answers SERVFAIL,
  and keeps no copy of the old zone: so a signed file is only ever renamed into place after the
  signer succeeded and ``nsd-checkzone`` (and, for ldns, ``ldns-verify-zone``) passed, and the
  previous served file is kept until NSD is seen serving the new one over DNS;
- NSD never re-signs: ``maintain()`` signs again before the signatures expire and when the
  unsigned file changes (the service calls it on a timer and on inotify events);
- the signed zone is a function of the unsigned file and the keys, so a snapshot is the key files
  (and which served file there was) and a restore writes them back and, unless the served file
  was never replaced, signs again (or, when there were no keys, serves the unsigned zone);
- secondaries only transfer a higher serial, so the adapter picks every serial itself
  (``soaserial``): after the one served before, and not below the unsigned file's or the Unix
  time.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dns.exception
import dns.name

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
from krs_plugin.adapters.cdsset import (
    NO_MARKING,
    Marking,
    has_cds,
    key_changed,
    next_marking,
    read_marking,
    records,
    write_marking,
)
from krs_plugin.adapters.cdsset import expected as cds_expected
from krs_plugin.adapters.dnscheck import (
    Expectation,
    KeyState,
    expectation,
    same_algorithm_refusal,
    same_algorithm_unpublished,
    signs_unpublished,
    wait_served,
)
from krs_plugin.adapters.keyfiles import KeyFolder, tags_in
from krs_plugin.adapters.settings import existing_file, seconds, server_address
from krs_plugin.adapters.soaserial import (
    is_after,
    next_serial,
    serial_of_file,
    with_serial,
)
from krs_plugin.adapters.tools import run_tool
from krs_plugin.adapters.zonesign import (
    SIGNERS,
    check_zone_file,
    earliest_expiry,
    sign_zone,
    signer_available,
)
from krs_plugin.errors import AdapterError, ConfigError, KrsError

log = logging.getLogger(__name__)

SETTINGS = {
    "config",
    "control",
    "server",
    "key_directory",
    "unsigned_file",
    "signed_file",
    "zone_files",
    "signer",
    "signature_validity",
    "refresh_before",
    "timeout",
    "verify_timeout",
}
ZONE_FILE_KEYS = {"unsigned", "signed"}
DAY = 86400
RETRY_AFTER = 60  # seconds between tries when signing again fails
CHECK_TOOLS = ("nsd-checkzone", "nsd-checkconf")


@dataclass(kw_only=True)
class NsdChange(ZoneChange):
    """An apply in NSD: the serial of the signed file written, once ``load`` has written one,
    and the zone's CDS marking before and after the plan."""

    serial: int | None = None
    cds_before: Marking = NO_MARKING
    cds_after: Marking = NO_MARKING


@dataclass
class NsdConfig:
    """What a batch reads of NSD once instead of per zone: the zones NSD serves (``nsd-control
    zonestatus``) and the zone files nsd.conf names (``nsd-checkconf -v``)."""

    served: set[str]
    zonefiles: dict[str, str] = field(default_factory=dict)  # zone -> zonefile: (unexpanded)
    zonesdir: str = ""


def parse_checkconf(text: str) -> tuple[dict[str, str], str]:
    """The ``zonefile:`` of each zone (its own, else its include-pattern's) and ``zonesdir:``
    from ``nsd-checkconf -v`` (every option, section by section)."""
    zones: dict[str, dict[str, str]] = {}
    patterns: dict[str, dict[str, str]] = {}
    zonesdir, section = "", ""
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line[0].isspace():
            section, current = line.split(":", 1)[0].strip(), {}
            continue
        match = re.match(r'\s+([\w-]+):\s*"?([^"]*)"?\s*$', line)
        if not match:
            continue
        option, value = match.groups()
        if section == "server" and option == "zonesdir":
            zonesdir = value
        elif section in ("zone", "pattern"):
            if option == "name":
                (zones if section == "zone" else patterns)[value.lower()] = current
            current.setdefault(option, value)
    files = {}
    for name, options in zones.items():
        pattern = patterns.get(options.get("include-pattern", "").lower(), {})
        zonefile = options.get("zonefile") or pattern.get("zonefile")
        if zonefile:
            files[name] = zonefile
    return files, zonesdir


NSD_NOT_TOLD = (
    "NSD could not be told to reload it (nothing is lost: the previous keys are in the key "
    "directory and the file NSD serves is signed with them; NSD serves it once it runs again)"
)


class NotReloaded(AdapterError):
    """The signed file is in place, only ``nsd-control reload`` failed (NSD down)."""

    def __init__(self, message: str, serial: int) -> None:
        super().__init__(message)
        self.serial = serial


class NsdAdapter(BaseAdapter[NsdChange]):
    name = "nsd"
    settings_keys = frozenset(SETTINGS)

    def configure(self, settings: Mapping[str, Any]) -> None:
        for required in ("key_directory", "unsigned_file", "signed_file"):
            if required not in settings:
                raise ConfigError(f"adapter.settings.{required}: required for nsd")
        self.key_directory = self.path_setting(settings["key_directory"])
        self.keys = KeyFolder(self.key_directory)
        self.unsigned_pattern = str(settings["unsigned_file"])
        self.signed_pattern = str(settings["signed_file"])
        self.zone_files = self._zone_files(settings.get("zone_files"))
        self._refuse_shared_signed_files()
        self.config = existing_file(
            self.path_setting(settings.get("config", "/etc/nsd/nsd.conf")),
            "config",
            "NSD's configuration, which nsd-control -c reads",
        )
        self.control_binary = str(settings.get("control", "nsd-control"))
        self.host, self.port = server_address(settings)
        self.signer = str(settings.get("signer", "dnssec-signzone"))
        if self.signer not in SIGNERS:
            raise ConfigError(
                f"adapter.settings.signer: {self.signer!r} is not one of {', '.join(SIGNERS)}"
            )
        self.validity = self._seconds(settings, "signature_validity", 14 * DAY)
        self.refresh_before = self._seconds(settings, "refresh_before", 4 * DAY)
        if self.refresh_before >= self.validity:
            raise ConfigError(
                "adapter.settings.refresh_before: must be shorter than signature_validity"
            )
        self.timeout = seconds(settings, "timeout", 600)
        self.verify_timeout = seconds(settings, "verify_timeout", 10)
        self._retry_at: dict[dns.name.Name, float] = {}
        self._written: dict[dns.name.Name, int] = {}  # the last serial written, per zone
        self._batch: NsdConfig | None = None  # read once while a batch runs

    def _zone_files(self, value: object) -> dict[dns.name.Name, dict[str, str]]:
        """``zone_files``: per zone, the files that do not follow the patterns. A typo here
        would sign the wrong file or serve a file NSD does not read, so every entry is checked."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(
                "adapter.settings.zone_files: must map zone names to {unsigned: <file>, "
                "signed: <file>}"
            )
        files = {}
        for name, entry in value.items():
            where = f"adapter.settings.zone_files.{name}"
            try:
                zone = dns.name.from_text(str(name))
            except dns.exception.DNSException as exc:
                raise ConfigError(f"{where}: not a zone name: {exc}") from exc
            if self.zones and zone not in self.zones:
                raise ConfigError(f"{where}: {zone} is not one of the zones in krs.yaml")
            if not isinstance(entry, Mapping) or not entry or set(entry) - ZONE_FILE_KEYS:
                raise ConfigError(f"{where}: expected {{unsigned: <file>, signed: <file>}}")
            for key, path in entry.items():
                if not isinstance(path, str) or not path:
                    raise ConfigError(f"{where}.{key}: must be a file path")
            files[zone] = dict(entry)
        return files

    def _refuse_shared_signed_files(self) -> None:
        """Two zones signed into one file would overwrite each other's zone."""
        seen: dict[Path, dns.name.Name] = {}
        for zone in self.zones:
            path = self.signed_file(zone)
            if path in seen:
                raise ConfigError(
                    f"adapter.settings.signed_file: zones {seen[path]} and {zone} would share "
                    f"the signed file {path} (put {{zone}} in the pattern, or use zone_files)"
                )
            seen[path] = zone

    @staticmethod
    def _seconds(settings: Mapping[str, Any], key: str, default: int) -> int:
        """Whole seconds (a number, or a duration such as ``"14d"``)."""
        value = settings.get(key, default)
        whole = seconds(settings, key, default)
        if whole != int(whole):
            raise ConfigError(f"adapter.settings.{key}: must be whole seconds, got {value!r}")
        return int(whole)

    # --- files --------------------------------------------------------------------------------

    def unsigned_file(self, zone: dns.name.Name) -> Path:
        own = self.zone_files.get(zone, {}).get("unsigned")
        return self.path_setting(own or self.unsigned_pattern.format(zone=zone.to_text()))

    def signed_file(self, zone: dns.name.Name) -> Path:
        own = self.zone_files.get(zone, {}).get("signed")
        return self.path_setting(own or self.signed_pattern.format(zone=zone.to_text()))

    def watched_files(self) -> list[Path]:
        """The unsigned zone files: an edit is signed and served without operator action."""
        return [self.unsigned_file(zone) for zone in self.zones]

    # --- nsd-control ----------------------------------------------------------------------------

    def control(self, *command: str) -> str:
        argv = [self.control_binary, "-c", str(self.config), *command]
        out = run_tool(argv, f"nsd-control {' '.join(command)}", timeout=self.verify_timeout)
        if out.startswith("error"):
            raise AdapterError(f"nsd-control {' '.join(command)}: {out.strip()}")
        return out

    # --- the Adapter interface --------------------------------------------------------------

    def server_problem(self) -> str | None:
        """``nsd-control status``: NSD runs and answers its control channel."""
        try:
            self.control("status")
        except (AdapterError, OSError) as exc:
            return f"nsd-control cannot reach NSD: {exc}"
        return None

    def check(self) -> list[Problem]:
        if shutil.which(self.control_binary) is None:
            return [Problem(f"{self.control_binary} not found", "apt-get install nsd")]
        try:
            self.control("status")
        except AdapterError as exc:
            return [
                Problem(
                    f"nsd-control cannot reach NSD: {exc}",
                    "set remote-control: control-enable: yes in nsd.conf (a control-interface "
                    "socket path, or run nsd-control-setup for the TLS keys)",
                )
            ]
        problems = [
            Problem(f"{tool} not found", "apt-get install nsd")
            for tool in CHECK_TOOLS
            if shutil.which(tool) is None
        ]
        problems += [p for zone in self.zones if (p := self._zone_problem(zone)) is not None]
        if not signer_available(self.signer):
            problems.append(
                Problem(
                    f"signer {self.signer} not found",
                    "apt-get install bind9-utils (dnssec-signzone) or ldnsutils (ldns-signzone)",
                )
            )
        if not self.key_directory.is_dir():
            problems.append(Problem(f"key directory {self.key_directory} does not exist"))
        return problems

    def _zone_problem(self, zone: dns.name.Name) -> Problem | None:
        name = zone.to_text()
        try:
            if self._batch is None:
                self.control("zonestatus", name)
            elif name.lower() not in self._batch.served:
                raise AdapterError(f"nsd-control zonestatus {name}: zone {name} not configured")
        except AdapterError as exc:
            if "not configured" in str(exc):
                return Problem(
                    f"NSD does not serve zone {name} (not configured in nsd.conf)",
                    f"add a zone: block for {name} whose zonefile is {self.signed_file(zone)}",
                )
            return Problem(f"NSD does not answer for zone {name}: {exc}", "is nsd running?")
        served = self.nsd_zonefile(zone)
        if served is not None and served.resolve() != self.signed_file(zone).resolve():
            return Problem(
                f"NSD serves zone {name} from {served}, but the adapter writes "
                f"{self.signed_file(zone)}",
                "make adapter.settings.signed_file (or zone_files) and the zone's zonefile: in "
                "nsd.conf name the same file",
            )
        unsigned = self.unsigned_file(zone)
        if not unsigned.is_file():
            return Problem(
                f"unsigned zone file {unsigned} for {name} does not exist",
                "the adapter signs this file: set adapter.settings.unsigned_file or zone_files",
            )
        return None

    def nsd_zonefile(self, zone: dns.name.Name) -> Path | None:
        """The file NSD loads ``zone`` from, as nsd.conf says (patterns expanded, relative to
        zonesdir); None when nsd.conf does not name it (a zone added with nsd-control addzone
        whose pattern is not known here, or nsd-checkconf missing)."""

        def option(*query: str) -> str:
            argv = ["nsd-checkconf", *query, str(self.config)]
            return run_tool(argv, "nsd-checkconf", timeout=self.verify_timeout).strip()

        batch = self._batch
        if batch is not None and zone.to_text().lower() in batch.zonefiles:
            path = Path(expand_zonefile(batch.zonefiles[zone.to_text().lower()], zone))
            return path if path.is_absolute() else Path(batch.zonesdir) / path
        try:
            text = option("-z", zone.to_text(), "-o", "zonefile")
            if not text:
                return None
            path = Path(expand_zonefile(text, zone))
            return path if path.is_absolute() else Path(option("-o", "zonesdir")) / path
        except AdapterError:
            return None

    def current_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return self.keys.installed_keys(zone)

    def snapshot(self, zone: dns.name.Name) -> str:
        files = self.keys.snapshot(zone)
        return json.dumps(
            {
                "files": {p.name: base64.b64encode(d).decode() for p, d in files.items()},
                "served": self._identity(self.signed_file(zone)),
            }
        )

    def restore(self, zone: dns.name.Name, snapshot: str) -> str:
        """Put the snapshot's keys back and serve the zone signed with them, under a new serial
        (secondaries may have transferred the one being undone, and only take a higher one); a
        snapshot without keys (the zone's first distribution undone) serves the unsigned zone
        again, as before the KRS signed it. When the served file is still the one of the
        snapshot, only the key files are put back: NSD never saw the change."""
        data = json.loads(snapshot)
        files = data.get("files", data)  # a journal written before snapshots named the file
        before = {self.key_directory / n: base64.b64decode(d) for n, d in files.items()}
        installed = {k.key_tag for k in self.current_keys(zone)}
        self.keys.restore(zone, before)
        served = self.signed_file(zone)
        if "served" in data:
            if data["served"] == self._identity(served):
                return "keys restored; the served file was never replaced"
            if data["served"] is None:
                served.unlink(missing_ok=True)
                try:
                    self.control("reload", zone.to_text())
                except AdapterError as exc:
                    return (
                        "keys restored and the signed file written removed again (there was "
                        f"none), but {NSD_NOT_TOLD}: {exc}"
                    )
                return "keys restored; the signed file written is removed again (there was none)"
        produce, what = (
            (self._sign, "signed with the previous keys")
            if tags_in(before)
            else (self._copy_unsigned, "unsigned, as before its first keys")
        )
        try:
            serial = self._publish(zone, produce)
        except NotReloaded as exc:
            return (
                f"keys restored and the zone {what} written (serial {exc.serial}), but "
                f"{NSD_NOT_TOLD}: {exc}"
            )
        seen = self._wait(zone, installed - tags_in(before), serial)
        if not seen.ok:
            return (
                f"keys restored and the zone {what} written (serial {serial}), but NSD was not "
                f"seen serving it: {'; '.join(seen.details)}"
            )
        return f"keys restored; NSD serves the zone {what} (serial {serial})"

    @staticmethod
    def _identity(path: Path) -> str | None:
        """Which file is at ``path``: replaced by a rename, it is another inode."""
        try:
            info = path.stat()
        except FileNotFoundError:
            return None
        return f"{info.st_ino}:{info.st_mtime_ns}:{info.st_size}"

    # --- the apply hooks (base.BaseAdapter.apply) -------------------------------------------

    def begin(self, zone: dns.name.Name, plan: KeyPlan, now: int) -> NsdChange:
        problem = self._zone_problem(zone)
        if problem is not None:  # before any file is touched
            raise AdapterError(problem.what)
        if not signer_available(self.signer):
            raise AdapterError(f"signer {self.signer} not found")
        self.keys.refuse_shared_file_names(zone, plan)
        if self.signer == "ldns-signzone":
            conflicts = same_algorithm_unpublished(self._planned_states(zone, plan, now), now)
            if conflicts:
                raise AdapterError(
                    same_algorithm_refusal(conflicts, "ldns-signzone")
                    + " (docs/servers/nsd.md; dnssec-signzone, the default signer, signs with "
                    "both)"
                )
        before = read_marking(self.key_directory, zone)
        return NsdChange(
            zone=zone, plan=plan, now=now, cds_before=before, cds_after=next_marking(plan, *before)
        )

    def _planned_states(self, zone: dns.name.Name, plan: KeyPlan, now: int) -> list[KeyState]:
        """The zone's keys as they will be once ``plan`` is applied (for the checks in
        ``begin``)."""
        states = {
            key.key_tag: KeyState(key.key_tag, key.flags, timing, key.dnskey, key.algorithm)
            for _, key, timing in self.keys.read_keys(zone)
            if key.key_tag not in plan.remove
        }
        for tag in plan.retire:
            if tag in states and states[tag].timing.inactive is None:
                timing = replace(states[tag].timing, inactive=now)
                states[tag] = replace(states[tag], timing=timing)
        for planned in plan.install:
            key = planned.key
            states[key.key_tag] = KeyState(
                key.key_tag, key.flags, planned.timing, key.dnskey, key.algorithm
            )
        return list(states.values())

    def unpublished_dnskeys(self, zone: dns.name.Name) -> list[Any]:
        now = int(time.time())
        return [
            key.dnskey
            for _, key, timing in self.keys.read_keys(zone)
            if signs_unpublished(timing, now)
        ]

    def write_key(self, change: NsdChange, planned: PlannedKey) -> bool:
        key = planned.key
        cds = key_changed(
            change.cds_before, change.cds_after, key.key_tag, key.algorithm, key.flags
        )
        return self.keys.write_key(key, planned.timing) or cds

    def retire_key(self, change: NsdChange, tag: int) -> bool:
        timing = next((k.timing for k in self.current_keys(change.zone) if k.key_tag == tag), None)
        if timing is None or (timing.inactive is not None and timing.inactive <= change.now):
            return False
        delete = change.plan.retire_delete_at
        return self.keys.retime(change.zone, tag, inactive=change.now, delete=delete) is not None

    def remove_key(self, change: NsdChange, tag: int) -> bool:
        return self.keys.delete_key(change.zone, tag)

    def load(self, change: NsdChange) -> None:
        """Sign with the keys as they are now and have NSD load the signed file."""
        if change.changed:
            if change.cds_after != change.cds_before:
                change.step = "write the CDS marking"
                write_marking(self.key_directory, change.zone, change.cds_after)
            change.step = "sign"
            change.serial = self._publish(change.zone, self._sign)

    def verify(self, change: NsdChange) -> Verification:
        return self._wait(change.zone, change.removed, change.serial)

    # --- many zones at once (BaseAdapter.apply_batch) ---------------------------------------

    @contextlib.contextmanager
    def batch_context(self, zones: Sequence[dns.name.Name]) -> Iterator[None]:
        """NSD's zone list (``nsd-control zonestatus``) and nsd.conf's zone files
        (``nsd-checkconf -v``) read once for the batch, instead of three tool runs per zone.
        When they cannot be read (NSD down), each zone asks for itself, as ever."""
        if self._batch is not None:
            yield
            return
        try:
            self._batch = self._read_config()
        except AdapterError:
            self._batch = None
        try:
            with self.keys.batch():  # every zone's keys kept parsed
                yield
        finally:
            self._batch = None

    def _read_config(self) -> NsdConfig:
        status = self.control("zonestatus")
        served = {m.lower() for m in re.findall(r"^zone:\s+(\S+)", status, re.MULTILINE)}
        argv = ["nsd-checkconf", "-v", str(self.config)]
        files, zonesdir = parse_checkconf(run_tool(argv, "nsd-checkconf -v", timeout=self.timeout))
        return NsdConfig(served, files, zonesdir)

    def load_batch(self, changes: Sequence[NsdChange]) -> None:
        """Every changed zone signed and put in place, then one ``nsd-control reload`` (NSD
        reloads every zone whose file changed) instead of one per zone. A zone that does not
        sign stops the batch before NSD is told anything."""
        changed = [c for c in changes if c.changed]
        for change in changed:
            try:
                self._sign_in_place(change)
            except self.failures as exc:
                raise StepFailed(change, exc) from exc
        if not changed:
            return
        for change in changed:
            change.step = "nsd-control reload"
        try:
            self.control("reload")
        except AdapterError as exc:
            raise StepFailed(changed[0], exc) from exc

    def _sign_in_place(self, change: NsdChange) -> None:
        if change.cds_after != change.cds_before:
            change.step = "write the CDS marking"
            write_marking(self.key_directory, change.zone, change.cds_after)
        change.step = "sign"
        change.serial = self._write_served(change.zone, self._sign)

    def verify_batch(self, changes: Sequence[NsdChange]) -> list[Verification]:
        expects = [self._expect(c.zone, c.removed, c.serial) for c in changes]
        return self.wait_served_batch(expects, self.verify_timeout)

    # --- signing ----------------------------------------------------------------------------

    def _cds_keys(self, zone: dns.name.Name, now: int) -> tuple[Marking, list[Any]]:
        """The zone's marking and the keys (from the key folder) whose CDS it serves at ``now``."""
        marking = read_marking(self.key_directory, zone)
        keys = [
            (key, timing)
            for _, key, timing in self.keys.read_keys(zone)
            if (key.key_tag, key.algorithm) in marking[0] and key.flags == 257
        ]
        return marking, [(k, t) for k, t in keys if has_cds(t, now)]

    def _cds_lines(self, zone: dns.name.Name, now: int) -> list[str]:
        """The CDS and CDNSKEY records the signed zone carries (docs/servers/nsd.md)."""
        marking, keys = self._cds_keys(zone, now)
        cds, cdnskey = records(zone, [k.dnskey for k, _ in keys], marking[1])
        ttl = min((k.ttl for k, _ in keys), default=None)
        if ttl is None:
            ttl = min((k.ttl for _, k, _ in self.keys.read_keys(zone)), default=3600)
        name = zone.to_text()
        return [f"{name} {ttl} IN CDS {r.to_text()}" for r in cds] + [
            f"{name} {ttl} IN CDNSKEY {r.to_text()}" for r in cdnskey
        ]

    def _sign(self, zone: dns.name.Name, fresh: Path, serial: int) -> None:
        result = sign_zone(
            self.signer,
            zone,
            self.unsigned_file(zone),
            self.keys,
            fresh,
            serial=serial,
            validity=self.validity,
            timeout=self.timeout,
            extra=self._cds_lines(zone, int(time.time())),
        )
        log.info("nsd, zone %s: signed with %s in %.2f s", zone, self.signer, result.seconds)

    def _copy_unsigned(self, zone: dns.name.Name, fresh: Path, serial: int) -> None:
        text = self.unsigned_file(zone).read_text(encoding="latin-1")
        fresh.write_text(with_serial(text, serial), encoding="latin-1")

    def _serve(
        self,
        zone: dns.name.Name,
        produce: Callable[[dns.name.Name, Path, int], None],
        removed: Iterable[int],
    ) -> int:
        """``_publish`` the zone, then see NSD serve it (raises when it does not); the serial."""
        serial = self._publish(zone, produce)
        verification = self._wait(zone, removed, serial)
        if not verification.ok:
            raise AdapterError("verify: " + "; ".join(verification.details))
        return serial

    def _publish(
        self, zone: dns.name.Name, produce: Callable[[dns.name.Name, Path, int], None]
    ) -> int:
        """Write the zone (``produce``) with the next serial beside the served file, check it,
        rename it into place and reload; raises (with the step in the message) on any
        failure. A failure before the rename leaves the served file untouched."""
        serial = self._write_served(zone, produce)
        try:
            self.control("reload", zone.to_text())
        except AdapterError as exc:
            raise NotReloaded(f"reload: {exc}", serial) from exc
        return serial

    def _write_served(
        self, zone: dns.name.Name, produce: Callable[[dns.name.Name, Path, int], None]
    ) -> int:
        """``_publish`` without the reload: the zone written with the next serial beside the
        served file, checked, and renamed into place; its serial."""
        served = self.signed_file(zone)
        fresh = served.with_name(f".{served.name}.krs-new")
        serial = self._next_serial(zone)
        try:
            produce(zone, fresh, serial)
            check_zone_file(zone, fresh, self.timeout)
            os.chmod(fresh, 0o644)  # public data; NSD may read it as its own user
            os.replace(fresh, served)
        finally:
            fresh.unlink(missing_ok=True)
        self._written[zone] = serial
        return serial

    def _next_serial(self, zone: dns.name.Name) -> int:
        """After the serial NSD serves (and any written since), not below the unsigned file's
        serial or the Unix time."""
        unsigned = self.unsigned_file(zone)
        own = serial_of_file(unsigned)
        if own is None:
            raise AdapterError(f"unsigned zone file {unsigned}: no SOA record with a serial")
        previous = serial_of_file(self.signed_file(zone))
        written = self._written.get(zone)
        if written is not None and (previous is None or is_after(written, previous)):
            previous = written  # a rollback put a lower serial back: never reuse one
        return next_serial(previous, own, int(time.time()))

    def _wait(
        self, zone: dns.name.Name, removed: Iterable[int], serial: int | None = None
    ) -> Verification:
        expect = self._expect(zone, removed, serial)
        return wait_served(expect, self.host, self.port, timeout=self.verify_timeout)

    def _expect(
        self, zone: dns.name.Name, removed: Iterable[int], serial: int | None = None
    ) -> Expectation:
        """What NSD must serve for the zone's keys (and the signed file's ``serial``)."""
        now = int(time.time())
        keys = [
            KeyState(key.key_tag, key.flags, timing, key.dnskey, key.algorithm)
            for _, key, timing in self.keys.read_keys(zone)
        ]
        marking, with_cds = self._cds_keys(zone, now)
        marked = [(k.key_tag, k.algorithm, k.flags, t) for k, t in with_cds]
        expect = replace(
            expectation(zone, keys, removed, now),
            serial=serial,
            cds=cds_expected(marked, marking[1], now),
        )
        return expect

    # --- keeping signatures fresh -------------------------------------------------------------

    def signature_expiry(self, zone: dns.name.Name) -> int | None:
        """The earliest RRSIG expiration NSD serves for ``zone`` (from the signed file)."""
        return earliest_expiry(self.signed_file(zone))

    def due(self, zone: dns.name.Name, now: float) -> str | None:
        """Why ``zone`` must be signed again now, or None."""
        if not self.keys.private_files(zone):
            return None  # no keys from the KDC yet: nothing to sign with
        served = self.signed_file(zone)
        expiry = self.signature_expiry(zone)
        if expiry is None:
            return "the served zone is not signed"
        if expiry - self.refresh_before <= now:
            return (
                f"signatures expire at {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(expiry))}"
            )
        try:
            signed_at = served.stat().st_mtime
            if self.unsigned_file(zone).stat().st_mtime > signed_at:
                return "the unsigned zone file changed"
        except FileNotFoundError:
            return None
        passed = [t for t in self.keys.key_times(zone) if signed_at < t <= now]
        if passed:
            when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(min(passed)))
            return f"a key's publish, activate, inactive or delete time passed ({when})"
        return None

    def maintain(self) -> float:
        """Sign again every zone that is due; the seconds until the next one will be. A zone
        whose signing failed waits ``RETRY_AFTER`` before the next try, not a second."""
        now = time.time()
        for zone in self.zones:
            if self._retry_at.get(zone, 0.0) > now:
                continue
            reason = self.due(zone, now)
            if reason is None:
                continue
            log.info("nsd, zone %s: signing again: %s", zone, reason)
            served_before = serial_of_file(self.signed_file(zone))
            try:
                self._serve(zone, self._sign, removed=())
                self._retry_at.pop(zone, None)
            except (KrsError, OSError) as exc:
                self._retry_at[zone] = now + RETRY_AFTER
                after = serial_of_file(self.signed_file(zone))
                state = (
                    "the served file was not touched"
                    if after == served_before
                    else f"the new signed file (serial {after}) is in place"
                )
                log.error("nsd, zone %s: signing again failed, %s (next try in %d s): %s",
                          zone, state, RETRY_AFTER, exc)  # fmt: skip
        return self._next_wait(time.time())

    def _next_wait(self, now: float) -> float:
        moments = []
        for zone in self.zones:
            retry = self._retry_at.get(zone, 0.0)
            if retry > now:  # failed: nothing else about this zone before the retry
                moments.append(retry)
                continue
            expiry = self.signature_expiry(zone)
            if expiry is not None:
                moments.append(expiry - self.refresh_before)
            moments += [t for t in self.keys.key_times(zone) if t > now]
        if not moments:
            return 3600.0
        return max(1.0, min(moments) - now)


def expand_zonefile(pattern: str, zone: dns.name.Name) -> str:
    """nsd.conf's ``zonefile:`` with its %-escapes filled in for ``zone`` (nsd.conf(5)): %s the
    zone name, %1 %2 %3 its first characters, %z %y %x its labels from the top; a "." where
    there is no such character or label."""
    name = zone.to_text(omit_final_dot=True)
    top_down = [label.decode() for label in reversed(zone.labels) if label] + ["."] * 3
    fill = {"s": name, "z": top_down[0], "y": top_down[1], "x": top_down[2]}
    fill.update({str(i): name[i - 1] if len(name) >= i else "." for i in (1, 2, 3)})
    out, i = [], 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern) and pattern[i + 1] in fill:
            out.append(fill[pattern[i + 1]])
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out)
