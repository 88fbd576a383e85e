"""The two ways into PowerDNS's key storage: the HTTP API, and ``pdnsutil`` plus ``pdns_control``
for hosts without the API. Both offer the same small set of operations, so the adapter has one
implementation of each step.

What shapes them (docs/servers/powerdns-lab-notes.md, measured against pdns_server 4.7.3):
- keys are matched by their DNSKEY, never by id (ids are reused after deletion) or keytype (which
  PowerDNS derives from the current key set);
- the API answers with private keys: nothing here logs a response or puts one in an error;
- a change is served ~20 s late (packet cache) unless the zone is flushed; after pdnsutil ~41 s
  unless ``pdns_control purge`` (the API flush leaves pdns_server's key cache as it was);
- a backend without DNSSEC storage lists no keys and refuses to add one; the only sign of it that
  writes nothing is the zone's ``PRESIGNED`` metadata, which such a backend cannot look up (API
  404, no ``PRESIGNED =`` line from ``pdnsutil get-meta``) and which also tells a presigned zone.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import dns.dnssec
import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.DNSKEY import DNSKEY

from krs_plugin.adapters.base import Problem
from krs_plugin.adapters.tools import run_tool, secret_file
from krs_plugin.errors import AdapterError

PRESIGNED = "PRESIGNED"


@dataclass(frozen=True)
class PdnsKey:
    """One cryptokey as PowerDNS stores it (never its private part)."""

    id: int
    flags: int
    algorithm: int
    active: bool
    published: bool
    dnskey: DNSKEY

    @property
    def tag(self) -> int:
        return dns.dnssec.key_id(self.dnskey)


class KeyStore(Protocol):
    """What the adapter needs from PowerDNS, whichever way it is reached."""

    how: str

    def problems(self) -> list[Problem]:
        """What keeps the adapter from reaching PowerDNS at all, each with its fix."""
        ...

    def zone_exists(self, zone: dns.name.Name) -> bool: ...
    def presigned(self, zone: dns.name.Name) -> bool | None:
        """Whether the zone (which exists) is marked PRESIGNED; None when its backend has no
        DNSSEC storage (no keys, no DNSSEC metadata)."""
        ...

    def keys(self, zone: dns.name.Name) -> list[PdnsKey]: ...
    def private_text(self, zone: dns.name.Name, key_id: int) -> str: ...
    def add(
        self, zone: dns.name.Name, private: str, *, keytype: str, active: bool, published: bool
    ) -> PdnsKey: ...
    def set_state(
        self, zone: dns.name.Name, key_id: int, *, active: bool, published: bool
    ) -> None: ...
    def remove(self, zone: dns.name.Name, key_id: int) -> None: ...
    def get_meta(self, zone: dns.name.Name, kind: str) -> list[str]: ...
    def set_meta(self, zone: dns.name.Name, kind: str, values: Sequence[str]) -> None: ...
    def rectify(self, zone: dns.name.Name) -> None: ...
    def refresh(self, zone: dns.name.Name) -> None: ...
    def set_rrset(
        self, zone: dns.name.Name, rdtype: str, ttl: int, contents: Sequence[str]
    ) -> None:
        """Replace the zone's apex RRset of type ``rdtype`` (CDS, CDNSKEY) with ``contents``;
        delete it when empty. AdapterError when the backend holds no records it can change
        (the bind backend)."""
        ...

    def zones_signed(self) -> dict[str, bool] | None:
        """Every zone PowerDNS serves (lower case, final dot), and whether it is DNSSEC-signed
        (PowerDNS: presigned, or has a cryptokey): one call for a batch; None when this way in
        cannot list them cheaply."""
        ...

    def all_meta(self, zone: dns.name.Name) -> dict[str, list[str]] | None:
        """All the zone's metadata by kind in one call; None when this way in cannot (then each
        kind is asked alone)."""
        ...

    def refresh_all(self) -> None:
        """``refresh`` for every zone at once (one purge after a batch)."""
        ...


def parse_dnskey(text: str, where: str) -> DNSKEY:
    """A DNSKEY as PowerDNS writes it (``257 3 13 <base64>``). That form is read directly:
    dnspython's tokenizer took a third of a millisecond a key, and a batch of 10,000 zones
    reads 20,000; anything else (or anything wrong) goes through dnspython, which says what."""
    parts = text.split()
    if len(parts) >= 4 and all(p.isdigit() for p in parts[:3]):
        try:
            flags, protocol, algorithm = (int(p) for p in parts[:3])
            key = base64.b64decode("".join(parts[3:]), validate=True)
            return DNSKEY(dns.rdataclass.IN, dns.rdatatype.DNSKEY, flags, protocol, algorithm, key)
        except (binascii.Error, ValueError, dns.exception.DNSException):
            pass
    try:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, text)
    except (dns.exception.DNSException, ValueError) as exc:
        raise AdapterError(f"{where}: PowerDNS gave an unreadable DNSKEY: {exc}") from None
    assert isinstance(rdata, DNSKEY)
    return rdata


# --- HTTP API -----------------------------------------------------------------------------------


class ApiKeyStore:
    """``/api/v1/servers/<server_id>/zones/<zone>/cryptokeys`` and friends."""

    how = "api"

    def __init__(self, url: str, key_file: Path, server_id: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.key_file = key_file
        self.server_id = server_id
        self.timeout = timeout
        self._local = threading.local()  # one kept-alive connection per thread
        self._key_read: tuple[tuple[int, int, int], str] | None = None

    def _connection(self) -> http.client.HTTPConnection:
        """A connection kept open between requests: 10,000 zones take about 50,000 requests,
        and a new connection each (urllib) cost more than PowerDNS's answer."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            parsed = urllib.parse.urlsplit(self.url)
            kind = (
                http.client.HTTPSConnection
                if parsed.scheme == "https"
                else http.client.HTTPConnection
            )
            connection = kind(parsed.hostname or "127.0.0.1", parsed.port, timeout=self.timeout)
            self._local.connection = connection
        return connection

    def _exchange(self, method: str, url: str, data: bytes | None) -> tuple[int, bytes]:
        """One request on the kept connection; once more on a new one if the server had closed
        it (an idle keep-alive connection) before answering."""
        headers = {"X-API-Key": self._key(), "Content-Type": "application/json"}
        path = urllib.parse.urlsplit(url)
        target = path.path + (f"?{path.query}" if path.query else "")
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.request(method, target, body=data, headers=headers)
                response = connection.getresponse()
                raw = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                self._local.connection = None
                if attempt == 2:
                    raise
                continue
            except (OSError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                raise
            if response.will_close:
                connection.close()
                self._local.connection = None
            return response.status, raw
        raise AssertionError("not reached")

    def _key(self) -> str:
        """The API key, read again whenever its file changed (a key rotated while the KRS runs
        is used from the next request on); unchanged, it is not read for each of a batch's
        requests."""
        try:
            found = os.stat(self.key_file)
            stamp = (found.st_ino, found.st_size, found.st_mtime_ns)
            if self._key_read is not None and self._key_read[0] == stamp:
                return self._key_read[1]
            key = self.key_file.read_text().strip()
            self._key_read = (stamp, key)
            return key
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise AdapterError(
                f"powerdns: cannot read the API key file {self.key_file}: {reason}"
            ) from None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, JSON or text). Bodies can hold private keys: callers never show them."""
        url = f"{self.url}/api/v1/servers/{self.server_id}{path}"
        data = None if body is None else json.dumps(body).encode()
        try:
            status, raw = self._exchange(method, url, data)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            reason: object = exc
            if isinstance(exc, OSError) and exc.strerror:
                reason = exc.strerror
            raise AdapterError(
                f"powerdns: the API at {self.url} does not answer: {reason}"
            ) from None
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode("utf-8", "replace").strip()

    def _refused(self, what: str) -> AdapterError:
        return AdapterError(
            f"powerdns API: {what}: 401 Unauthorized, PowerDNS refuses the API key in "
            f"{self.key_file}"
        )

    def _call(self, method: str, path: str, what: str, body: Any = None) -> Any:
        status, reply = self.request(method, path, body)
        if status == 401:
            raise self._refused(what)
        if not 200 <= status < 300:
            # PowerDNS's own error text; bodies with keys are only ever 2xx answers
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise AdapterError(f"powerdns API: {what}: HTTP {status} {str(error)[:200]}")
        return reply

    @staticmethod
    def _zone(zone: dns.name.Name) -> str:
        return "/zones/" + urllib.parse.quote(zone.to_text(), safe="")

    def problems(self) -> list[Problem]:
        try:
            self._key()
        except AdapterError as exc:
            return [
                Problem(
                    str(exc),
                    f"put pdns_server's api-key (from pdns.conf) into {self.key_file}, "
                    "readable by the KRS user only (chmod 600), or set api_key_file",
                )
            ]
        try:
            status, _ = self.request("GET", "")
        except AdapterError as exc:
            return [
                Problem(
                    str(exc),
                    "start pdns_server with webserver=yes and api=yes, set api_url to its "
                    "webserver-address and webserver-port, and let this host in with "
                    "webserver-allow-from",
                )
            ]
        if status == 401:
            return [
                Problem(
                    str(self._refused("server status")),
                    f"put the api-key from pdns.conf into {self.key_file}",
                )
            ]
        if status == 404:
            return [
                Problem(
                    f"powerdns: {self.url} answers, but /api/v1/servers/{self.server_id} is "
                    "not there (HTTP 404)",
                    "set api=yes in pdns.conf and restart pdns_server; server_id in krs.yaml "
                    "must be localhost (PowerDNS's only server id)",
                )
            ]
        if not 200 <= status < 300:
            return [
                Problem(
                    f"powerdns API: server status: HTTP {status}",
                    "see pdns_server's log for the request",
                )
            ]
        return []

    def zone_exists(self, zone: dns.name.Name) -> bool:
        status, reply = self.request("GET", self._zone(zone) + "?rrsets=false")
        if status == 401:
            raise self._refused(f"zone {zone}")
        if status == 404:
            # also what a webserver without the API says: absent only if the API answers
            self._call("GET", "", "server status")
            return False
        if status != 200:
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise AdapterError(f"powerdns API: zone {zone}: HTTP {status} {str(error)[:200]}")
        return True

    def presigned(self, zone: dns.name.Name) -> bool | None:
        status, reply = self.request("GET", f"{self._zone(zone)}/metadata/{PRESIGNED}")
        if status == 401:
            raise self._refused(f"metadata {PRESIGNED} of {zone}")
        if status == 404:  # the zone exists: its backend cannot look the kind up
            return None
        if status != 200 or not isinstance(reply, dict):
            raise AdapterError(f"powerdns API: metadata {PRESIGNED} of {zone}: HTTP {status}")
        return "1" in reply.get("metadata", [])

    def keys(self, zone: dns.name.Name) -> list[PdnsKey]:
        reply = self._call("GET", self._zone(zone) + "/cryptokeys", f"keys of {zone}")
        where = f"powerdns, zone {zone}"
        keys = []
        for entry in reply:
            dnskey = parse_dnskey(entry["dnskey"], where)
            keys.append(
                PdnsKey(
                    int(entry["id"]),
                    int(entry["flags"]),
                    int(dnskey.algorithm),
                    bool(entry["active"]),
                    bool(entry.get("published", True)),
                    dnskey,
                )
            )
        return keys

    def private_text(self, zone: dns.name.Name, key_id: int) -> str:
        reply = self._call("GET", f"{self._zone(zone)}/cryptokeys/{key_id}", f"key {key_id}")
        return str(reply["privatekey"])

    def add(
        self, zone: dns.name.Name, private: str, *, keytype: str, active: bool, published: bool
    ) -> PdnsKey:
        body = {"keytype": keytype, "active": active, "published": published, "privatekey": private}
        reply = self._call("POST", self._zone(zone) + "/cryptokeys", f"add key to {zone}", body)
        dnskey = parse_dnskey(reply["dnskey"], f"powerdns, zone {zone}")
        return PdnsKey(
            int(reply["id"]), int(reply["flags"]), int(dnskey.algorithm), active, published, dnskey
        )

    def set_state(self, zone: dns.name.Name, key_id: int, *, active: bool, published: bool) -> None:
        # Both fields always: a PUT of "active" alone republished an unpublished key.
        body = {"active": active, "published": published}
        self._call("PUT", f"{self._zone(zone)}/cryptokeys/{key_id}", f"key {key_id}", body)

    def remove(self, zone: dns.name.Name, key_id: int) -> None:
        self._call("DELETE", f"{self._zone(zone)}/cryptokeys/{key_id}", f"remove key {key_id}")

    def get_meta(self, zone: dns.name.Name, kind: str) -> list[str]:
        status, reply = self.request("GET", f"{self._zone(zone)}/metadata/{kind}")
        if status == 401:
            raise self._refused(f"metadata {kind} of {zone}")
        if status == 200 and isinstance(reply, dict):
            return [str(v) for v in reply.get("metadata", [])]
        if status in (404, 422):
            return []
        raise AdapterError(f"powerdns API: metadata {kind} of {zone}: HTTP {status}")

    def set_meta(self, zone: dns.name.Name, kind: str, values: Sequence[str]) -> None:
        path = f"{self._zone(zone)}/metadata/{kind}"
        if values:
            self._call("PUT", path, f"metadata {kind}", {"metadata": list(values)})
        else:
            self._call("DELETE", path, f"metadata {kind}")

    def rectify(self, zone: dns.name.Name) -> None:
        self._call("PUT", self._zone(zone) + "/rectify", f"rectify {zone}")

    def settings(self) -> dict[str, str]:
        """pdns_server's configuration (``GET /config``), setting by name."""
        reply = self._call("GET", "/config", "configuration")
        if not isinstance(reply, list):
            return {}
        return {
            str(s["name"]): str(s.get("value", ""))
            for s in reply
            if isinstance(s, dict) and "name" in s
        }

    def zones_signed(self) -> dict[str, bool] | None:
        reply = self._call("GET", "/zones", "zone list")
        if not isinstance(reply, list):
            return None
        return {str(z["name"]).lower(): bool(z.get("dnssec")) for z in reply if "name" in z}

    def all_meta(self, zone: dns.name.Name) -> dict[str, list[str]] | None:
        status, reply = self.request("GET", f"{self._zone(zone)}/metadata")
        if status == 401:
            raise self._refused(f"metadata of {zone}")
        if status != 200 or not isinstance(reply, list):
            return None  # a backend without DNSSEC storage, say: each kind asked alone
        return {str(m["kind"]): [str(v) for v in m.get("metadata", [])] for m in reply}

    def refresh_all(self) -> None:
        """The packet and query caches of every zone ("." and everything under it)."""
        self._call("PUT", "/cache/flush?domain=.", "cache flush")

    def refresh(self, zone: dns.name.Name) -> None:
        domain = urllib.parse.quote(zone.to_text(), safe="")
        self._call("PUT", f"/cache/flush?domain={domain}", f"cache flush of {zone}")

    def set_rrset(
        self, zone: dns.name.Name, rdtype: str, ttl: int, contents: Sequence[str]
    ) -> None:
        rrset: dict[str, Any] = {"name": zone.to_text(), "type": rdtype}
        if contents:
            records = [{"content": c, "disabled": False} for c in contents]
            rrset.update(changetype="REPLACE", ttl=ttl, records=records)
        else:
            rrset["changetype"] = "DELETE"
        self._call("PATCH", self._zone(zone), f"{rdtype} of {zone}", {"rrsets": [rrset]})


# --- pdnsutil + pdns_control --------------------------------------------------------------------

_META_LINE = re.compile(r"^(\S+) = (.*)$")


class PdnsutilKeyStore:
    """``pdnsutil`` writes the backend directly; ``pdns_control purge`` makes the server see it."""

    how = "pdnsutil"

    def __init__(self, pdnsutil: Sequence[str], pdns_control: Sequence[str], timeout: float):
        self.pdnsutil = list(pdnsutil)
        self.pdns_control = list(pdns_control)
        self.timeout = timeout
        self._dnskeys: dict[tuple[dns.name.Name, int], DNSKEY] = {}

    def _run(self, argv: list[str], what: str) -> str:
        return run_tool(argv, what, timeout=self.timeout)

    def util(self, *args: str, what: str) -> str:
        return self._run([*self.pdnsutil, *args], what)

    def problems(self) -> list[Problem]:
        out = []
        try:
            self.util("list-all-zones", what="pdnsutil list-all-zones")
        except AdapterError as exc:
            out.append(
                Problem(
                    str(exc),
                    "apt-get install pdns-server (or set pdnsutil in krs.yaml to its path and "
                    "--config-dir); the KRS user must read pdns.conf and the backend's database"
                    if "not found" in str(exc)
                    else "the KRS user must read pdns.conf and the backend's database (and "
                    "write it); pdnsutil must be given pdns_server's --config-dir",
                )
            )
        try:
            self._run([*self.pdns_control, "rping"], "pdns_control rping")
        except AdapterError as exc:
            out.append(
                Problem(
                    str(exc),
                    "apt-get install pdns-server (or set pdns_control in krs.yaml to its path)"
                    if "not found" in str(exc)
                    else "pdns_server must run, and the KRS user must be able to use its "
                    "control socket (pdns.controlsocket in socket-dir; pdns_control needs the "
                    "same --socket-dir)",
                )
            )
        return out

    def zone_exists(self, zone: dns.name.Name) -> bool:
        try:
            self.util("list-keys", zone.to_text(), what=f"list-keys {zone}")
        except AdapterError as exc:
            if "not found" in str(exc):
                return False
            raise
        return True

    def presigned(self, zone: dns.name.Name) -> bool | None:
        out = self.util("get-meta", zone.to_text(), PRESIGNED, what=f"get-meta {PRESIGNED}")
        for line in out.splitlines():
            name, _, value = line.partition(" =")
            if name == PRESIGNED:
                return value.strip() == "1"
        return None  # pdnsutil prints "KIND = " for a kind that is looked up and not set

    def keys(self, zone: dns.name.Name) -> list[PdnsKey]:
        """From ``list-keys`` (id, active, published; ``show-zone`` omits keys of a presigned
        zone and the DNSKEY of a ZSK), each key's DNSKEY from ``export-zone-dnskey``.

        ``list-keys`` is a fixed-width table whose Act and Pub cells are blank when the key is
        inactive or unpublished; their columns are read at the header's positions."""
        out = self.util("list-keys", zone.to_text(), what=f"list-keys {zone}")
        lines = out.splitlines()
        header = next((ln for ln in lines if ln.startswith("Zone") and " Act " in ln), None)
        if header is None:
            raise AdapterError(f"powerdns: pdnsutil list-keys {zone}: unexpected output")
        act, pub, size = header.index(" Act ") + 1, header.index(" Pub ") + 1, header.index(" Size")
        keys = []
        for line in lines[lines.index(header) + 1 :]:
            words = line.split()
            if len(words) < 5 or not words[-3].isdigit():
                continue  # the dashed rule
            key_id = int(words[-3])  # ... ID Location Keytag
            dnskey = self._dnskey(zone, key_id, words[-1])
            active = line[act:pub].strip() == "Act"
            published = line[pub:size].strip() == "Pub"
            keys.append(
                PdnsKey(key_id, dnskey.flags, int(dnskey.algorithm), active, published, dnskey)
            )
        return keys

    def _dnskey(self, zone: dns.name.Name, key_id: int, tag: str) -> DNSKEY:
        """A key's DNSKEY, exported once per key rather than at every listing (a pdnsutil
        process each). PowerDNS reuses ids after deletion, so a cached DNSKEY is used only while
        the listing shows the same key tag for that id."""
        cached = self._dnskeys.get((zone, key_id))
        if cached is not None and str(dns.dnssec.key_id(cached)) == tag:
            return cached
        dnskey = self._export_dnskey(zone, key_id)
        self._dnskeys[(zone, key_id)] = dnskey
        return dnskey

    def _export_dnskey(self, zone: dns.name.Name, key_id: int) -> DNSKEY:
        out = self.util(
            "export-zone-dnskey", zone.to_text(), str(key_id), what=f"DNSKEY of key {key_id}"
        )
        found = re.search(r"\bDNSKEY\s+(\d+ \d+ \d+ [A-Za-z0-9+/= ]+)", out)
        if found is None:
            raise AdapterError(f"powerdns: pdnsutil printed no DNSKEY for key {key_id} of {zone}")
        return parse_dnskey(found.group(1).strip(), f"zone {zone}")

    def private_text(self, zone: dns.name.Name, key_id: int) -> str:
        return self.util("export-zone-key", zone.to_text(), str(key_id), what=f"export {key_id}")

    def add(
        self, zone: dns.name.Name, private: str, *, keytype: str, active: bool, published: bool
    ) -> PdnsKey:
        # pdnsutil knows ksk and zsk; a CSK is a KSK that signs alone (flags 257).
        kind = "zsk" if keytype == "zsk" else "ksk"
        state = ["active" if active else "inactive", kind]
        state.append("published" if published else "unpublished")
        with secret_file("key.private", private.encode()) as path:
            out_text = self.util(
                "import-zone-key", zone.to_text(), str(path), *state, what=f"import into {zone}"
            )
        key_id = int(out_text.strip().splitlines()[-1])
        if key_id == 0:  # pdnsutil's answer for a zone that does not exist
            raise AdapterError(f"powerdns: pdnsutil did not store the key: no zone {zone}")
        key = next((k for k in self.keys(zone) if k.id == key_id), None)
        if key is None:
            raise AdapterError(f"powerdns: key {key_id} not found in {zone} after import")
        return key

    def set_state(self, zone: dns.name.Name, key_id: int, *, active: bool, published: bool) -> None:
        name = zone.to_text()
        self.util("publish-zone-key" if published else "unpublish-zone-key", name, str(key_id),
                  what=f"publish state of key {key_id}")  # fmt: skip
        self.util("activate-zone-key" if active else "deactivate-zone-key", name, str(key_id),
                  what=f"active state of key {key_id}")  # fmt: skip

    def remove(self, zone: dns.name.Name, key_id: int) -> None:
        self.util("remove-zone-key", zone.to_text(), str(key_id), what=f"remove key {key_id}")
        self._dnskeys.pop((zone, key_id), None)  # the id may be given to the next key

    def get_meta(self, zone: dns.name.Name, kind: str) -> list[str]:
        out = self.util("get-meta", zone.to_text(), kind, what=f"get-meta {kind}")
        for line in out.splitlines():
            found = _META_LINE.match(line.strip())
            if found and found.group(1) == kind:
                return [v.strip() for v in found.group(2).split(", ") if v.strip()]
        return []

    def set_meta(self, zone: dns.name.Name, kind: str, values: Sequence[str]) -> None:
        self.util("set-meta", zone.to_text(), kind, *values, what=f"set-meta {kind}")

    def rectify(self, zone: dns.name.Name) -> None:
        self.util("rectify-zone", zone.to_text(), what=f"rectify-zone {zone}")

    def set_rrset(
        self, zone: dns.name.Name, rdtype: str, ttl: int, contents: Sequence[str]
    ) -> None:
        name, what = zone.to_text(), f"{rdtype} of {zone}"
        if contents:
            self.util("replace-rrset", name, "@", rdtype, str(ttl), *contents, what=what)
        else:
            self.util("delete-rrset", name, "@", rdtype, what=what)

    def refresh(self, zone: dns.name.Name) -> None:
        """Purge twice, 0.1 s apart: a query answered while the first purge runs puts the old
        key set back in the packet cache for ``cache-ttl`` (2 of 30 applies without the second
        purge, 0 of 40 with it); the adapter's own check may not be the query that sees it."""
        pattern = zone.to_text().rstrip(".") + "$"  # "$": the zone and every name under it
        self._run([*self.pdns_control, "purge", pattern], f"pdns_control purge {pattern}")
        time.sleep(0.1)
        self._run([*self.pdns_control, "purge", pattern], f"pdns_control purge {pattern}")

    def zones_signed(self) -> dict[str, bool] | None:
        return None  # pdnsutil list-all-zones does not say which are signed

    def all_meta(self, zone: dns.name.Name) -> dict[str, list[str]] | None:
        return None

    def refresh_all(self) -> None:
        """``pdns_control purge`` without a pattern: every cache entry, twice (see refresh)."""
        self._run([*self.pdns_control, "purge"], "pdns_control purge")
        time.sleep(0.1)
        self._run([*self.pdns_control, "purge"], "pdns_control purge")


# --- a batch: what PowerDNS says once, kept ----------------------------------------------------


class BatchStore:
    """A KeyStore for the length of a batch (``PowerDnsAdapter.batch_context``): the zone list
    is read once, a zone listed as unsigned has no keys (no call), each zone's metadata is read
    in one call and its keys once, and both are then kept up to date from what the adapter
    writes through here, as PowerDNS answered each write; ``refresh`` of a zone is deferred to
    one ``refresh_all``. A new node's zone then costs four API calls (two keys, its timing
    metadata, a rectify; its metadata is not read when it is fresh, pdnsfresh.py) instead of
    about eighteen. Every verification still asks the server over DNS."""

    def __init__(self, store: KeyStore, *, defer_refresh: bool = True) -> None:
        self.store = store
        self.defer_refresh = defer_refresh  # maintain() purges zone by zone, as it did
        self.how = store.how
        self.signed = store.zones_signed()
        self.meta: dict[dns.name.Name, dict[str, list[str]]] = {}
        self.known: dict[dns.name.Name, list[PdnsKey]] = {}
        self.dirty = False  # a refresh is due
        self.no_dnssec_storage = False  # no launched backend stores keys (pdnsfresh.py)

    def _listed(self, zone: dns.name.Name) -> bool | None:
        return None if self.signed is None else self.signed.get(zone.to_text().lower())

    def listed_unsigned(self, zone: dns.name.Name) -> bool:
        """PowerDNS listed the zone as not signed: it has no keys (and is not presigned)."""
        return self._listed(zone) is False and zone not in self.known

    def problems(self) -> list[Problem]:
        return self.store.problems()

    def zone_exists(self, zone: dns.name.Name) -> bool:
        if self.signed is not None:
            return zone.to_text().lower() in self.signed
        return self.store.zone_exists(zone)

    def _meta(self, zone: dns.name.Name) -> dict[str, list[str]] | None:
        if zone not in self.meta:
            found = self.store.all_meta(zone)
            if found is None:
                return None
            self.meta[zone] = found
        return self.meta[zone]

    def assume_no_metadata(self, zone: dns.name.Name) -> None:
        """Read ``zone`` as having no metadata, without asking: for a fresh zone (pdnsfresh.py),
        whose KRS metadata the batch replaces and whose other kinds it does not use."""
        self.meta[zone] = {}

    def presigned(self, zone: dns.name.Name) -> bool | None:
        if self.no_dnssec_storage:
            return None
        meta = self._meta(zone)
        return self.store.presigned(zone) if meta is None else "1" in meta.get(PRESIGNED, [])

    def get_meta(self, zone: dns.name.Name, kind: str) -> list[str]:
        meta = self._meta(zone)
        return self.store.get_meta(zone, kind) if meta is None else list(meta.get(kind, []))

    def set_meta(self, zone: dns.name.Name, kind: str, values: Sequence[str]) -> None:
        with self._writing(zone):
            self.store.set_meta(zone, kind, values)
        if zone in self.meta:
            self.meta[zone][kind] = list(values)

    def keys(self, zone: dns.name.Name) -> list[PdnsKey]:
        if zone not in self.known:
            listed = self._listed(zone)
            self.known[zone] = [] if listed is False else self.store.keys(zone)
        return list(self.known[zone])

    def private_text(self, zone: dns.name.Name, key_id: int) -> str:
        return self.store.private_text(zone, key_id)

    @contextlib.contextmanager
    def _writing(self, zone: dns.name.Name) -> Iterator[None]:
        """A write that fails leaves PowerDNS in a state not known here (it may have stored
        the key and then answered something unreadable): the zone is read anew after it."""
        try:
            yield
        except BaseException:
            self.known.pop(zone, None)
            self.meta.pop(zone, None)
            raise

    def add(
        self, zone: dns.name.Name, private: str, *, keytype: str, active: bool, published: bool
    ) -> PdnsKey:
        keys = self.keys(zone)
        with self._writing(zone):
            added = self.store.add(
                zone, private, keytype=keytype, active=active, published=published
            )
        self.known[zone] = [*keys, added]
        return added

    def set_state(self, zone: dns.name.Name, key_id: int, *, active: bool, published: bool) -> None:
        keys = self.keys(zone)
        with self._writing(zone):
            self.store.set_state(zone, key_id, active=active, published=published)
        self.known[zone] = [
            replace(k, active=active, published=published) if k.id == key_id else k for k in keys
        ]

    def remove(self, zone: dns.name.Name, key_id: int) -> None:
        keys = self.keys(zone)
        with self._writing(zone):
            self.store.remove(zone, key_id)
        self.known[zone] = [k for k in keys if k.id != key_id]

    def rectify(self, zone: dns.name.Name) -> None:
        self.store.rectify(zone)

    def refresh(self, zone: dns.name.Name) -> None:
        if not self.defer_refresh:
            self.store.refresh(zone)
            return
        self.dirty = True

    def flush(self) -> None:
        """The deferred refreshes, as one."""
        if self.dirty:
            self.store.refresh_all()
            self.dirty = False

    def set_rrset(
        self, zone: dns.name.Name, rdtype: str, ttl: int, contents: Sequence[str]
    ) -> None:
        with self._writing(zone):
            self.store.set_rrset(zone, rdtype, ttl, contents)

    def zones_signed(self) -> dict[str, bool] | None:
        return self.signed

    def all_meta(self, zone: dns.name.Name) -> dict[str, list[str]] | None:
        return self._meta(zone)

    def refresh_all(self) -> None:
        self.store.refresh_all()
