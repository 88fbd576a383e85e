"""PowerDNS Authoritative 4.7 (pdns_server) as a plain process: the zones in a gsqlite3 database, or
in zone files behind the bind backend with a ``bind-dnssec-db`` for the keys; the HTTP API on;
everything in one directory, on loopback.

The server runs in the foreground (``daemon=no``, ``guardian=no``, no syslog) with its own
``--config-dir`` and ``socket-dir``, answers DNS on 127.0.0.1 and serves the API on another
127.0.0.1 port (``webserver-allow-from`` 127.0.0.1 only). ``security-poll-suffix=`` is empty, or
pdns would look up its security status in the public DNS at start; with it, an strace of a start
shows binds on 127.0.0.1 only and no connect() or sendto() at all. The API key is random, written
to a 0600 file, and the config that repeats it is 0600 too: the API hands out private keys. The
zones start unsigned (no cryptokeys), from the same text as every other lab (``zones.py``).
``stop()`` then ``start()`` keeps the database, the zone files, the ports and the API key.

What the adapter has to know about this server, found with this lab (exact commands and outputs
in docs/servers/powerdns-lab-notes.md), identical on both backends unless said:

- ``POST /api/v1/servers/localhost/zones/<zone>/cryptokeys`` with ``{"keytype", "active",
  "published", "privatekey": <BIND .private text, v1.3 with timing lines is fine>}`` takes
  algorithms 8, 13, 15 and 16 (Ed448 works on this build: signs, validates), answers 201 with the
  ``dnskey`` PowerDNS derived from the private key; compare it with the expected DNSKEY (32 bytes
  of a P-256 key labelled algorithm 15 were taken as an Ed25519 key, 201, another key tag).
  ``active`` defaults to false, ``published`` to true; ``keytype`` ``csk`` gives flags 257 and the
  listing reports ``keytype`` from the current key set (a KSK with no active ZSK of its algorithm
  is called ``csk``): match on ``flags`` and ``dnskey``, never on ``keytype`` or ``id``.
- published = in the DNSKEY RRset; active = signs. A published inactive key is served and signs
  nothing; an active unpublished ZSK signs every RRset of its algorithm *instead of* the CSK, with a
  key nobody can find: the zone turns bogus.
- Served after a change: API POST/PUT/DELETE alone about 19-20 s (packet cache, ``cache-ttl``
  20 s); with ``PUT /api/v1/servers/localhost/cache/flush?domain=<zone>`` 0.01-0.04 s.
  ``pdnsutil import-zone-key`` works while the server runs; alone about 41 s, and the API flush
  does not help (also 41 s: the DNSSEC key cache of pdns_server stays); ``pdns_control purge
  '<zone>$'`` after it: 0.03-0.09 s (any purge empties the whole key cache).
- gsqlite3 needs a rectify once the zone has keys (``pdnsutil rectify-zone`` or ``PUT
  …/zones/<zone>/rectify``, then a flush): until then the NXDOMAIN proof is ``example.com. NSEC
  example.com.``, validly signed, denying every name of the zone. The bind backend needs none.
- Errors: unknown zone 404 ``Not Found`` (text, not JSON); wrong or empty API key 401; key text
  that does not parse 422 ``Key could not be parsed…``; bad base64 or a short key 500 ``Internal
  Server Error``; a missing keytype 422. ``pdnsutil import-zone-key`` for an unknown zone exits 0
  (gsqlite3: prints id 0 and stores nothing; bind: stores a row for the unknown zone).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dns.dnssec
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from krs_lab.ports import free_port
from krs_lab.process import LabError, LabServer, ServerProcess, server_binary
from krs_lab.zones import unsigned_zone_text

SCHEMA = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")
Backend = Literal["gsqlite3", "bind"]
BACKENDS: tuple[Backend, ...] = ("gsqlite3", "bind")


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` 0600 from the first byte (it holds the API key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode on O_TRUNC
    with os.fdopen(fd, "w") as out:
        out.write(text)


@dataclass
class PowerDnsLab(LabServer):
    """A pdns_server instance in ``root``; ``start()`` writes everything and waits until every
    zone answers."""

    root: Path
    zones: Sequence[str]
    backend: Backend = "gsqlite3"
    host: str = "127.0.0.1"
    port: int = 0
    api_port: int = 0
    extra_settings: Mapping[str, str] = field(default_factory=dict)  # more pdns.conf lines
    process: ServerProcess | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise LabError(f"unknown PowerDNS backend {self.backend!r}; use one of {BACKENDS}")

    @property
    def config_dir(self) -> Path:
        return self.root / "conf"

    @property
    def config(self) -> Path:
        return self.config_dir / "pdns.conf"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def api_key_file(self) -> Path:
        return self.root / "api.key"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def database(self) -> Path:
        """The gsqlite3 database (zones and keys), or the bind backend's ``bind-dnssec-db``."""
        return self.root / "db" / ("pdns.sqlite3" if self.backend == "gsqlite3" else "dnssec.db")

    def zone_file(self, zone: str) -> Path:
        """The zone's text: served by the bind backend, loaded once into gsqlite3."""
        return self.root / "zones" / f"{zone}zone"

    @property
    def pdnsutil_command(self) -> list[str]:
        return ["pdnsutil", f"--config-dir={self.config_dir}"]

    @property
    def pdns_control_command(self) -> list[str]:
        return [
            "pdns_control",
            f"--config-dir={self.config_dir}",
            f"--socket-dir={self.socket_dir}",
        ]

    def adapter_settings(self) -> dict[str, Any]:
        """``adapter.settings`` for krs.yaml, pointing at this instance."""
        return {
            "api_url": self.api_url,
            "api_key_file": str(self.api_key_file),
            "server": f"{self.host}:{self.port}",
            "pdnsutil": self.pdnsutil_command,
            "pdns_control": self.pdns_control_command,
            "backend": self.backend,
        }

    # --- setting up -----------------------------------------------------------------------

    def write_config(self) -> None:
        """Write pdns.conf (again: same ports and key), and create what does not exist yet: the
        API key, the zone files, the database with the zones."""
        if server_binary("pdns_server") is None:
            raise LabError("pdns_server is not installed (apt-get install pdns-server)")
        self.port = self.port or free_port(self.host)
        self.api_port = self.api_port or free_port(self.host)
        while self.api_port == self.port:
            self.api_port = free_port(self.host)
        for directory in (self.root, self.config_dir, self.socket_dir, self.root / "db"):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.root / "zones").mkdir(exist_ok=True)
        for zone in self.zones:
            if not self.zone_file(zone).exists():
                self.zone_file(zone).write_text(unsigned_zone_text(zone))
        if not self.api_key_file.exists():
            _write_secret(self.api_key_file, secrets.token_urlsafe(24) + "\n")
        backend: dict[str, str]
        if self.backend == "gsqlite3":
            backend = {
                "launch": "gsqlite3",
                "gsqlite3-database": str(self.database),
                "gsqlite3-dnssec": "yes",
            }
        else:
            named_conf = self.config_dir / "named.conf"
            named_conf.write_text(
                "".join(
                    f'zone "{zone}" {{ type master; file "{self.zone_file(zone)}"; }};\n'
                    for zone in self.zones
                )
            )
            backend = {
                "launch": "bind",
                "bind-config": str(named_conf),
                "bind-dnssec-db": str(self.database),
            }
        settings = {
            **backend,
            "daemon": "no",
            "guardian": "no",
            "disable-syslog": "yes",
            "socket-dir": str(self.socket_dir),
            "local-address": self.host,
            "local-port": str(self.port),
            "security-poll-suffix": "",  # no security-status query to the public DNS
            "webserver": "yes",
            "webserver-address": self.host,
            "webserver-port": str(self.api_port),
            "webserver-allow-from": f"{self.host}/32",
            "api": "yes",
            "api-key": self.api_key(),
            "loglevel": "6",  # logs each API request line (never bodies: those hold private keys)
            **self.extra_settings,
        }
        _write_secret(self.config, "".join(f"{k}={v}\n" for k, v in settings.items()))
        if not self.database.exists():
            self._create_database()

    def _create_database(self) -> None:
        if self.backend == "bind":
            # created 0644 by pdnsutil, and it will hold the private keys
            self._pdnsutil_checked("create-bind-db", str(self.database))
            os.chmod(self.database, 0o600)
            return
        old = os.umask(0o077)
        try:
            with SCHEMA.open("rb") as schema:
                done = subprocess.run(
                    ["sqlite3", str(self.database)], stdin=schema, capture_output=True, timeout=30
                )
        except FileNotFoundError as exc:
            raise LabError(
                f"{exc.filename} is missing (apt-get install pdns-backend-sqlite3 sqlite3)"
            ) from None
        finally:
            os.umask(old)
        if done.returncode != 0:
            self.database.unlink(missing_ok=True)
            raise LabError(f"sqlite3 could not load {SCHEMA}: {done.stderr.decode().strip()}")
        for zone in self.zones:
            # load-zone creates a NATIVE zone; rectify sets the auth flags. The zone has no keys
            # yet, so no NSEC ordering is written: adding keys needs another rectify.
            self._pdnsutil_checked("load-zone", zone, str(self.zone_file(zone)))
            self._pdnsutil_checked("rectify-zone", zone)

    def _pdnsutil_checked(self, *command: str) -> subprocess.CompletedProcess[str]:
        done = self.pdnsutil(*command)
        if done.returncode != 0:
            raise LabError(f"pdnsutil {' '.join(command)}: exit {done.returncode}: {done.stderr}")
        return done

    # --- running --------------------------------------------------------------------------

    def start(self, timeout: float = 20) -> None:
        self.write_config()
        pdns_server = server_binary("pdns_server")
        assert pdns_server is not None
        self.process = ServerProcess(
            "pdns_server",
            [pdns_server, f"--config-dir={self.config_dir}"],
            self.root / "pdns.log",
            self.root,
        )
        self.process.start()
        self.process.wait_answering(self.host, self.port, self.zones, timeout)

    # --- tools and API, for tests ---------------------------------------------------------

    def pdnsutil(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.pdnsutil_command, *command], capture_output=True, text=True, timeout=timeout
        )

    def pdns_control(self, *command: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.pdns_control_command, *command], capture_output=True, text=True, timeout=timeout
        )

    def api_key(self) -> str:
        return self.api_key_file.read_text().strip()

    def api(
        self, method: str, path: str, body: Any = None, *, api_key: str | None = None
    ) -> tuple[int, Any]:
        """``method`` on ``/api/v1/servers/localhost<path>``: (HTTP status, parsed JSON, or the
        text when it is not JSON: PowerDNS answers 401/404/500 in plain text). Responses can
        hold private keys: never log them."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.api_url}/api/v1/servers/localhost{path}",
            data=data,
            method=method,
            headers={
                "X-API-Key": self.api_key() if api_key is None else api_key,
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        except urllib.error.URLError as error:
            raise LabError(f"PowerDNS API at {self.api_url}: {error.reason}") from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def flush(self, zone: str) -> None:
        """Empty the packet and query caches for ``zone`` (a change made through the API is
        served at once after it, about 20 s later without)."""
        status, reply = self.api("PUT", "/cache/flush?domain=" + urllib.parse.quote(zone))
        if status != 200:
            raise LabError(f"cache flush of {zone}: HTTP {status} {reply}")

    def rectify(self, zone: str) -> None:
        """Write the NSEC ordering (gsqlite3 needs it once a zone has keys), then flush."""
        status, reply = self.api("PUT", f"/zones/{zone}/rectify")
        if status != 200:
            raise LabError(f"rectify of {zone}: HTTP {status} {reply}")
        self.flush(zone)

    def cryptokeys(self, zone: str) -> list[dict[str, Any]]:
        """The zone's keys from the API (the server must run), each with its ``tag`` computed
        from ``dnskey``: ``id``, ``flags``, ``active``, ``published``, ``dnskey``, ``keytype``,
        ``algorithm``. The list holds no private keys."""
        status, keys = self.api("GET", f"/zones/{zone}/cryptokeys")
        if status != 200 or not isinstance(keys, list):
            raise LabError(f"cryptokeys of {zone}: HTTP {status} {keys}")
        for key in keys:
            key.pop("privatekey", None)
            rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, key["dnskey"])
            key["tag"] = dns.dnssec.key_id(rdata)  # type: ignore[arg-type]
        return keys

    def list_keys(self, zone: str) -> str:
        """``pdnsutil list-keys <zone>`` (works with the server stopped too)."""
        return self._pdnsutil_checked("list-keys", zone).stdout
