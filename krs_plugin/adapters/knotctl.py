"""Knot's two command-line tools as Python calls: ``knotc`` (the running knotd, over its control
socket) and ``keymgr`` (the KASP database). Errors carry Knot's own message.

Both exit 1 with ``error: …`` on stderr when they fail; ``knotc`` only waits for a zone event
(and reports its failure) with ``-b``, so every event here is sent blocking. keymgr writes the
KASP database while knotd runs (LMDB; verified, docs/servers/knot.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.name
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from krs_plugin.adapters.tools import run_tool
from krs_plugin.dnssec import DnssecKey, KeyTiming
from krs_plugin.errors import AdapterError

TIMES = ("publish", "ready", "active", "retire", "remove", "pre_active", "post_active")
"""The Knot key times the KRS sets (manual policy); 0 means "not set" to Knot. ``ready`` carries
the distribution's ``cds``: Knot (``cds-cdnskey-publish: rollover``, its default) serves the CDS
and CDNSKEY of exactly the KSKs that are ready and not yet active, and a ready KSK signs the
DNSKEY RRset like an active one (Knot 3.2.6 and 3.4, tested). So a key marked ``publish`` gets
``ready`` = its activate time and ``active`` = its inactive time (0 when it has none): ready
while the KRS's timing says active, then retired, its CDS gone, at the same moment.

``pre_active`` and ``post_active`` carry a key that signs without being published (an activate
time and no publish time, dnscheck.signs_unpublished), as Knot's own algorithm rollover does: a
key never published gets ``pre_active`` = its activate time and no other time (Knot signs the
zone with it, its DNSKEY is not served); a key that was published gets ``post_active`` = the
moment it became unpublished, its publish and active times kept. Knot holds a post-active key
with a retire time invalid, and a pre-active one with a retire time published, so such a key
leaves at its inactive (or delete) time by ``remove``."""

Times = tuple[int, int, int, int, int, int, int]
JSON_NAMES = {name: name.replace("_", "-") for name in TIMES}  # keymgr -j: "pre-active"


@dataclass(frozen=True)
class KaspKey:
    """One key of a zone in Knot's KASP database, as ``keymgr -j list`` shows it."""

    key_id: str
    tag: int
    algorithm: int
    ksk: bool
    zsk: bool
    public_only: bool
    times: Times  # publish, ready, active, retire, remove, pre_active, post_active

    @property
    def flags(self) -> int:
        return 257 if self.ksk else 256

    @property
    def cds(self) -> bool:
        """Marked ``publish`` by the KRS (its CDS served while it is "active"): ready, and
        active only when it retires (see ``TIMES``)."""
        _, ready, active, retire, _, _, post = self.times
        return self.ksk and ready != 0 and active in (0, retire) and post == 0

    @property
    def unpublished(self) -> bool:
        """Signs (or signed) without being published: pre-active, or post-active (``TIMES``)."""
        publish, _, active, _, _, pre, post = self.times
        return post != 0 or (pre != 0 and publish == 0 and active == 0)

    @property
    def timing(self) -> KeyTiming:
        """The KRS's timing of the key: a key marked for CDS is active from its ready time; a
        pre- or post-active key has no publish time, and its remove time as its delete time."""
        publish, ready, active, retire, remove, pre, _ = (t or None for t in self.times)
        if self.unpublished:
            return KeyTiming(activate=active or ready or pre, delete=remove)
        activate = ready if self.cds else active
        return KeyTiming(publish=publish, activate=activate, inactive=retire, delete=remove)

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> KaspKey:
        return cls(
            key_id=str(item["id"]),
            tag=int(item["tag"]),
            algorithm=int(item["algorithm"]),
            ksk=bool(item["ksk"]),
            zsk=bool(item["zsk"]),
            public_only=bool(item.get("public-only", False)),
            times=tuple(int(item.get(JSON_NAMES[n]) or 0) for n in TIMES),  # type: ignore[arg-type]
        )

    def retimed(self, retire: int, remove: int) -> Times:
        """The times with a new retire and remove time; a key marked for CDS stops being ready
        at its retire time too (see ``TIMES``); a key signing unpublished leaves at ``retire``
        (Knot has no retired state for it)."""
        publish, ready, active, _, _, pre, post = self.times
        if self.unpublished:
            end = min(t for t in (retire, remove) if t) if (retire or remove) else 0
            return (publish, ready, active, 0, end, pre, post)
        return (publish, ready, retire if self.cds else active, retire, remove, pre, post)


def knot_key_id(key: DnssecKey) -> str:
    """The id Knot gives ``key`` in its KASP database: the SHA-1 of the public key's
    SubjectPublicKeyInfo DER (checked against keymgr for algorithms 8, 13, 15 and 16), so a key
    is recognised without asking keymgr for every key's DNSKEY."""
    spki = key.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha1(spki, usedforsecurity=False).hexdigest()


def knot_times(
    timing: KeyTiming, now: int, cds: bool = False, existing: KaspKey | None = None
) -> Times:
    """Knot's times (``TIMES``) for a BIND-style ``timing``. A key without a Publish time is
    published when it becomes active (BIND's rule), or now when it has neither, unless its
    activate time has passed: then it signs unpublished (``TIMES``: post-active when
    ``existing``, the key as Knot has it, was published, else pre-active).
    ``cds``: the key's CDS and CDNSKEY are served while it is active (see ``TIMES``)."""
    retire, remove = timing.inactive or 0, timing.delete or 0
    if timing.publish is None and timing.activate is not None and timing.activate <= now:
        end = min(t for t in (retire, remove) if t) if (retire or remove) else 0
        if existing is not None and existing.times[6]:  # post-active already: kept as it is
            publish, ready, active = existing.times[:3]
            return (publish, ready, active, 0, end, existing.times[5], existing.times[6])
        if existing is not None and 0 < existing.times[0] <= now:  # was published
            publish, ready, active = existing.times[:3]
            return (publish, ready, active or timing.activate, 0, end, 0, now)
        return (0, 0, 0, 0, end, timing.activate, 0)
    publish = timing.publish if timing.publish is not None else (timing.activate or now)
    if cds and timing.activate is not None:
        return (publish, timing.activate, retire, retire, remove, 0, 0)
    return (publish, 0, timing.activate or 0, retire, remove, 0, 0)


def full_times(times: Sequence[int]) -> Times:
    """Times as stored by the KRS: snapshots written before ``ready`` have four, before
    ``pre_active`` and ``post_active`` five."""
    if len(times) == 4:
        publish, active, retire, remove = times
        return (publish, 0, active, retire, remove, 0, 0)
    if len(times) == 5:
        publish, ready, active, retire, remove = times
        return (publish, ready, active, retire, remove, 0, 0)
    publish, ready, active, retire, remove, pre, post = times
    return (publish, ready, active, retire, remove, pre, post)


def time_args(times: Sequence[int]) -> list[str]:
    return [f"{name}={value}" for name, value in zip(TIMES, times, strict=True)]


ZONES_PER_TIMEOUT = 500
"""A knotc event naming many zones waits for knotd to sign them all (``-b``): it is given
``timeout`` once more for every 500 zones (docs/servers/knot.md, "Many zones in one
distribution")."""


class KnotTools:
    """``knotc`` and ``keymgr`` for one Knot instance (its config file or control socket)."""

    def __init__(
        self,
        *,
        config: Path | None,
        socket: Path | None,
        knotc: str = "knotc",
        keymgr: str = "keymgr",
        timeout: float = 10,
    ) -> None:
        self.knotc_binary = knotc
        self.keymgr_binary = keymgr
        self.timeout = timeout
        self.config = config
        self.config_args = ["-c", str(config)] if config is not None else []
        self.keymgr_args = self.config_args  # in a batch: a private copy of the configuration
        self.socket_args = ["-s", str(socket)] if socket is not None else []
        self._conf: dict[str, dict[str, str]] | None = None  # section -> items, in a batch
        self._loaded: set[str] | None = None  # zones knotd has loaded, read once in a batch
        self._kasp_zones: set[str] | None = None  # zones with keys in the KASP database

    # --- many zones at once -------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """For a batch of zones: knotd's configuration, its zones' status and the KASP
        database's zone list are read once (three knotc calls and one keymgr call instead of
        about ten per zone), then looked up; a zone the batch writes keys to is read for real
        from then on. Re-entrant; forgotten when the outermost batch ends."""
        if self._conf is not None:
            yield
            return
        with contextlib.ExitStack() as cleanup:
            try:
                self._conf = self._read_conf(("zone", "template", "policy", "database"))
                self._loaded = self._read_loaded()
                self.keymgr_args = self._private_confdb(cleanup)
                self._kasp_zones = set(self._run([self.keymgr_binary, *self.keymgr_args, "-l"],
                                                 "keymgr -l").split())  # fmt: skip
            except AdapterError:  # knotd down, say: each zone's own calls then say so, as ever
                self._conf = self._loaded = self._kasp_zones = None
                self.keymgr_args = self.config_args
            try:
                yield
            finally:
                self._conf = self._loaded = self._kasp_zones = None
                self.keymgr_args = self.config_args

    def _private_confdb(self, cleanup: contextlib.ExitStack) -> list[str]:
        """keymgr's arguments for the batch: ``-C`` a binary copy of knot.conf that ``knotc
        conf-import`` makes once in a private folder, removed when the batch ends. keymgr parses
        a text knot.conf whole at every run (0.27 s with 10,000 zones, against 6 ms for a copy
        it looks up; docs/servers/knot.md, "keymgr against a copy of knot.conf"), and a new
        node's batch runs it twice a zone. The copy is of the same file, includes and all;
        without a file (knotd's own confdb) keymgr reads what it always reads."""
        if self.config is None:
            return self.config_args
        folder = Path(tempfile.mkdtemp(prefix="krs-knot-conf-"))  # 0700, the KRS's own
        cleanup.callback(shutil.rmtree, folder, ignore_errors=True)
        confdb = folder / "confdb"
        self._run([self.knotc_binary, "-C", str(confdb), "conf-import", str(self.config)],
                  f"knotc conf-import {self.config}")  # fmt: skip
        return ["-C", str(confdb)]

    def _read_conf(self, kinds: Sequence[str]) -> dict[str, dict[str, str]]:
        """Every item of the configuration sections ``kinds`` (``zone``, ...), by section
        (``zone[example.com.]``): what ``conf_section`` answers, in one knotc call per kind."""
        sections: dict[str, dict[str, str]] = {}
        for kind in kinds:
            for line in self.knotc("conf-read", kind).splitlines():
                name, sep, value = line.partition(" = ")
                if not sep:
                    continue
                name, value = name.strip(), value.strip()
                if "[" not in name:  # "zone.domain = example.com.": the section exists
                    if name.count(".") == 1 and kind != "database":
                        sections.setdefault(f"{kind}[{value}]", {})
                    else:
                        sections.setdefault(kind, {})[name.rsplit(".", 1)[-1]] = value
                    continue
                section, _, item = name.rpartition(".")
                sections.setdefault(section, {})[item] = value
        return sections

    def _read_loaded(self) -> set[str]:
        """The zones knotd has a version of loaded (``knotc zone-status``, all zones)."""
        loaded = set()
        for line in self.knotc("zone-status").splitlines():
            match = re.match(r"\[([^\]]+)\]", line)
            if match and "serial: -" not in line:
                loaded.add(match.group(1).lower())
        return loaded

    def _cached_section(self, section: str) -> dict[str, str] | None:
        """``section`` from the batch's configuration, or None outside a batch. A section the
        configuration does not have fails as knotc does ("invalid identifier")."""
        if self._conf is None:
            return None
        if section not in self._conf:
            raise AdapterError(f"knotc conf-read {section}: invalid identifier")
        return dict(self._conf[section])

    def _touched(self, zone: dns.name.Name) -> None:
        """Keys of ``zone`` were written: read them for real from now on."""
        if self._kasp_zones is not None:
            self._kasp_zones.add(zone.to_text().lower())

    def load_keys_many(self, zones: Sequence[dns.name.Name]) -> dict[str, str]:
        """``load_keys`` for many zones in two knotc calls (the zones loaded, then those never
        loaded); knotc names each zone whose event failed: returned as zone -> error."""
        errors: dict[str, str] = {}
        loaded = [z for z in zones if self.zone_loaded(z)]
        fresh = [z for z in zones if z not in loaded]
        for event, group in (("zone-keys-load", loaded), ("zone-reload", fresh)):
            if not group:
                continue
            try:
                self.knotc(
                    "-b",
                    event,
                    *(z.to_text() for z in group),
                    timeout=self.timeout * (1 + len(group) / ZONES_PER_TIMEOUT),
                    what=f"knotc -b {event} ({len(group)} zone{'s' if len(group) != 1 else ''})",
                )
            except AdapterError as exc:
                named = re.findall(r"\[([^\]]+)\] \(([^)]*)\)", str(exc))
                if not named:
                    raise
                errors.update({zone.lower(): f"knotc {event}: {why}" for zone, why in named})
        if self._loaded is not None:  # what the batch's restores ask next
            self._loaded.update(n for z in fresh if (n := z.to_text().lower()) not in errors)
        return errors

    def _run(self, argv: list[str], what: str, timeout: float | None = None) -> str:
        # umask 077: keymgr creates the keystore's PEM files with the caller's umask (0640
        # under the usual 022), and they hold private keys.
        return run_tool(argv, what, timeout=timeout or self.timeout, umask=0o077)

    def knotc(self, *command: str, timeout: float | None = None, what: str = "") -> str:
        """One knotc call; ``timeout`` (default ``self.timeout``) bounds both knotc's wait for
        knotd (``-t``) and the process."""
        seconds = timeout or self.timeout
        argv = [self.knotc_binary, *self.config_args, *self.socket_args, "-t",
                f"{max(1, round(seconds))}", *command]  # fmt: skip
        return self._run(argv, what or f"knotc {' '.join(command)}", seconds)

    def keymgr(self, zone: dns.name.Name, *command: str, json_output: bool = False) -> str:
        flags = ["-j"] if json_output else []
        argv = [self.keymgr_binary, *self.keymgr_args, *flags, zone.to_text(), *command]
        return self._run(argv, f"keymgr {zone} {' '.join(command)}")

    # --- knotd ------------------------------------------------------------------------------

    def conf_read(self, item: str) -> str | None:
        """One configuration value of the running knotd; None when it is not set."""
        if self._conf is not None:
            section, _, name = item.rpartition(".")
            return self._conf.get(section, {}).get(name)
        for line in self.knotc("conf-read", item).splitlines():
            name, sep, value = line.partition(" = ")
            if sep and name.strip() == item:
                return value.strip()
        return None

    def conf_section(self, section: str) -> dict[str, str]:
        """Every item set in one configuration section (``zone[example.com.]``), by item name,
        in one call: ``{"dnssec-signing": "on", ...}``."""
        cached = self._cached_section(section)
        if cached is not None:
            return cached
        items = {}
        for line in self.knotc("conf-read", section).splitlines():
            name, sep, value = line.partition(" = ")
            if sep:
                items[name.strip().rsplit(".", 1)[-1]] = value.strip()
        return items

    def zone_loaded(self, zone: dns.name.Name) -> bool:
        """Whether knotd has a version of ``zone`` loaded ("serial: -" until it has keys)."""
        if self._loaded is not None:
            return zone.to_text().lower() in self._loaded
        return "serial: -" not in self.knotc("zone-status", zone.to_text())

    def load_keys(self, zone: dns.name.Name) -> None:
        """Make knotd sign with the KASP database's keys now. A zone that never loaded (signing
        on and no keys) needs a zone reload: ``zone-keys-load`` answers "invalid parameter"."""
        event = "zone-keys-load" if self.zone_loaded(zone) else "zone-reload"
        self.knotc("-b", event, zone.to_text())
        if self._loaded is not None:
            self._loaded.add(zone.to_text().lower())

    # --- the KASP database -------------------------------------------------------------------

    def keys(self, zone: dns.name.Name) -> list[KaspKey]:
        if self._kasp_zones is not None and zone.to_text().lower() not in self._kasp_zones:
            return []  # keymgr -l does not list it: no keys (a new node's zones)
        text = self.keymgr(zone, "list", json_output=True)
        return [KaspKey.from_json(item) for item in json.loads(text or "[]")]

    def import_pem(
        self,
        zone: dns.name.Name,
        pem: Path,
        algorithm: int,
        *,
        ksk: bool,
        zsk: bool,
        times: Sequence[int],
    ) -> str:
        """Import a private key; its Knot key id."""
        self._touched(zone)
        out = self.keymgr(
            zone,
            "import-pem",
            str(pem),
            f"algorithm={algorithm}",
            f"ksk={'yes' if ksk else 'no'}",
            f"zsk={'yes' if zsk else 'no'}",
            *time_args(times),
        )
        return out.split()[0]

    def set_times(self, zone: dns.name.Name, key_id: str, times: Sequence[int]) -> None:
        self._touched(zone)
        self.keymgr(zone, "set", f"id={key_id}", *time_args(times))

    def dnskey(self, zone: dns.name.Name, key_id: str) -> str:
        """The key's DNSKEY record (``keymgr ZONE dnskey ID``), one line of presentation text."""
        return self.keymgr(zone, "dnskey", key_id).strip()

    def delete(self, zone: dns.name.Name, key_id: str) -> None:
        self._touched(zone)
        self.keymgr(zone, "delete", f"id={key_id}")
