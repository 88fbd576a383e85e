"""The main job behind ``krs-demo`` (krs_lab.demo), end to end on this machine's loopback.

A KDC (``krs-kdc serve``), a BIND 9 (``named`` from the OS packages) serving an unsigned zone, and
a KRS (``krs run``) with the bind9 adapter start as processes (``--server knot``: a knotd and the
knot adapter instead). The KDC makes a KSK and a ZSK and
distributes them; the KRS receives the NOTIFY, fetches, verifies, decrypts, installs the keys
into BIND and confirms. The job then asks BIND for the zone's DNSKEY set and validates its
signatures with dnspython. Without named it says how to get it and installs into a key folder
instead (the directory adapter). Everything is removed at the end unless ``--keep`` is given.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import dns.dnssec
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype

from krs_lab.bind9 import Bind9Lab
from krs_lab.deployment import Deployment
from krs_lab.knot import KnotLab
from krs_lab.process import LabError, server_binary
from krs_lab.sysroot import Sysroot
from krs_plugin.dnssec import read_bind_key_pair
from krs_plugin.kdc.distribute import dnskey_of
from krs_plugin.kdc.store import Store


def _say(step: str, text: str) -> None:
    print(f"[{step:>5}] {text}", flush=True)


def run_main_job(
    *,
    backend: str = "hpke",
    zone: str = "example.com.",
    server: str = "auto",
    keep: str | None = None,
) -> int:
    """Returns the exit code: 0 when the served keys are the KDC's and validate."""
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return _run(Path(keep).resolve(), backend, zone, server)
    root = Path(tempfile.mkdtemp(prefix="krs-demo-"))
    try:
        return _run(root, backend, zone, server)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(root: Path, backend: str, zone: str, server: str) -> int:
    use_bind = server == "bind9" or (server == "auto" and server_binary("named") is not None)
    if server == "auto" and not use_bind:
        _say(
            "setup", "BIND 9 is not installed: `apt-get install bind9 bind9-utils` (or ./run setup)"
        )
        _say("setup", "falling back to the directory adapter: keys go to a folder, not a server")
    started = time.monotonic()
    lab: Bind9Lab | KnotLab | None = None
    deployment: Deployment | None = None
    try:
        if server == "knot":
            lab = KnotLab(root / "knot", [zone])
            lab.start()
            _say("knot", f"knotd on {lab.host} port {lab.port}, {zone} waiting for its keys")
        elif use_bind:
            lab = Bind9Lab(root / "bind9", [zone], sysroot=_demo_sysroot())
            lab.start()
            major, minor = lab.version
            how = "dnssec-policy manual-mode" if lab.uses_policy else "auto-dnssec maintain"
            _say(
                "bind9",
                f"named {major}.{minor} serving {zone} unsigned on {lab.host} port {lab.port}"
                f" ({how})",
            )
        adapter_type = "knot" if server == "knot" else "bind9"
        adapter = {"type": adapter_type, "settings": lab.adapter_settings()} if lab else None
        deployment = Deployment(
            root / "kdc-and-node", backend, zones=(zone,), adapter=adapter, generate_keys=False
        )
        _say("kdc", f"state in {deployment.state}; node {deployment.config['node_id']} ({backend})")
        custody = json.loads(deployment.kdc("--json", "custody", "status"))
        where = f"token {custody['token']!r}" if custody["custody"] == "pkcs11" else custody["kek"]
        _say("kdc", f"custody {custody['custody']}: signing key and KEK in {where}"
             if custody["custody"] == "pkcs11" else f"custody file: KEK in {where}")  # fmt: skip
        deployment.write_config(poll_interval=10)
        deployment.start_kdc()
        deployment.start_krs()
        _say("krs", f"krs run listening for NOTIFY on 127.0.0.1 port {deployment.notify_port}")
        for role in ("KSK", "ZSK"):
            deployment.kdc("key", "generate", "--zone", zone, "--role", role)
        t0 = time.monotonic()
        dist_id = deployment.distribute("--zone", zone)
        _say("kdc", f"krs-kdc distribute --zone {zone}: distribution {dist_id}, NOTIFY sent")
        deployment.wait_confirmed(dist_id, timeout=60)
        _say("krs", f"installed and confirmed to the KDC in {time.monotonic() - t0:.2f} s")
        expected = _kdc_keys(deployment, zone)
        if lab is not None:
            ok = _show_served(lab, zone, expected, "Knot" if server == "knot" else "BIND")
        else:
            ok = _show_files(deployment.node_dir / "keys", expected)
        _say("done", f"{'VALID' if ok else 'NOT VALID'} in {time.monotonic() - started:.1f} s")
        return 0 if ok else 1
    except LabError as exc:
        _say("error", str(exc))
        return 1
    finally:
        if deployment is not None:
            deployment.close()
        if lab is not None:
            lab.stop()


def _demo_sysroot() -> Sysroot | None:
    """named from another Debian release's root (KRS_DEMO_SYSROOT=trixie, say; a developer's
    switch, see docs/development.md) instead of the host's packages."""
    suite = os.environ.get("KRS_DEMO_SYSROOT")
    if not suite:
        return None
    found = Sysroot.find(suite)
    if found is None:
        raise LabError(f"KRS_DEMO_SYSROOT={suite}: no such root (python -m krs_lab.sysroot)")
    return found


def _kdc_keys(deployment: Deployment, zone: str) -> dict[int, str]:
    store = Store(deployment.state / "kdc.db")
    try:
        return {row.key_tag: row.role for row in store.keys(zone) if dnskey_of(row)}
    finally:
        store.close()


def _show_served(lab: Bind9Lab | KnotLab, zone: str, expected: dict[int, str], server: str) -> bool:
    name = dns.name.from_text(zone)
    answers = {}
    for rdtype in (dns.rdatatype.DNSKEY, dns.rdatatype.SOA):
        query = dns.message.make_query(name, rdtype, want_dnssec=True)
        reply = dns.query.tcp(query, lab.host, port=lab.port, timeout=5)
        answers[rdtype] = (
            reply.get_rrset(reply.answer, name, dns.rdataclass.IN, rdtype),
            reply.get_rrset(reply.answer, name, dns.rdataclass.IN, dns.rdatatype.RRSIG, rdtype),
        )
    dnskey = answers[dns.rdatatype.DNSKEY][0]
    if dnskey is None:
        _say("check", f"{server} serves no DNSKEY for {zone}")
        return False
    _say("check", f"{server} serves for {zone}:")
    served = set()
    for rdata in dnskey:
        tag = dns.dnssec.key_id(rdata)
        served.add(tag)
        role = expected.get(tag, "not from the KDC")
        print(f"          {zone} {dnskey.ttl} IN DNSKEY {rdata.to_text()[:60]}... ; {role} {tag}")
    ok = served == set(expected)
    _say(
        "check",
        f"DNSKEY set {'equals' if ok else 'DIFFERS FROM'} the KDC's keys {sorted(expected)}",
    )
    for rdtype, (rrset, sigs) in answers.items():
        for sig in sigs or []:
            if rrset is None:
                break
            try:
                dns.dnssec.validate_rrsig(rrset, sig, {name: dnskey})
                verdict = "valid"
            except dns.exception.ValidationFailure as exc:
                verdict, ok = f"INVALID ({exc})", False
            what = dns.rdatatype.to_text(rdtype)
            _say("check", f"RRSIG {what} by key {sig.key_tag}: {verdict} (dnspython)")
        if not sigs:
            _say("check", f"no RRSIG over {dns.rdatatype.to_text(rdtype)}")
            ok = False
    return ok


def _show_files(directory: Path, expected: dict[int, str]) -> bool:
    found = {}
    for private in sorted(directory.glob("*.private")):
        key, _ = read_bind_key_pair(private)
        found[key.key_tag] = private.name
        _say("check", f"{private.name} ({expected.get(key.key_tag, 'not from the KDC')})")
    return set(found) == set(expected)
