"""named running as ``bind`` (as Debian runs it) and a KRS running as root: the key files must
end up readable by named, or nothing is published although rndc says all is well."""

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

from krs_lab.bind9 import Bind9Lab
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.dnssec import KeyTiming, generate_key
from tests.adapters.servers import Served, bind9_root

pytestmark = pytest.mark.integration

ZONE = "example.com."

if os.geteuid() != 0:
    pytest.skip("needs root to run named as bind", allow_module_level=True)


@pytest.fixture(params=["bind9.18", "bind9.20"])
def named_as_bind(request: pytest.FixtureRequest) -> Iterator[Bind9Lab]:
    root = Path(tempfile.mkdtemp(prefix="krs-bind9-user-"))
    os.chmod(root, 0o755)
    sysroot = bind9_root(policy=request.param == "bind9.20")
    lab = Bind9Lab(root / "named", [ZONE], user="bind", sysroot=sysroot)
    lab.write_config()
    os.chown(lab.key_directory, *bind_ids(lab))  # as `install -d -o bind -g bind` does
    lab.start()
    yield lab
    lab.stop()
    shutil.rmtree(root, ignore_errors=True)


def bind_ids(lab: Bind9Lab) -> tuple[int, int]:
    """The bind user's uid and gid where this named runs (a root of another release has its
    own)."""
    if lab.sysroot is not None:
        return lab.sysroot.user_ids("bind")
    entry = pwd.getpwnam("bind")
    return entry.pw_uid, entry.pw_gid


def test_key_files_take_the_key_directory_owner_and_named_serves_them(
    named_as_bind: Bind9Lab,
) -> None:
    adapter = Bind9Adapter(named_as_bind.adapter_settings(), zones=[dns.name.from_text(ZONE)])
    ksk, zsk = generate_key(ZONE, 13, 257), generate_key(ZONE, 13, 256)
    now = int(time.time()) - 1
    zone = dns.name.from_text(ZONE)
    timing = KeyTiming(now, now, now)
    adapter.apply(
        zone, KeyPlan(zone, (PlannedKey(ksk, "KSK", timing), PlannedKey(zsk, "ZSK", timing)))
    )

    for path in named_as_bind.key_directory.iterdir():
        if path.suffix == ".state":  # named's own (9.20), rewritten as it settles
            continue
        info = path.stat()
        assert (info.st_uid, info.st_gid) == bind_ids(named_as_bind), path
        expected = 0o600 if path.suffix == ".private" else 0o644
        assert info.st_mode & 0o777 == expected, path
    served = Served(named_as_bind.host, named_as_bind.port, ZONE)
    assert served.tags == {ksk.key_tag, zsk.key_tag} and served.soa_signers == {zsk.key_tag}
