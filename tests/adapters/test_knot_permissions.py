"""knotd running as ``knot`` (as Debian runs it) and a KRS running as root: keymgr switches to
knotd's user before it opens a key, so the staged PEM must be that user's, or the import fails
with Knot's misleading "not exists" (docs/servers/knot.md)."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.name
import pytest

from krs_lab.knot import KnotLab
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.knot import KnotAdapter
from krs_plugin.dnssec import KeyTiming, generate_key
from tests.adapters.servers import Served

pytestmark = pytest.mark.integration

ZONE = "example.com."

if os.geteuid() != 0:
    pytest.skip("needs root to run knotd as knot", allow_module_level=True)


@pytest.fixture
def knot_as_knot() -> Iterator[KnotLab]:
    root = Path(tempfile.mkdtemp(prefix="krs-knot-user-"))
    os.chmod(root, 0o755)
    lab = KnotLab(root / "knot", [ZONE], user="knot")
    lab.start()
    yield lab
    lab.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_keys_imported_as_root_are_knots_and_served(knot_as_knot: KnotLab) -> None:
    zone = dns.name.from_text(ZONE)
    adapter = KnotAdapter(knot_as_knot.adapter_settings(), zones=[zone])
    assert adapter.check() == []
    ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    now = int(time.time()) - 1
    timing = KeyTiming(now, now, now)
    adapter.apply(
        zone, KeyPlan(zone, (PlannedKey(ksk, "KSK", timing), PlannedKey(zsk, "ZSK", timing)))
    )
    knot = pwd.getpwnam("knot")
    pems = list((knot_as_knot.kasp_db / "keys").glob("*.pem"))
    assert len(pems) == 2
    for pem in pems:
        assert pem.stat().st_uid == knot.pw_uid and pem.stat().st_mode & 0o077 == 0, pem
    served = Served(knot_as_knot.host, knot_as_knot.port, ZONE)
    assert served.tags == {ksk.key_tag, zsk.key_tag}
    assert served.soa_signers == {zsk.key_tag} and served.dnskey_signers == {ksk.key_tag}
    assert not list(Path(tempfile.gettempdir()).glob("krs-knot-*/key.pem"))  # staging removed
