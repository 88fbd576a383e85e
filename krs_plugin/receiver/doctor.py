"""``krs doctor``: every reason ``krs run`` would fail or misbehave, found at once, before it runs.

A preflight in the sense of certbot's ``prepare()``: each check is a small function that returns
``Check`` results instead of raising, so a bad key file does not hide a dead control server and
an operator fixes everything in one pass. ``load_config`` has already passed when these run (a
config that does not load is exit 2, reported by the CLI). Nothing is changed, except that the
state database is created when it does not exist yet, as ``krs run`` would do first. Only the
configured addresses are contacted or bound, and every socket is closed again.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import sqlite3
import stat
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from krs_plugin.adapters import make_adapter
from krs_plugin.config import Address, Config, KdcSettings
from krs_plugin.crypto import load_hpke_private, load_hybrid_private, load_jose_key
from krs_plugin.errors import KeyFileError, KrsError
from krs_plugin.receiver import kdctrust
from krs_plugin.receiver.reconcile import compare, holder, resend_advice
from krs_plugin.receiver.store import ReceiverStore
from krs_plugin.sqlitedb import StateDatabaseError, StateWriteError, directory_problem

OK, WARNING, ERROR = "ok", "warning", "error"
CONTROL_TIMEOUT = 2.0
"""Seconds per control server: long enough for a healthy server, short enough to wait for."""


@dataclass(frozen=True)
class Check:
    """One finding. ``name`` is the ``krs.yaml`` key it is about (stable, for ``--json``
    consumers); ``message`` names the file or address; ``fix`` says what to do about it."""

    name: str
    status: str  # ok | warning | error
    message: str
    fix: str = ""


def run_checks(config: Config) -> list[Check]:
    """All checks, in the order an operator would fix things: files, state, server, network."""
    return [
        Check("config", OK, f"{config.path} loads (node {config.node_id})"),
        *check_key_files(config),
        *check_verification_key(config.kdc),
        *check_state(config.state),
        *check_kdc_trust(config),
        *check_zones(config.zones),
        *check_adapter(config),
        *check_sync(config),
        *check_control_servers(config.control_zone, config.control_servers),
        *check_notify(config),
        *check_listen("metrics", () if config.metrics is None else (config.metrics,), ("TCP",)),
        *check_units(),
    ]


def doctor_command(config: Config, *, as_json: bool) -> int:
    """Print every check; exit 1 when any is an error (warnings alone still pass)."""
    checks = run_checks(config)
    if as_json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(render(checks))
    return 1 if any(c.status == ERROR for c in checks) else 0


def render(checks: list[Check]) -> str:
    """One line per check, the fix indented under it, and a count at the end."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.status:7} {c.name:{width}}  {c.message}")
        if c.fix:
            lines.append(f"{'':7} {'':{width}}  fix: {c.fix}")
    errors = sum(c.status == ERROR for c in checks)
    warnings = sum(c.status == WARNING for c in checks)
    lines.append(
        f"{len(checks)} checks: {errors} error(s), {warnings} warning(s)"
        + ("" if errors else "; krs run can start")
    )
    return "\n".join(lines)


# --- key files ---------------------------------------------------------------------------------


def _hpke_private(path: Path) -> str:
    return f"HPKE X25519 private key {load_hpke_private(path).fingerprint}"


def _hybrid_private(path: Path) -> str:
    return f"hpke-pq ML-KEM-768 + X25519 private key {load_hybrid_private(path).fingerprint}"


def _jose_private(path: Path) -> str:
    key = load_jose_key(path)
    if key.private is None:
        raise KeyFileError(
            f'{path} holds only a public JWK (no "d"); the node needs its private key here'
        )
    return f"P-256 private key {key.fingerprint}"


def check_key_files(config: Config) -> list[Check]:
    """The node's private keys: a key that does not load stops every distribution, and one that
    others can read is a key the KDC can no longer trust."""
    checks: list[Check] = []
    for name, path, load in (
        ("keys.hpke", config.keys.hpke, _hpke_private),
        ("keys.jose", config.keys.jose, _jose_private),
        ("keys.hpke-pq", config.keys.hpke_pq, _hybrid_private),
        ("keys.signing", config.keys.signing, _jose_private),
    ):
        if path is not None:
            checks += check_key_file(name, path, load, private=True)
    return checks


def check_key_file(
    name: str, path: Path, load: Callable[[Path], str], *, private: bool
) -> list[Check]:
    """Exists, loads with the same loader ``krs run`` uses and, if private, is 0600 or stricter.

    The mode is checked even when the file does not load: both problems are worth knowing."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return [Check(name, ERROR, f"{path} does not exist", f"restore it, or point {name} at it")]
    except OSError as exc:
        return [Check(name, ERROR, f"{path}: {exc.strerror}", f"fix {name} in krs.yaml")]
    if not os.access(path, os.R_OK):
        return [
            Check(
                name,
                ERROR,
                f"{path} is not readable by this user",
                f"chown {path} to the user krs runs as (keep mode 0600)",
            )
        ]
    checks = []
    if private and mode & 0o077:
        checks.append(
            Check(
                name,
                ERROR,
                f"{path} is mode {mode:04o}: group or others can read this private key",
                f"chmod 0600 {path} (and consider the key exposed: re-enroll the node)",
            )
        )
    try:
        what = load(path)
    except KrsError as exc:
        checks.append(Check(name, ERROR, str(exc), f"put the right key in {path}"))
    else:
        if not checks:
            checks.append(Check(name, OK, f"{path}: {what}, mode {mode:04o}"))
    return checks


def check_verification_key(kdc: KdcSettings) -> list[Check]:
    """Without the KDC's public key a node installs whatever anyone publishes in its name."""
    checks: list[Check] = []
    if kdc.allow_unsigned:
        checks.append(
            Check(
                "kdc.allow_unsigned",
                WARNING,
                "distributions without the KDC's signature are accepted",
                "set kdc.verification_key to the KDC's signing public key and remove "
                "allow_unsigned",
            )
        )
    path = kdc.verification_key
    if path is None:
        if not kdc.allow_unsigned:
            checks.append(
                Check(
                    "kdc.verification_key",
                    ERROR,
                    "not set, and allow_unsigned is false: every distribution will be refused",
                    "copy the KDC's kdc.signing.pubkey here and set kdc.verification_key",
                )
            )
        return checks
    holds_private = False

    def load(p: Path) -> str:
        nonlocal holds_private
        key = load_jose_key(p)
        holds_private = key.private is not None
        return f"the KDC's P-256 public key {key.fingerprint}"

    checks += check_key_file("kdc.verification_key", path, load, private=False)
    if holds_private:
        checks.append(
            Check(
                "kdc.verification_key",
                WARNING,
                f"{path} holds the KDC's private signing key; a node needs only the public key",
                "replace it with the KDC's kdc.signing.pubkey and rotate the KDC signing key",
            )
        )
    return checks


def check_kdc_trust(config: Config) -> list[Check]:
    """The KDC keys krs.db trusts beside krs.yaml's: a KDC signing-key roll adds one and later
    drops the configured key (docs/security.md, "Rotation"; docs/operations.md, "The KDC's
    keys"). Nothing when krs.db does not exist yet or cannot be read (check_state says why)."""
    path = config.kdc.verification_key
    if path is None or not config.state.exists():
        return []
    uri = "file:" + urllib.parse.quote(str(config.state.resolve())) + "?mode=ro"
    try:
        configured = load_jose_key(path).public_only()
        db = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            keys = kdctrust.trusted_keys(db, configured)
        finally:
            db.close()
    except (sqlite3.Error, KrsError):
        return []
    names = ", ".join(f"{k.thumbprint} ({k.source})" for k in keys)
    if not any(k.source == "configured" for k in keys):
        return [
            Check(
                "kdc.verification_key",
                WARNING,
                f"{path} holds {configured.thumbprint}, which a KDC signing-key roll dropped; "
                f"this node trusts {names or 'no KDC key'} (krs.db)",
                "when krs.yaml's files can be changed, copy the KDC's current kdc.signing.pubkey "
                "there (nothing breaks until then)",
            )
        ]
    if len(keys) > 1:
        return [Check("kdc.verification_key", OK, f"KDC keys trusted (a roll): {names}")]
    return []


# --- state ---------------------------------------------------------------------------------------


def check_state(db_path: Path) -> list[Check]:
    """The directory must take new files (SQLite's WAL and journal live next to the database);
    the database must open with the schema the store uses, and stay private (it journals the
    key directory's contents)."""
    directory = db_path.parent
    if not directory.is_dir():
        return [
            Check(
                "state",
                ERROR,
                f"directory {directory} does not exist",
                f"mkdir -m 0700 {directory}",
            )
        ]
    unwritable = directory_problem(directory)  # a read-only mount is not fixed by a chown
    if unwritable is not None:
        return [Check("state", ERROR, f"{db_path}: {unwritable[0]}", unwritable[1])]
    existed = db_path.exists()
    try:
        store = ReceiverStore(db_path)  # checks it (sqlitedb.check_database), writes nothing
    except StateDatabaseError as exc:
        return [Check("state", ERROR, f"{db_path} {exc.problem}", exc.advice)]
    except (sqlite3.Error, OSError, StateWriteError) as exc:
        return [Check("state", ERROR, f"{db_path} does not open: {exc}", "restore it or move it")]
    checks = []
    try:
        integrity = store.db.execute("PRAGMA quick_check").fetchone()[0]
        store.distributions(limit=1)  # the store's own queries: a missing column shows here
        store.pending_confirmations()
        keys = len(store.installed())
        interrupted = store.interrupted()
        distributions = store.db.execute("SELECT count(*) FROM distributions").fetchone()[0]
    except sqlite3.Error as exc:
        checks.append(
            Check(
                "state",
                ERROR,
                f"{db_path}: schema does not match this version: {exc}",
                "move it aside; krs run creates a new one (the KDC re-sends what is pending)",
            )
        )
        integrity, distributions, keys, interrupted = "ok", 0, 0, []
    finally:
        store.close()
    if integrity != "ok":
        checks.append(
            Check("state", ERROR, f"{db_path} is damaged: {integrity}", "restore it or move it")
        )
    mode = stat.S_IMODE(db_path.stat().st_mode)
    if mode & 0o077:
        checks.append(
            Check(
                "state",
                ERROR,
                f"{db_path} is mode {mode:04o}: group or others can read the KRS journal",
                f"chmod 0600 {db_path}",
            )
        )
    if interrupted:
        checks.append(
            Check(
                "state",
                WARNING,
                f"{db_path}: {len(interrupted)} apply(s) were interrupted "
                f"({', '.join(d for d, _ in interrupted)})",
                "krs run rolls them back and fetches them again at start",
            )
        )
    if not checks:
        created = "" if existed else ", created now"
        checks.append(
            Check(
                "state",
                OK,
                f"{db_path}: schema OK, {distributions} distribution(s), {keys} installed key(s), "
                f"mode {mode:04o}{created}",
            )
        )
    return checks


# --- the systemd unit ----------------------------------------------------------------------------

UNITS = Path("/etc/systemd/system")


def check_units(units: Path = UNITS) -> list[Check]:
    """A krs unit whose ExecStart names a krs that is not there (a venv install, the unit's
    /usr/local/bin/krs never linked) fails at every start; say so before. Only units found in
    ``units`` are looked at (``krs*.service``); nothing when there are none."""
    checks = []
    for unit in sorted(units.glob("krs*.service")):
        try:
            text = unit.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() != "ExecStart" or not value.strip():
                continue
            binary = value.split()[0].lstrip("@-:+!")
            if Path(binary).name not in ("krs", "krs-kdc"):
                continue
            if os.access(binary, os.X_OK):
                checks.append(Check("systemd", OK, f"{unit} starts {binary}"))
            else:
                beside = Path(sys.argv[0]).absolute().parent / Path(binary).name
                here = str(beside) if beside.exists() else shutil.which(Path(binary).name)
                checks.append(
                    Check(
                        "systemd",
                        WARNING,
                        f"{unit} starts {binary}, which does not exist (or is not executable)",
                        f"ln -s {here or '/opt/krs/bin/' + Path(binary).name} {binary} (the one "
                        f"of your venv), or set ExecStart= in {unit} to it; then systemctl "
                        "daemon-reload",
                    )
                )
    return checks


# --- zones and adapter ---------------------------------------------------------------------------


def check_zones(zones: Iterable[dns.name.Name]) -> list[Check]:
    """A node with no zones refuses every distribution."""
    names = sorted(z.to_text() for z in zones)
    if not names:
        return [Check("zones", ERROR, "no zones configured", "list the zones this node serves")]
    return [Check("zones", OK, f"{len(names)} zone(s): {', '.join(names)}")]


def check_adapter(config: Config) -> list[Check]:
    """The adapter's own preflight (``Adapter.check``), its problems listed as it words them.

    ``Problem`` carries no severity: each one would make an apply fail, so each is an error."""
    kind = config.adapter.type
    try:
        problems = make_adapter(config).check()
    except (KrsError, OSError) as exc:
        return [Check("adapter", ERROR, f"{kind}: {exc}", "fix adapter in krs.yaml")]
    if not problems:
        return [Check("adapter", OK, f"{kind}: ready to install keys")]
    return [Check("adapter", ERROR, f"{kind}: {p.what}", p.fix) for p in problems]


def check_sync(config: Config) -> list[Check]:
    """The server holds the keys each zone's newest distribution installed (``reconcile``): a
    warning per zone that lacks some (another adapter configured since, a key folder emptied),
    which ``krs run`` repairs by asking the KDC for the keys again."""
    if not config.state.exists():
        return []
    try:
        store = ReceiverStore(config.state)
    except (KrsError, sqlite3.Error, OSError):
        return []  # check_state reports it
    try:
        results = compare(config, store, make_adapter(config))
    except (KrsError, sqlite3.Error, OSError):
        return []  # check_state or check_adapter reports it
    finally:
        store.close()
    checks = [
        Check("sync", WARNING, r.reason, resend_advice(config)) for r in results if not r.in_sync
    ]
    compared = [r for r in results if r.error is None]
    if not checks and compared:
        checks.append(
            Check(
                "sync",
                OK,
                f"{holder(config)} holds the keys the last distribution installed in "
                f"{len(compared)} zone(s)",
            )
        )
    return checks


# --- network -------------------------------------------------------------------------------------


def check_control_servers(zone: dns.name.Name, servers: Iterable[Address]) -> list[Check]:
    """Each configured server must answer for the control zone over TCP (as the fetcher asks):
    a server that does not is skipped at every fetch, after its retries."""
    return [
        check_control_server(zone, server, f"control_servers[{i}]")
        for i, server in enumerate(servers)
    ]


def check_control_server(zone: dns.name.Name, server: Address, name: str) -> Check:
    """SOA ``zone`` over TCP; ok only for NOERROR with AA and the SOA in the answer."""
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    query.flags = 0  # no RD: it must be authoritative, not a resolver
    fix = f"check that {server} serves {zone} (krs-kdc serve --listen) and the network path"
    try:
        reply = dns.query.tcp(query, server.host, port=server.port, timeout=CONTROL_TIMEOUT)
    except dns.exception.Timeout:
        return Check(name, ERROR, f"{server}: no answer within {CONTROL_TIMEOUT:g} s", fix)
    except ConnectionRefusedError:
        return Check(name, ERROR, f"{server}: connection refused (nothing listens on TCP)", fix)
    except (OSError, EOFError, dns.exception.DNSException) as exc:
        return Check(name, ERROR, f"{server}: {exc or type(exc).__name__}", fix)
    rcode = reply.rcode()
    if rcode != dns.rcode.NOERROR:
        return Check(name, ERROR, f"{server}: SOA {zone} answered {dns.rcode.to_text(rcode)}", fix)
    if not reply.flags & dns.flags.AA:
        return Check(name, ERROR, f"{server}: not authoritative for {zone} (no AA flag)", fix)
    soa = reply.get_rrset(reply.answer, zone, dns.rdataclass.IN, dns.rdatatype.SOA)
    if soa is None:
        return Check(name, ERROR, f"{server}: answered without the SOA of {zone}", fix)
    return Check(name, OK, f"{server}: authoritative for {zone}, serial {soa[0].serial}")


def check_notify(config: Config) -> list[Check]:
    """The NOTIFY listener takes UDP and TCP on each address; none configured is allowed (the
    poller still finds every distribution, only later)."""
    if not config.notify.listen:
        return [
            Check(
                "notify.listen",
                OK,
                f"not set: distributions are found by polling every {config.poll_interval:g} s",
            )
        ]
    return check_listen("notify.listen", config.notify.listen, ("UDP", "TCP"))


_SOCKET_KINDS = {"UDP": socket.SOCK_DGRAM, "TCP": socket.SOCK_STREAM}


def check_listen(name: str, addresses: Iterable[Address], protocols: Iterable[str]) -> list[Check]:
    """Bind each address the way ``krs run`` will, then close it again. In use is a warning: the
    likely owner is a ``krs run`` already running, which is what an operator wants."""
    checks = []
    for address in addresses:
        for proto in protocols:
            checks.append(_bind(name, address, proto))
    return checks


def _bind(name: str, address: Address, proto: str) -> Check:
    kind = _SOCKET_KINDS[proto]
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:  # as asyncio does: TIME_WAIT is not "in use"
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.host, address.port))
    except OSError as exc:
        where = f"{address} ({proto})"
        if exc.errno == errno.EADDRINUSE:
            return Check(
                name,
                WARNING,
                f"{where} in use (is `krs run` already running?)",
                f"if it is not krs, find the owner with: ss -lnup 'sport = :{address.port}' "
                f"(-lntp for TCP) and move one of them",
            )
        if exc.errno == errno.EADDRNOTAVAIL:
            return Check(
                name,
                ERROR,
                f"{where}: not an address of this host",
                "use one of this host's addresses, or 0.0.0.0 / ::",
            )
        if exc.errno == errno.EACCES:
            return Check(
                name,
                ERROR,
                f"{where}: permission denied",
                "ports below 1024 need root or CAP_NET_BIND_SERVICE (AmbientCapabilities=)",
            )
        return Check(name, ERROR, f"{where}: {exc.strerror or exc}", f"fix {name} in krs.yaml")
    return Check(name, OK, f"{address} ({proto}) can be bound")
