"""One distribution for many zones, on the real servers (issue 24, item 4; docs/adapters.md,
"Many zones at once"): ``apply_atomically`` hands the whole batch to ``apply_batch``, and each
server is told once where it allows (one ``knotc`` call for all zones, one ``nsd-control
reload``, one PowerDNS cache flush; BIND has no command for all zones: one ``rndc loadkeys`` per
zone and nothing more, and named.conf read once). Counted with the server's own log or with a
wrapper that notes each run of the real control tool. Every zone is then asked over DNS, every
RRSIG validated with dnspython.

And all or nothing still holds for a batch: one zone that fails after the others were written
and loaded puts every zone back, and every zone serves its previous keys.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.name
import pytest

from krs_lab.bind9 import Bind9Lab
from krs_lab.knot import KnotLab
from krs_lab.nsd import NsdLab
from krs_lab.powerdns import PowerDnsLab
from krs_lab.process import server_binary
from krs_plugin.adapters.base import Adapter, KeyPlan, PlannedKey
from krs_plugin.adapters.registry import adapter_class
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key
from krs_plugin.errors import AdapterError
from tests.adapters.servers import Served, bind9_root

pytestmark = pytest.mark.integration

COUNT = 50
ZONES = tuple(f"z{i:03d}.bulk.example." for i in range(COUNT))
BAD = ZONES[COUNT // 2]  # in the middle: zones before it are written and loaded when it fails
Lab = Bind9Lab | KnotLab | NsdLab | PowerDnsLab


@dataclass
class Bulk:
    """A running server with ``ZONES``, how to make its adapter, and the control-tool calls
    counted so far (``calls``: one line per run of a wrapped tool, its arguments)."""

    name: str
    lab: Lab
    root: Path
    settings: dict[str, Any]

    def adapter(self, **settings: Any) -> Adapter:
        kind = "bind9" if self.name.startswith("bind9") else self.name
        names = [dns.name.from_text(z) for z in ZONES]
        return adapter_class(kind)({**self.settings, **settings}, zones=names)

    @property
    def calls_log(self) -> Path:
        return self.root / "calls.log"

    def calls(self, word: str) -> list[str]:
        """The wrapped tools' runs whose arguments contain ``word``."""
        if not self.calls_log.exists():
            return []
        return [line for line in self.calls_log.read_text().splitlines() if word in line.split()]

    def counting(self, name: str, real: str) -> str:
        """A wrapper that notes each run of ``real`` (its arguments) and then runs it."""
        script = self.root / "bin" / name
        script.parent.mkdir(exist_ok=True)
        log = shlex.quote(str(self.calls_log))
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\nexec {shlex.quote(real)} "$@"\n')
        script.chmod(0o755)
        return str(script)


def bind9_lab(root: Path, policy: bool) -> Bulk:
    lab = Bind9Lab(root / "server", ZONES, sysroot=bind9_root(policy=policy))
    lab.start()
    bulk = Bulk("bind9", lab, root, {})
    settings = lab.adapter_settings()
    real_rndc = settings["rndc"].get("binary") or server_binary("rndc") or "rndc"
    real_checkconf = settings.get("named_checkconf") or server_binary("named-checkconf") or ""
    settings["rndc"]["binary"] = bulk.counting("rndc", real_rndc)
    settings["named_checkconf"] = bulk.counting("named-checkconf", real_checkconf)
    bulk.settings = settings
    return bulk


def knot_lab(root: Path) -> Bulk:
    lab = KnotLab(root / "server", ZONES)
    lab.start()
    bulk = Bulk("knot", lab, root, lab.adapter_settings())
    bulk.settings["knotc"] = bulk.counting("knotc", server_binary("knotc") or "knotc")
    bulk.settings["keymgr"] = bulk.counting("keymgr", server_binary("keymgr") or "keymgr")
    return bulk


def nsd_lab(root: Path) -> Bulk:
    lab = NsdLab(root / "server", ZONES)
    lab.start()
    bulk = Bulk("nsd", lab, root, lab.adapter_settings())
    bulk.settings["control"] = bulk.counting("nsd-control", server_binary("nsd-control") or "")
    return bulk


def powerdns_lab(root: Path) -> Bulk:
    lab = PowerDnsLab(root / "server", ZONES)
    lab.start(timeout=60)
    lab_settings = lab.adapter_settings()
    settings = {k: lab_settings[k] for k in ("api_url", "api_key_file", "server")}
    return Bulk("powerdns", lab, root, {"method": "api", **settings})


LABS: dict[str, Callable[[Path], Bulk]] = {
    "bind9": lambda root: bind9_lab(root, policy=False),
    "bind9-policy": lambda root: bind9_lab(root, policy=True),
    "knot": knot_lab,
    "nsd": nsd_lab,
    "powerdns": powerdns_lab,
}


@pytest.fixture(params=sorted(LABS))
def bulk(request: pytest.FixtureRequest) -> Iterator[Bulk]:
    root = Path(tempfile.mkdtemp(prefix=f"krs-bulk-{request.param}-"))
    os.chmod(root, 0o755)
    server = LABS[request.param](root)
    server.name = "bind9" if request.param.startswith("bind9") else request.param
    try:
        yield server
    finally:
        server.lab.stop()
        shutil.rmtree(root, ignore_errors=True)


def timing() -> KeyTiming:
    now = int(time.time()) - 1
    return KeyTiming(created=now, publish=now, activate=now)


def plan(zone: str, *keys: tuple[DnssecKey, str]) -> KeyPlan:
    return KeyPlan(
        dns.name.from_text(zone), tuple(PlannedKey(k, role, timing()) for k, role in keys)
    )


def key_besides(zone: str, algorithm: int, flags: int, tags: Iterable[int] = ()) -> DnssecKey:
    """A new key whose tag the zone does not have yet, as the KDC makes them (kdc/keygen.py):
    two random keys share a tag once in 65,536, and BIND names key files by tag."""
    taken = set(tags)
    while (key := generate_key(zone, algorithm, flags)).key_tag in taken:
        pass
    return key


def ksk_and_zsk(zone: str) -> tuple[tuple[DnssecKey, str], tuple[DnssecKey, str]]:
    ksk = generate_key(zone, 13, 257)
    return (ksk, "KSK"), (key_besides(zone, 13, 256, [ksk.key_tag]), "ZSK")


def assert_served(bulk: Bulk, keys: dict[str, tuple[int, int]]) -> None:
    """Every zone serves exactly its KSK and ZSK, the DNSKEY RRset signed by the KSK and the
    SOA by the ZSK (validated with dnspython)."""
    wrong = {}
    for zone, (ksk, zsk) in keys.items():
        served = Served(bulk.lab.host, bulk.lab.port, zone)
        if not (
            served.tags == {ksk, zsk} and ksk in served.dnskey_signers and zsk in served.soa_signers
        ):
            wrong[zone] = (served.tags, served.dnskey_signers, served.soa_signers)
    assert wrong == {}, f"{len(wrong)} zone(s) not served as planned: {wrong}"


def apply_first_keys(bulk: Bulk, adapter: Adapter) -> dict[str, tuple[int, int]]:
    """One distribution with a KSK and a ZSK for every zone; their tags by zone."""
    plans, tags = [], {}
    for zone in ZONES:
        ksk, zsk = ksk_and_zsk(zone)
        plans.append(plan(zone, ksk, zsk))
        tags[zone] = (ksk[0].key_tag, zsk[0].key_tag)
    results = apply_atomically(adapter, plans)
    assert [r.zone.to_text() for r in results] == list(ZONES)
    assert all(r.changed and len(r.installed) == 2 for r in results)
    assert all(r.served and not r.served.get("error") for r in results)
    return tags


def test_one_distribution_for_many_zones_tells_the_server_once(bulk: Bulk) -> None:
    adapter = bulk.adapter(verify_timeout=30)
    tags = apply_first_keys(bulk, adapter)
    assert_served(bulk, tags)
    if bulk.name == "knot":
        # one knotc call names every zone (knotd logs the command once per zone it names)
        loads = bulk.calls("zone-reload") + bulk.calls("zone-keys-load")
        assert len(loads) == 1 and all(z in loads[0].split() for z in ZONES)
        assert len(bulk.calls("conf-read")) == 4  # zone, template, policy, database: once
        assert len(bulk.calls("zone-status")) == 1
        # keymgr reads a binary copy of knot.conf made once (docs/servers/knot.md, "keymgr
        # against a copy"), not the text file at every run; the copy is gone afterwards
        assert len(bulk.calls("conf-import")) == 1
        keymgr = [line.split() for line in bulk.calls_log.read_text().splitlines()]
        keymgr = [words for words in keymgr if words[0] == "keymgr"]
        assert len(keymgr) >= 2 * len(ZONES) and all(words[1] == "-C" for words in keymgr)
        assert not any(Path(words[2]).exists() for words in keymgr)
    elif bulk.name == "nsd":
        assert len(bulk.calls("reload")) == 1
        assert bulk.calls("reload")[0].split() == ["nsd-control", "-c", str(bulk.lab.config),
                                                  "reload"]  # fmt: skip
        assert bulk.lab.log().count("control cmd:  reload") == 1
        assert len(bulk.calls("zonestatus")) == 1
    elif bulk.name == "powerdns":
        requests = [line for line in bulk.lab.log().splitlines() if '"PUT /api/v1/' in line]
        flushes = [line for line in requests if "/cache/flush" in line]
        assert len(flushes) == 1
        assert len([line for line in requests if "/rectify" in line]) == COUNT
    else:
        # named has no command for all zones: exactly one loadkeys per zone, no reload, and
        # named.conf read once for the batch (9.20's policy check read it for every zone)
        loadkeys = bulk.calls("loadkeys")
        assert sorted(line.split()[-1] for line in loadkeys) == sorted(ZONES)
        assert not bulk.calls("reload") and not bulk.calls("reconfig")
        assert len(bulk.calls("-px")) <= 1
        # the zones' modes from named.conf and one SOA question each, not two rndc runs each
        assert not bulk.calls("zonestatus")


def test_one_bad_zone_rolls_back_every_zone_of_the_batch(bulk: Bulk) -> None:
    adapter = bulk.adapter(verify_timeout=3)
    first = apply_first_keys(bulk, adapter)
    before = stored(bulk)
    plans = []
    for zone in ZONES:
        zsk = (key_besides(zone, 13, 256, first[zone]), "ZSK")
        plans.append(plan(zone, zsk) if zone != BAD else bad_plan(bulk, zone, first[zone]))
    failing = break_zone(bulk, adapter)
    with pytest.raises(AdapterError) as failure:
        apply_atomically(failing, plans)
    assert stored(bulk) == before
    assert_served(bulk, first)
    message = str(failure.value)
    assert f"zone {BAD}" in message and "rolled back" in message
    assert f"zone {ZONES[0]}: " in message.split("rolled back")[1]  # the others too


def bad_plan(bulk: Bulk, zone: str, tags: tuple[int, int]) -> KeyPlan:
    """The bad zone's part of the distribution: Knot refuses a lone ZSK of an algorithm without
    a KSK (at zone-keys-load, after every other zone was written); PowerDNS makes a key sent as
    a ZSK with a KSK's flags 256 and answers with a DNSKEY other than the one sent (at the key's
    write); elsewhere a ZSK like the others, made to fail by ``break_zone``."""
    if bulk.name == "knot":
        return plan(zone, (key_besides(zone, 15, 256, tags), "ZSK"))
    if bulk.name == "powerdns":
        return plan(zone, (key_besides(zone, 13, 257, tags), "ZSK"))
    return plan(zone, (key_besides(zone, 13, 256, tags), "ZSK"))


def break_zone(bulk: Bulk, adapter: Adapter) -> Adapter:
    """Make ``BAD`` fail after the zones before it were written and loaded; the adapter to
    apply with."""
    if isinstance(bulk.lab, NsdLab):  # the operator's unsigned file breaks: signing fails
        unsigned = bulk.lab.unsigned_file(BAD)
        unsigned.write_text(unsigned.read_text() + "bad IN TYPE65534 \\# 2 00\n")
    elif isinstance(bulk.lab, Bind9Lab):
        if bulk.lab.uses_policy:
            pytest.skip("BIND 9.20 refuses a key directory named does not read before writing")
        # the KRS writes BAD's keys where named does not look: loadkeys succeeds, nothing is
        # served, the verification fails after the others were loaded
        elsewhere = bulk.root / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        return bulk.adapter(verify_timeout=3, key_directories={BAD: str(elsewhere)})
    return adapter


def stored(bulk: Bulk) -> object:
    """What the server keeps about keys, read without the adapter."""
    lab = bulk.lab
    if isinstance(lab, KnotLab):
        return sorted(p.name for p in (lab.kasp_db / "keys").glob("*.pem"))
    if isinstance(lab, PowerDnsLab):
        return {z: sorted(k["tag"] for k in lab.cryptokeys(z)) for z in ZONES}
    folder = lab.key_directory if isinstance(lab, Bind9Lab) else lab.root / "keys"
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.suffix in (".key", ".private")}
    return files
