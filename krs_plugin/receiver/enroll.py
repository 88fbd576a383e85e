"""``krs enroll <package>``: a new node joins the KDC with a bootstrap package and nothing else.

The node makes its keys here (the private ones never leave it), seals a request to the KDC key
named in the package, signs the UPDATE with its new SIG(0) key, and sends it over TCP. Only when
the KDC's confirmation opens with the node's new key (and, for hpke, proves the package's KDC
X25519 key sealed it) are the keys and a working ``krs.yaml`` put in place, so that ``krs run``
starts next. A refusal, an expired package or a network error leaves no file behind.

The key files are written before the request is sent (under temporary names, 0600): once the
KDC has registered the node, the node must not lose the keys it registered with.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from krs_plugin.adapters.registry import make_adapter
from krs_plugin.adapters.settings import settings_path
from krs_plugin.config import load_config
from krs_plugin.crypto import HpkeKey, HybridKey, JoseKey, write_public_file, write_secret_file
from krs_plugin.crypto.keys import write_jose_private
from krs_plugin.crypto.nodekey import generate_node_key, write_node_private
from krs_plugin.crypto.pqsig import write_mldsa_public
from krs_plugin.enrollment import (
    BootstrapPackage,
    EnrollmentRequest,
    build_update,
    ede_text,
    open_confirmation,
    rfc3339,
    seal_request,
)
from krs_plugin.errors import ConfigError, EnrollmentError, KrsError
from krs_plugin.protocol import sig0
from krs_plugin.sqlitedb import directory_problem

DEFAULT_NOTIFY_PORT = 5355
TIMEOUT = 10.0
DEFAULT_STATE_DIR = Path("/var/lib/krs")
"""krs.db lives here, not beside krs.yaml: the shipped krs.service (ProtectSystem=strict) makes
/etc read-only for krs and /var/lib/krs writable (StateDirectory=krs)."""
SERVERS = ("bind9", "knot", "nsd", "powerdns")
ADAPTER_CHOICES = (*SERVERS, "directory")


def debian_adapter(kind: str, directory: Path, state_dir: Path) -> dict[str, Any]:
    """``adapter:`` for ``kind`` with the paths of Debian's packages (as in
    integrations/<server>/krs.yaml): what ``krs enroll --adapter <kind>`` writes. ``directory``
    is where krs.yaml and the keys go, ``state_dir`` where krs.db goes."""
    local = "127.0.0.1:53"
    settings: dict[str, Any]
    if kind == "bind9":
        settings = {
            "key_directory": "/var/lib/bind/keys",
            "server": local,
            "rndc": {"key_file": "/etc/bind/rndc.key", "server": "127.0.0.1", "port": 953},
        }
    elif kind == "knot":
        settings = {"config": "/etc/knot/knot.conf", "server": local}
    elif kind == "nsd":
        settings = {
            "key_directory": str(state_dir / "keys"),
            "unsigned_file": "/etc/nsd/unsigned/{zone}zone",
            "signed_file": "/var/lib/nsd/signed/{zone}zone.signed",
            "config": "/etc/nsd/nsd.conf",
            "server": local,
        }
    elif kind == "powerdns":
        settings = {
            "method": "api",
            "api_url": "http://127.0.0.1:8081",
            "api_key_file": str(directory / "pdns-api.key"),
            "server": local,
        }
    elif kind == "directory":
        settings = {"path": str(state_dir / "zone-keys")}
    else:
        raise ConfigError(f"--adapter: {kind!r} is not one of {', '.join(ADAPTER_CHOICES)}")
    return {"type": kind, "settings": settings}


@dataclass(frozen=True)
class EnrollOptions:
    directory: Path  # where the keys, the KDC's key and krs.yaml go
    config_path: Path
    notify: str | None = None  # host:port the KDC sends NOTIFY to; default: toward the KDC
    adapter: Mapping[str, Any] | None = None  # krs.yaml's adapter section; default directory
    state_dir: Path | None = None  # krs.db (and the directory adapter's folder); None: directory
    kdc_verification_key: Path | None = None  # for a package without one (a tdns KDC)
    timeout: float = TIMEOUT


@dataclass
class NodeKeys:
    backend: str
    hpke: HpkeKey | None
    jose: JoseKey | None
    signing: JoseKey
    sig0: Ed25519PrivateKey = field(repr=False)
    hybrid: HybridKey | None = None  # the hpke-pq backend's key

    @classmethod
    def generate(cls, backend: str) -> NodeKeys:
        key = generate_node_key(backend)  # the one place a backend's key is made (nodekey.py)
        return cls(
            backend,
            key if isinstance(key, HpkeKey) else None,
            key if isinstance(key, JoseKey) else None,
            JoseKey.generate(),
            Ed25519PrivateKey.generate(),
            key if isinstance(key, HybridKey) else None,
        )

    def sealing_key(self) -> HpkeKey | JoseKey | HybridKey:
        key = {"hpke": self.hpke, "jose": self.jose, "hpke-pq": self.hybrid}[self.backend]
        assert key is not None  # generate() made it
        return key


@dataclass(frozen=True)
class Enrolled:
    node_id: str
    backend: str
    config_path: Path
    files: tuple[Path, ...]
    zones: tuple[str, ...]


def read_package(path: Path) -> BootstrapPackage:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the enrollment package: {exc}") from exc
    return BootstrapPackage.parse(text, str(path))


def enroll(
    package: BootstrapPackage, options: EnrollOptions, *, now: float | None = None
) -> Enrolled:
    """Enrol with ``package``; EnrollmentError (nothing written) when anything is refused."""
    now = time.time() if now is None else now
    options = replace(
        options,
        directory=options.directory.resolve(),
        config_path=options.config_path.resolve(),
        state_dir=(options.state_dir or options.directory).resolve(),
    )
    expires = package.expires_at()
    if expires is not None and expires < now:
        raise EnrollmentError(
            f"the enrollment package expired at {package.valid_until}: ask the KDC operator for "
            "a new one (krs-kdc enroll create)"
        )
    backend = package.backend or ("hpke" if package.kdc_hpke_pubkey else "jose")
    files = _planned_files(options, backend)
    _refuse_existing(options, files)
    adapter = _check_adapter(options, package)  # before the KDC registers anything
    _check_state_dir(_state_dir(options))
    verification = _verification_key(package, options)
    host, port = _kdc_address(package.kdc_enrollment_address)
    notify = options.notify or f"{_local_address_toward(host, port)}:{DEFAULT_NOTIFY_PORT}"
    keys = NodeKeys.generate(backend)
    made_directory = not options.directory.exists()
    options.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    pending = _write_keys(keys, files)
    succeeded = False
    try:
        request = build_request(package, keys, notify, now)
        wire = signed_update(package, keys, request, now)
        reply = exchange(wire, host, port, options.timeout)
        _check_reply(reply, package, keys)
        for temporary, final in pending.items():
            os.replace(temporary, final)
        succeeded = True
    finally:
        for temporary in pending:
            temporary.unlink(missing_ok=True)
        if not succeeded and made_directory:  # refused: leave the host as it was
            with contextlib.suppress(OSError):
                options.directory.rmdir()
    written = [*pending.values()]
    kdc_key_file = files["kdc"]
    write_public_file(kdc_key_file, verification)
    written.append(kdc_key_file)
    pq_key = package.kdc_pq_key()
    if pq_key is not None:  # the KDC signs with ML-DSA-65 too: this node requires it
        write_mldsa_public(_pq_key_file(files), pq_key, comment="the KDC's ML-DSA-65 key")
        written.append(_pq_key_file(files))
    _state_dir(options).mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_config(options, package, keys, files, notify, host, port, adapter)
    written.append(options.config_path)
    try:
        load_config(options.config_path)  # what krs run will read: it must load
    except ConfigError as exc:
        raise ConfigError(
            f"enrolled at the KDC, but the krs.yaml written does not load ({exc}): fix it by "
            "hand; the keys are in place"
        ) from exc
    return Enrolled(package.node_id, backend, options.config_path, tuple(written), package.zones)


# --- steps --------------------------------------------------------------------------------------


def _planned_files(options: EnrollOptions, backend: str) -> dict[str, Path]:
    directory = options.directory
    return {
        backend: directory / f"node.{backend}.privatekey",
        "signing": directory / "node.signing.privatekey",
        "sig0": directory / "node.sig0.privatekey",
        "kdc": directory / "kdc.signing.pubkey",
    }


def _pq_key_file(files: Mapping[str, Path]) -> Path:
    """Where the KDC's ML-DSA-65 public key goes, beside its signing key."""
    return files["kdc"].with_name("kdc.mldsa.pubkey")


def _state_dir(options: EnrollOptions) -> Path:
    return options.state_dir or options.directory


def _check_adapter(options: EnrollOptions, package: BootstrapPackage) -> dict[str, Any]:
    """The adapter section krs.yaml gets, built once as ``krs run`` will build it: a setting
    it refuses (a knot.conf that does not exist: the server not installed) stops ``krs enroll``
    before the KDC registers the node."""
    adapter = dict(
        options.adapter or debian_adapter("directory", options.directory, _state_dir(options))
    )
    zones = [dns.name.from_text(z) for z in package.zones]
    try:
        make_adapter(
            str(adapter.get("type")),
            adapter.get("settings") or {},
            config_path=options.config_path,
            zones=zones,
        )
    except ConfigError as exc:
        raise ConfigError(f"the adapter for krs.yaml: {exc}; nothing was sent to the KDC") from exc
    return adapter


def _check_state_dir(state_dir: Path) -> None:
    """``--state-dir`` must be creatable and writable now, not after the KDC registered us."""
    existing = state_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = directory_problem(existing)
    if problem is not None:
        raise ConfigError(
            f"--state-dir {state_dir}: krs.db cannot be written there: {problem[0]}; fix: "
            f"{problem[1]}; nothing was sent to the KDC"
        )


def _refuse_existing(options: EnrollOptions, files: Mapping[str, Path]) -> None:
    """Never overwrite: an existing krs.yaml, key or state database belongs to a node that
    already enrolled."""
    state = _state_dir(options) / "krs.db"
    existing = [p for p in (options.config_path, *files.values(), state) if p.exists()]
    if existing:
        raise ConfigError(
            f"{existing[0]} already exists: this node looks enrolled; move the old files away "
            "(or choose --dir/--config/--state-dir) to enrol again"
        )


def _verification_key(package: BootstrapPackage, options: EnrollOptions) -> str:
    """The KDC's JWS key for krs.yaml: from the package (ours), or a file (tdns packages)."""
    if options.kdc_verification_key is not None:
        try:
            return options.kdc_verification_key.read_text()
        except OSError as exc:
            raise ConfigError(f"{options.kdc_verification_key}: {exc}") from exc
    signing = package.kdc_signing_key()
    if signing is None:
        raise ConfigError(
            "the package has no KDC signing key (made by a tdns KDC?): give the KDC's "
            "verification key with --kdc-verification-key FILE"
        )
    return json.dumps(signing.public_jwk, indent=2) + "\n"


def _kdc_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise EnrollmentError(f"package kdc_enrollment_address {text!r} is not host:port")
    host = host.strip("[]")
    try:
        address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][4][0]
    except (OSError, UnicodeError) as exc:
        raise EnrollmentError(f"KDC address {text!r}: {exc}") from exc
    return str(address), int(port)


def _local_address_toward(host: str, port: int) -> str:
    """The address this host would use to reach the KDC: where the KDC can send NOTIFY back."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))  # no packet is sent: this only picks the route
        local = str(probe.getsockname()[0])
    return f"[{local}]" if ":" in local else local


def _write_keys(keys: NodeKeys, files: Mapping[str, Path]) -> dict[Path, Path]:
    """The private keys, 0600, under temporary names; returns temporary -> final."""
    pending: dict[Path, Path] = {}
    try:
        for name in (keys.backend, "signing", "sig0"):
            final = files[name]
            temporary = final.with_name(f".{final.name}.enrolling")
            pending[temporary] = final
            if name == keys.backend:
                write_node_private(temporary, name, keys.sealing_key())
            elif name == "signing":
                write_jose_private(
                    temporary, keys.signing, use="sig", comment="node confirmation signing key"
                )
            else:
                pem = keys.sig0.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                write_secret_file(temporary, pem.decode())
    except OSError as exc:
        for temporary in pending:
            temporary.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the node's keys: {exc}") from exc
    return pending


def build_request(
    package: BootstrapPackage, keys: NodeKeys, notify: str, now: float
) -> EnrollmentRequest:
    return EnrollmentRequest(
        auth_token=package.token,
        notify_address=notify,
        sig0_pubkey=sig0.key_text(keys.sig0, dns.name.from_text(package.node_id)),
        timestamp=rfc3339(now),
        hpke_pubkey=keys.hpke.public_hex if keys.hpke is not None else "",
        jose_pubkey=json.dumps(keys.jose.public_jwk) if keys.jose is not None else "",
        signing_pubkey=json.dumps(keys.signing.public_jwk),
        package_digest=package.digest(),
        hpke_pq_pubkey=keys.hybrid.public_hex if keys.hybrid is not None else "",
    )


def signed_update(
    package: BootstrapPackage, keys: NodeKeys, request: EnrollmentRequest, now: float
) -> bytes:
    control_zone = dns.name.from_text(package.control_zone)
    update = build_update(control_zone, seal_request(request, package))
    wire = update.to_wire(max_size=0xFFFF)  # over TCP: the 1232 of EDNS does not bound it
    return sig0.sign(wire, keys.sig0, dns.name.from_text(package.node_id), now=int(now))


def exchange(wire: bytes, host: str, port: int, timeout: float) -> dns.message.Message:
    """One UPDATE over TCP (the request may not fit a datagram), its answer parsed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    expiration = time.time() + timeout
    try:
        with socket.socket(family, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect((host, port))
            dns.query.send_tcp(connection, wire, expiration)
            answer, _ = dns.query.receive_tcp(connection, expiration)
    except (OSError, EOFError, dns.exception.Timeout) as exc:
        raise EnrollmentError(f"no answer from the KDC at {host} port {port}: {exc}") from exc
    except (dns.exception.DNSException, KrsError, ValueError) as exc:
        raise EnrollmentError(f"the KDC's answer is malformed: {exc}") from exc
    return answer


def _check_reply(reply: dns.message.Message, package: BootstrapPackage, keys: NodeKeys) -> None:
    confirmation = open_confirmation(
        reply,
        node_hpke=keys.hpke,
        node_jose=keys.jose,
        kdc_hpke=package.kdc_hpke_key(),
        node_hybrid=keys.hybrid,
    )
    rcode = reply.rcode()
    if rcode != dns.rcode.NOERROR or confirmation is None or confirmation.status != "success":
        why = ede_text(reply) or (confirmation.error_message if confirmation else "") or "-"
        raise EnrollmentError(f"the KDC refused the enrollment ({dns.rcode.to_text(rcode)}): {why}")
    if dns.name.from_text(confirmation.node_id) != dns.name.from_text(package.node_id):
        raise EnrollmentError(
            f"the KDC confirmed node {confirmation.node_id}, not {package.node_id}"
        )


def _write_config(
    options: EnrollOptions,
    package: BootstrapPackage,
    keys: NodeKeys,
    files: Mapping[str, Path],
    notify: str,
    kdc_host: str,
    kdc_port: int,
    adapter: dict[str, Any],
) -> None:
    kdc = f"[{kdc_host}]:{kdc_port}" if ":" in kdc_host else f"{kdc_host}:{kdc_port}"
    network = f"{kdc_host}/128" if ":" in kdc_host else f"{kdc_host}/32"
    settings = adapter.get("settings") or {}
    folder = settings.get("path") if adapter.get("type") == "directory" else None
    if adapter.get("type") == "nsd":
        folder = settings.get("key_directory")  # the KRS's own; NSD never reads it
    if folder:
        with contextlib.suppress(OSError):  # krs doctor says it when it could not be made
            settings_path(folder, options.config_path.parent).mkdir(
                mode=0o700, parents=True, exist_ok=True
            )
    config = {
        "node_id": package.node_id,
        "keys": {keys.backend: str(files[keys.backend]), "signing": str(files["signing"])},
        "kdc": {"verification_key": str(files["kdc"])}
        | ({"pq_verification_key": str(_pq_key_file(files))} if package.kdc_pq_pubkey else {}),
        "control_zone": package.control_zone,
        "control_servers": [kdc],
        "notify": {"listen": [notify], "allowed_sources": [network]},
        "adapter": adapter,
        "zones": list(package.zones),
        "state": str(_state_dir(options) / "krs.db"),
    }
    header = (
        f"# written by krs enroll on {rfc3339(time.time())}: node {package.node_id}, enrolled "
        f"with the KDC at {package.kdc_enrollment_address}\n"
        f"# the SIG(0) key it enrolled with: {files['sig0']}\n"
    )
    write_public_file(options.config_path, header + yaml.safe_dump(config, sort_keys=False))


def enroll_command(args: argparse.Namespace) -> int:
    """``krs enroll``: 0 enrolled, 1 refused or unreachable (nothing written), 2 bad input."""
    directory = Path(args.dir)
    state_dir = Path(args.state_dir)
    if args.adapter and args.adapter_config:
        raise ConfigError("--adapter and --adapter-config: give one of them")
    adapter = None
    if args.adapter_config:
        adapter = _adapter_section(Path(args.adapter_config))
    elif args.adapter:
        adapter = debian_adapter(args.adapter, directory.resolve(), state_dir.resolve())
    options = EnrollOptions(
        directory=directory,
        config_path=Path(args.config) if args.config else directory / "krs.yaml",
        notify=args.notify,
        adapter=adapter,
        state_dir=state_dir,
        kdc_verification_key=(
            Path(args.kdc_verification_key) if args.kdc_verification_key else None
        ),
    )
    enrolled = enroll(read_package(Path(args.package)), options)
    config = load_config(enrolled.config_path)
    data = {
        "node_id": enrolled.node_id,
        "backend": enrolled.backend,
        "zones": list(enrolled.zones),
        "config": str(enrolled.config_path),
        "state": str(config.state),
        "adapter": config.adapter.type,
        "files": [str(p) for p in enrolled.files],
        "next": next_steps(enrolled.config_path),
    }
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print(f"enrolled {enrolled.node_id} ({enrolled.backend}); zones: "
          f"{', '.join(enrolled.zones) or 'none'}")  # fmt: skip
    print(
        f"wrote {enrolled.config_path} and the node's keys beside it (0600); state: {config.state}"
    )
    for line in adapter_lines(config.adapter.type, config.adapter.settings):
        print(line)
    for step in next_steps(enrolled.config_path):
        print(f"next: {step}")
    return 0


def adapter_lines(kind: str, settings: Mapping[str, Any]) -> list[str]:
    """What krs enroll says about the adapter: plainly, when keys go to a folder nobody loads."""
    if kind != "directory":
        guide = f"docs/servers/{kind}.md" if kind in SERVERS else "its documentation"
        return [
            f"adapter: {kind}: keys are installed into the nameserver (settings in krs.yaml; "
            f"the server's side: {guide})"
        ]
    return [
        f"adapter: directory: keys will only be written to {settings.get('path')}, a folder no "
        "nameserver loads. To install them into your server, enrol with --adapter "
        f"{'|'.join(SERVERS)} (or --adapter-config FILE), or now set adapter: in krs.yaml "
        "(see docs/servers/); the KRS then asks the KDC to send the keys again",
    ]


def next_steps(config_path: Path) -> list[str]:
    """The real next steps: check everything, then start the service."""
    return [
        f"krs doctor -c {config_path}    # keys, state, the KDC, the adapter's server: fix what "
        "it reports",
        "systemctl enable --now krs    # the unit of integrations/<server>/krs.service (or: "
        f"krs run -c {config_path})",
    ]


def _adapter_section(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    section = loaded.get("adapter", loaded) if isinstance(loaded, dict) else None
    if not isinstance(section, dict) or "type" not in section:
        raise ConfigError(f"{path}: expected an adapter section with type: and settings:")
    return section
