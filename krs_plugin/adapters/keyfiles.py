"""A zone's BIND-format key files in one folder: list, read, snapshot, restore, re-time.

Shared by the adapters whose server reads such a folder (directory, BIND9) and by the ones that
keep a copy to import or sign from (NSD). Snapshots are the file bytes, so a restore is exact. A
zone's files are found through the folder's ``FolderIndex``, never a glob of the whole folder.

A server that rewrites the timing in key files (BIND 9.20 under dnssec-policy writes a Delete of
its own after a retire) gets a timing record beside each key, ``K<zone>+<alg>+<tag>.krs-timing``:
the KDC's timing as the KRS last wrote it, which then is the key's timing for everything here
(what to expect over DNS, whether a key is already as planned). The server ignores the file.

A key is installed when both its files are there. The KRS writes a key's ``.private`` before its
``.key`` and deletes them in the other order, so what a full disk or a kill leaves half done is a
``.private`` without its ``.key`` (and perhaps a ``.K…`` temporary file): such a key is not
installed (reading the zone's keys passes over it, a snapshot leaves it out, so a restore removes
it) and the next apply removes its files (``remove_incomplete``). A ``.key`` alone is no key of the
KRS either, and is left alone: BIND writes the ``.key`` first, and an offline KSK has only that
(docs/operations.md, "A full disk").
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, fields, replace
from pathlib import Path

import dns.name

from krs_plugin import failpoints
from krs_plugin.adapters.base import InstalledKey, KeyPlan
from krs_plugin.adapters.folderindex import FolderIndex
from krs_plugin.dnssec import DnssecKey, KeyTiming, read_bind_key_pair
from krs_plugin.dnssec.bindfiles import bind_private_text, bind_public_text
from krs_plugin.errors import AdapterError, KeyFileError, KrsError
from krs_plugin.files import SECRET_MODE, atomic_write

log = logging.getLogger(__name__)

PUBLIC_MODE = 0o644
TIMING_SUFFIX = ".krs-timing"
TIMING_FIELDS = tuple(f.name for f in fields(KeyTiming))
PARSED_KEYS = 512
"""Keys a KeyFolder keeps parsed (LRU), each checked against its files' inode, size and mtime
before use: signing one zone read its key files eight times, 3 ms a key each, and a batch of
10,000 zones would hold 20,000 keys if the cache were not bounded."""

Signature = bytes
"""Each of a key's files' inode, size and modification time, packed (``_signature``): 81 bytes
where the tuples of ints were 370, for each of 20,000 keys kept in a batch."""


def zone_prefix(zone: dns.name.Name) -> str:
    return f"K{zone.to_text()}+"


def timing_record(private: Path) -> Path:
    return private.with_suffix(TIMING_SUFFIX)


def read_timing_record(path: Path) -> KeyTiming | None:
    """The timing a record holds; None when there is no record. A damaged record is an error
    naming the file (it is only ever written atomically)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a timing record: {exc}") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{path}: not a timing record")
    try:
        return KeyTiming(**{k: data.get(k) for k in TIMING_FIELDS})
    except TypeError as exc:
        raise KeyFileError(f"{path}: not a timing record: {exc}") from None


def encode_snapshot(files: dict[Path, bytes]) -> str:
    return json.dumps({p.name: base64.b64encode(d).decode() for p, d in files.items()})


def decode_snapshot(directory: Path, text: str) -> dict[Path, bytes]:
    return {directory / n: base64.b64decode(d) for n, d in json.loads(text).items()}


def tags_in(files: dict[Path, bytes]) -> set[int]:
    """Key tags named by the ``.private`` files among ``files`` (``K<zone>+<alg>+<tag>``)."""
    tags = set()
    for path in files:
        if path.suffix == ".private":
            tag = path.stem.rsplit("+", 1)[-1]
            if tag.isdigit():
                tags.add(int(tag))
    return tags


def _write_order(path: Path) -> int:
    """Timing records first, then ``.private`` files, then the rest (``.key`` last of a key):
    as ``write_key`` does, so that a write cut short leaves a key not installed, not a mix."""
    return {TIMING_SUFFIX: 0, ".private": 1}.get(path.suffix, 2)


def write_files(files: dict[Path, bytes], owner: tuple[int, int] | None = None) -> None:
    """Write ``files`` (a snapshot's), skipping those that already hold their bytes with their
    mode: a rollback that has nothing to put back needs no free space."""
    for path in sorted(files, key=_write_order):
        data = files[path]
        mode = SECRET_MODE if path.suffix == ".private" else PUBLIC_MODE
        if _holds_bytes(path, data, mode):
            continue
        atomic_write(path, data, mode)
        if owner is not None:
            os.chown(path, *owner)


def _holds_bytes(path: Path, data: bytes, mode: int) -> bool:
    try:
        with path.open("rb") as handle:
            same_mode = os.stat(handle.fileno()).st_mode & 0o777 == mode
            return same_mode and handle.read(len(data) + 1) == data
    except OSError:
        return False


def incomplete(paths: list[Path]) -> set[Path]:
    """The files, among a zone's ``paths``, of keys half written: a ``.private`` without its
    ``.key``, with the other files named after that key (its timing record, its ``.state``)."""
    names = {path.name for path in paths}
    stems = {
        path.name[: -len(".private")]
        for path in paths
        if path.suffix == ".private" and f"{path.name[: -len('.private')]}.key" not in names
    }
    return {path for path in paths if path.name.rsplit(".", 1)[0] in stems}


def tag_of(path: Path) -> int | None:
    """The key tag in a ``K<zone>+<alg>+<tag>.<suffix>`` file name."""
    return tag_in(path.name)


def tag_in(name: str) -> int | None:
    """``tag_of`` a file name given as text (no ``Path`` made for it)."""
    tag = name.rsplit("+", 1)[-1].split(".", 1)[0]
    return int(tag) if tag.isdigit() else None


def write_key(
    directory: Path,
    key: DnssecKey,
    timing: KeyTiming,
    owner: tuple[int, int] | None = None,
    *,
    keep_timing: bool = False,
) -> bool:
    """Write ``key`` with ``timing`` (both files, atomically; and its timing record with
    ``keep_timing``, or when it has one); False when the files already hold this key with this
    timing. Compared by meaning, not bytes: BIND 9.20 rewrites the files of keys it manages."""
    stem = directory / key.basename
    private, public = Path(f"{stem}.private"), Path(f"{stem}.key")
    record = timing_record(private)
    keep_timing = keep_timing or record.exists()
    if private.exists() and public.exists() and holds(private, key, timing, keep_timing):
        if keep_timing and not record.exists():  # a key written before records: add one
            _write_owned(record, _record_bytes(timing), PUBLIC_MODE, owner)
        return False
    if keep_timing:  # first: a key is never there without the timing it was written with
        _write_owned(record, _record_bytes(timing), PUBLIC_MODE, owner)
    write_key_files(directory, key, timing, owner)
    return True


def write_key_files(
    directory: Path, key: DnssecKey, timing: KeyTiming, owner: tuple[int, int] | None = None
) -> None:
    """Write the ``.private`` and ``.key`` files of ``key`` with ``timing``, as they are (BIND
    9.20: the KDC's timing put back where named wrote times of its own)."""
    stem = directory / key.basename
    private_text = bind_private_text(key, timing).encode()
    _write_owned(Path(f"{stem}.private"), private_text, SECRET_MODE, owner)
    failpoints.reached("write_key")
    _write_owned(Path(f"{stem}.key"), bind_public_text(key, timing).encode(), PUBLIC_MODE, owner)


def _record_bytes(timing: KeyTiming) -> bytes:
    return json.dumps(asdict(timing), sort_keys=True).encode()


def _write_owned(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    atomic_write(path, data, mode)
    if owner is not None:
        os.chown(path, *owner)


def holds(private: Path, key: DnssecKey, timing: KeyTiming, by_record: bool = False) -> bool:
    """Whether the key files at ``private`` are ``key`` (same DNSKEY) with ``timing`` (the
    timing in its record, ``by_record``)."""
    try:
        present, present_timing = read_bind_key_pair(private)
        if by_record:
            present_timing = read_timing_record(timing_record(private)) or present_timing
    except (KrsError, OSError):
        return False  # unreadable or not this key: write it anew
    return present.dnskey == key.dnskey and present.ttl == key.ttl and present_timing == timing


def _signature(files: tuple[Path, ...]) -> Signature:
    """The ``_identity`` of each of ``files``, packed: ``0`` for a file that does not exist,
    ``1`` and the three numbers for one that does (a prefix code: no two differ alike)."""
    out = bytearray()
    for path in files:
        identity = _identity(path)
        out += b"\0" if identity is None else b"\1" + struct.pack("!QQq", *identity)
    return bytes(out)


def _identity(path: Path) -> tuple[int, int, int] | None:
    """A file's inode, size and modification time (ns); None when it does not exist. Every
    write of the KRS replaces a key file by a rename (a new inode)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _same_key(kept: DnssecKey, read: DnssecKey) -> bool:
    """Whether ``read`` is the very key ``kept`` is (private key included): BIND 9.20 rewrites
    the files of every key it loads (its own timing lines), and a batch of 10,000 zones then
    held each key twice, the plan's object and the one parsed back (docs/benchmarks.md, "BIND
    9.20 at 10,000 zones")."""
    return kept == read and kept.key_material == read.key_material


class KeyFolder:
    """One folder of BIND-format key files (a key directory): each zone's keys read, snapshot,
    restored, re-timed and deleted by file name, found through the folder's index."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.index = FolderIndex(path)
        # by the ``.private`` file's path as text (a Path is four times its size; a batch of
        # 10,000 zones keeps 20,000 entries)
        self._parsed: OrderedDict[str, tuple[Signature, DnssecKey, KeyTiming]] = OrderedDict()
        self._batches = 0  # while a batch runs, parsed keys are all kept (see batch)
        self._timings: dict[KeyTiming, KeyTiming] = {}  # equal timings kept once, in a batch

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """While a batch of many zones is applied, every key read or written is kept parsed
        (each zone's keys are read in each phase: checks, load, verify, finish; 4,000 keys
        overflow ``PARSED_KEYS`` between two phases); back to ``PARSED_KEYS`` after."""
        self._batches += 1
        try:
            yield
        finally:
            self._batches -= 1
            self._trim()

    def _trim(self) -> None:
        if self._batches == 0:
            self._timings.clear()
        while self._batches == 0 and len(self._parsed) > PARSED_KEYS:
            self._parsed.popitem(last=False)

    def files(self, zone: dns.name.Name, *, temporary: bool = False) -> list[Path]:
        """The zone's files (``K<zone>+*``); with ``temporary``, also the ``.K<zone>+*``
        leftovers of a write that was killed."""
        return [self.path / name for name in self.index.names(zone, temporary=temporary)]

    def private_files(self, zone: dns.name.Name) -> list[Path]:
        return [path for path in self.files(zone) if path.suffix == ".private"]

    def read_keys(
        self, zone: dns.name.Name, tag: int | None = None
    ) -> list[tuple[Path, DnssecKey, KeyTiming]]:
        """Each key of ``zone`` (only those named with ``tag``, when given) with its timing: from
        its timing record when it has one, else from its files. A ``.private`` without its
        ``.key`` is a key half written, not installed: passed over. With ``tag``, only the
        names of that tag are made paths: a half-written key's files all carry its tag, and every
        distribution deletes each key the zone ever removed, mostly long gone (docs/benchmarks.md,
        "Fleet")."""
        names = self.index.names(zone)
        if tag is not None:
            names = [name for name in names if tag_in(name) == tag]
        files = [self.path / name for name in names]
        half = incomplete(files)
        out = []
        for private in files:
            if private.suffix != ".private" or private in half:
                continue
            key, timing = self._read_pair(private)
            out.append((private, key, timing))
        return out

    def _read_pair(self, private: Path) -> tuple[DnssecKey, KeyTiming]:
        """The key at ``private`` and its timing (its timing record's, when it has one), parsed
        again only when one of its files changed (``PARSED_KEYS``)."""
        files = (private, private.with_suffix(".key"), timing_record(private))
        signature = _signature(files)
        cached = self._parsed.get(str(private))
        if cached is not None and cached[0] == signature:
            self._parsed.move_to_end(str(private))
            return cached[1], cached[2]
        key, timing = read_bind_key_pair(private)
        timing = read_timing_record(timing_record(private)) or timing
        if cached is not None and _same_key(cached[1], key):
            key = cached[1]  # files rewritten, key unchanged: one object for it (_same_key)
        self._keep(private, key, timing)
        return key, timing

    def _keep(self, private: Path, key: DnssecKey, timing: KeyTiming) -> None:
        """``key`` and ``timing`` as the files at ``private`` now hold them."""
        files = (private, private.with_suffix(".key"), timing_record(private))
        if self._batches:  # a batch's keys mostly share one timing: one object for them
            timing = self._timings.setdefault(timing, timing)
        self._parsed[str(private)] = (_signature(files), key, timing)
        self._parsed.move_to_end(str(private))
        self._trim()

    def refuse_shared_file_names(self, zone: dns.name.Name, plan: KeyPlan) -> None:
        """Refuse ``plan``, before anything is written, when a key it installs would take the
        files of another key the zone holds: key files are named by zone, algorithm and tag
        alone, so writing it would overwrite that key. The KDC never makes a key with a tag its
        zone has; a key it does not know of (made on this node) can share one, once in 65,536."""
        for planned in plan.install:
            key = planned.key
            for private, held, _ in self.read_keys(zone, key.key_tag):
                if held.algorithm == key.algorithm and held.dnskey != key.dnskey:
                    raise AdapterError(
                        f"key {key.key_tag} (algorithm {key.algorithm}) of the distribution "
                        f"would overwrite another key of the zone, {private.with_suffix('')}: key "
                        "files are named by tag, and the two share one. Remove that key's "
                        "files if it is not in use, or have the KDC make another key"
                    )

    def installed_keys(self, zone: dns.name.Name) -> list[InstalledKey]:
        return [
            InstalledKey(zone, key.key_tag, key.algorithm, key.flags, timing)
            for _, key, timing in self.read_keys(zone)
        ]

    def key_times(self, zone: dns.name.Name) -> list[int]:
        """Every publish, activate, inactive and delete time of the zone's keys: for servers
        that do not act on them by themselves (NSD, BIND 9.20 in manual-mode), when to act."""
        times = []
        for _, _, timing in self.read_keys(zone):
            times += [t for t in (timing.publish, timing.activate, timing.inactive, timing.delete)
                      if t is not None]  # fmt: skip
        return times

    def snapshot(self, zone: dns.name.Name) -> dict[Path, bytes]:
        """The bytes of the zone's files, keys half written left out (a restore removes them)."""
        files = self.files(zone)
        half = incomplete(files)
        return {path: path.read_bytes() for path in files if path not in half}

    def remove_incomplete(self, zone: dns.name.Name) -> list[Path]:
        """Delete the files of the zone's keys half written and the temporary ``.K…`` files of
        writes that never finished; the paths deleted. Only while no write of the KRS runs."""
        files = self.files(zone, temporary=True)
        gone = sorted(incomplete(files) | {p for p in files if p.name.startswith(".")})
        for path in gone:
            path.unlink(missing_ok=True)
        if gone:
            log.warning(
                "zone %s: removed what a write cut short left in %s: %s",
                zone, self.path, ", ".join(p.name for p in gone),
            )  # fmt: skip
        return gone

    def restore(
        self,
        zone: dns.name.Name,
        before: dict[Path, bytes],
        keep_tags: frozenset[int] = frozenset(),
        owner: tuple[int, int] | None = None,
    ) -> None:
        """Make the zone's files exactly ``before``: extra ones (and the temporary ``.K…`` files
        of a write that was killed) removed, the others rewritten with their old bytes. The files
        of keys ``keep_tags`` stay (a server that could not be told to withdraw them must still
        read that they are deleted)."""
        for path in self.files(zone, temporary=True):
            if path in before or (not path.name.startswith(".") and tag_of(path) in keep_tags):
                continue
            path.unlink(missing_ok=True)
        write_files(before, owner)

    def write_key(
        self,
        key: DnssecKey,
        timing: KeyTiming,
        owner: tuple[int, int] | None = None,
        *,
        keep_timing: bool = False,
    ) -> bool:
        """``write_key`` into this folder; the key is then known parsed as written (the files
        hold exactly ``key`` and ``timing`` now: written so, or found so). Files this folder
        already knows parsed as exactly that (unchanged since: ``_signature``) are not parsed
        again to find so: every distribution carries the zone's unchanged keys."""
        private = self.path / f"{key.basename}.private"
        if self._known_as(private, key, timing, keep_timing):
            self._parsed.move_to_end(str(private))
            return False
        written = write_key(self.path, key, timing, owner, keep_timing=keep_timing)
        self._keep(private, key, timing)
        return written

    def _known_as(
        self, private: Path, key: DnssecKey, timing: KeyTiming, keep_timing: bool
    ) -> bool:
        """Whether the key's files, as last parsed or written here and unchanged since (the same
        ``_signature``: both files there, as when they were kept), hold ``key`` with ``timing``
        as ``holds`` compares them: the timing record's when there is one, and there must be
        one when ``keep_timing`` asks for it (``write_key`` adds it)."""
        cached = self._parsed.get(str(private))
        record = timing_record(private)
        if cached is None or cached[0] != _signature(
            (private, private.with_suffix(".key"), record)
        ):
            return False
        if keep_timing and not record.exists():
            return False
        _, present, present_timing = cached
        return present.dnskey == key.dnskey and present.ttl == key.ttl and present_timing == timing

    def retime(
        self,
        zone: dns.name.Name,
        tag: int,
        owner: tuple[int, int] | None = None,
        **times: int | None,
    ) -> KeyTiming | None:
        """Set some of a key's times (e.g. ``inactive=now``; None leaves a time as it is); its
        new timing, or None when the zone has no key ``tag``."""
        for _, key, timing in self.read_keys(zone, tag):
            new = replace(timing, **{k: v for k, v in times.items() if v is not None})
            write_key(self.path, key, new, owner)
            return new
        return None

    def delete_key(self, zone: dns.name.Name, tag: int) -> bool:
        """Delete the files of key ``tag`` (its .state too: BIND 9.20's own); False if none. The
        ``.key`` goes first and the ``.private`` last: cut short, it leaves a key half written."""
        for private, _, _ in self.read_keys(zone, tag):
            for suffix in (".key", TIMING_SUFFIX, ".state"):
                private.with_suffix(suffix).unlink(missing_ok=True)
            private.unlink()
            return True
        return False
