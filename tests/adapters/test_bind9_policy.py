"""BIND 9.20 (dnssec-policy manual-mode) against a real named 9.20: what ``check()`` tells an
operator for each misconfiguration they can meet, and what ``apply`` refuses before writing.

named 9.20 runs from the host's packages on Debian 13, from the trixie root elsewhere
(lab/krs_lab/sysroot.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.name
import pytest

from krs_lab.bind9 import Bind9Lab, policy_text
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.dnssec import KeyTiming, generate_key
from krs_plugin.errors import AdapterError, ConfigError
from tests.adapters.servers import Served, bind9_root

pytestmark = pytest.mark.integration

GOOD = "good.example."
ZONES = (
    GOOD,
    "plain.example.",  # no dnssec-policy
    "builtin.example.",  # dnssec-policy default
    "auto.example.",  # a policy without manual-mode
    "rolling.example.",  # manual-mode, but a key lifetime
    "elsewhere.example.",  # manual-mode, keys in another directory than the KRS writes
)
ALG13 = (("ksk", "ecdsap256sha256"), ("zsk", "ecdsap256sha256"))


@pytest.fixture
def named(tmp_path: Path) -> Iterator[Bind9Lab]:
    lab = Bind9Lab(
        tmp_path / "named",
        ZONES,
        signed_zones=[z for z in ZONES if z != "plain.example."],
        policy_zones=("builtin.example.",),
        sysroot=bind9_root(policy=True),
        zone_policies={
            "auto.example.": "auto",
            "rolling.example.": "rolling",
            "elsewhere.example.": "elsewhere",
        },
        extra_config=(
            policy_text("auto", ALG13).replace("    manual-mode yes;\n", "")
            + policy_text("rolling", ALG13).replace("unlimited", "P60D")
            + f'key-store "other" {{ directory "{tmp_path}"; }};\n'
            + policy_text("elsewhere", ALG13).replace("key-directory", 'key-store "other"')
        ),
    )
    lab.start()
    assert lab.uses_policy
    yield lab
    lab.stop()


def adapter(lab: Bind9Lab, *zones: str, **changes: object) -> Bind9Adapter:
    settings = {**lab.adapter_settings(), "verify_timeout": 3, **changes}
    return Bind9Adapter(settings, zones=[dns.name.from_text(z) for z in zones])


def files_of(lab: Bind9Lab, zone: str) -> list[str]:
    """The zone's files in the shared key directory (the built-in policy's zone makes keys of
    its own there)."""
    return sorted(p.name for p in lab.key_directory.glob(f"K{zone}+*"))


def problem(lab: Bind9Lab, zone: str, **changes: object) -> tuple[str, str]:
    problems = adapter(lab, zone, **changes).check()
    assert len(problems) == 1, problems
    return problems[0].what, problems[0].fix


def test_a_manual_mode_zone_passes(named: Bind9Lab) -> None:
    assert adapter(named, GOOD).check() == []


def test_zone_without_a_policy_is_told_to_use_one_with_manual_mode(named: Bind9Lab) -> None:
    what, fix = problem(named, "plain.example.")
    assert "not signed by named" in what and "manual-mode" in what
    assert "dnssec-policy" in fix and "manual-mode yes" in fix


def test_builtin_policy_is_refused_because_named_makes_its_own_keys(named: Bind9Lab) -> None:
    what, fix = problem(named, "builtin.example.")
    assert "built-in dnssec-policy default" in what and "keys of its own" in what
    assert "manual-mode" in fix


def test_policy_without_manual_mode_is_refused_before_any_file_is_written(
    named: Bind9Lab,
) -> None:
    what, fix = problem(named, "auto.example.")
    assert "dnssec-policy auto" in what and "no manual-mode" in what
    assert "manual-mode yes;" in fix
    zone = dns.name.from_text("auto.example.")
    ksk = generate_key(zone, 13, 257)
    plan = KeyPlan(zone, (PlannedKey(ksk, "KSK", now_timing()),))
    with pytest.raises(AdapterError, match="no manual-mode"):
        adapter(named, "auto.example.").apply(zone, plan)
    # named made keys of its own for the zone (the reason for the refusal); ours is not there
    assert files_of(named, "auto.example.") != []
    assert not [name for name in files_of(named, "auto.example.") if ksk.basename in name]


def test_key_lifetime_is_refused_because_named_would_roll_the_kdcs_key(named: Bind9Lab) -> None:
    what, fix = problem(named, "rolling.example.")
    assert "lifetime" in what and "lifetime unlimited" in fix


def test_key_store_elsewhere_than_the_krs_writes_is_reported(named: Bind9Lab) -> None:
    what, fix = problem(named, "elsewhere.example.")
    assert f"looks for its ksk files in {named.root.parent}" in what
    assert str(named.key_directory) in what and "key_directory" in fix


def test_a_named_conf_that_is_not_a_file_is_refused_when_the_adapter_is_configured(
    named: Bind9Lab, tmp_path: Path
) -> None:
    """Before issue 21 this surfaced at the first distribution ("cannot read dnssec-policy");
    now krs run, a reload and krs doctor refuse it when krs.yaml is read."""
    with pytest.raises(ConfigError, match=r"named_conf: .*missing\.conf does not exist"):
        adapter(named, GOOD, named_conf=str(tmp_path / "missing.conf"))
    with pytest.raises(ConfigError, match=r"named_conf: .*pytest.* is not a file"):
        adapter(named, GOOD, named_conf=str(tmp_path))


def test_named_conf_edited_without_reconfig_is_reported(named: Bind9Lab, tmp_path: Path) -> None:
    other = tmp_path / "other.conf"
    other.write_text(named.named_conf.read_text().replace('"good.example."', '"x.example."'))
    what, fix = problem(named, GOOD, named_conf=str(other))
    assert "has no zone good.example." in what and "rndc reconfig" in fix


def now_timing(**changes: int) -> KeyTiming:
    now = int(time.time()) - 1
    return KeyTiming(**{"created": now, "publish": now, "activate": now, **changes})


@pytest.mark.parametrize(
    ("algorithm", "role", "fix"),
    [
        (15, "KSK", "'ksk key-directory lifetime unlimited algorithm 15;'"),
        (13, "CSK", "'csk key-directory lifetime unlimited algorithm 13;'"),
        (8, "KSK", "'ksk key-directory lifetime unlimited algorithm 8 2048;'"),
    ],
)
def test_key_the_policy_does_not_name_is_refused_with_the_line_to_add(
    named: Bind9Lab, algorithm: int, role: str, fix: str
) -> None:
    zone = dns.name.from_text(GOOD)
    key = generate_key(zone, algorithm, 257)
    with pytest.raises(AdapterError) as refused:
        adapter(named, GOOD).apply(zone, KeyPlan(zone, (PlannedKey(key, role, now_timing()),)))
    assert f"key {key.key_tag} ({role}, algorithm {algorithm}" in str(refused.value)
    assert "matches no entry of dnssec-policy krs" in str(refused.value)
    assert fix in str(refused.value)
    assert files_of(named, GOOD) == []
    assert Served(named.host, named.port, GOOD).tags == set()


def test_lone_zsk_is_refused_because_named_920_would_leave_dnskey_unsigned(
    named: Bind9Lab,
) -> None:
    zone = dns.name.from_text(GOOD)
    zsk = generate_key(zone, 13, 256)
    with pytest.raises(AdapterError, match="no active KSK or CSK of algorithm 13"):
        adapter(named, GOOD).apply(zone, KeyPlan(zone, (PlannedKey(zsk, "ZSK", now_timing()),)))
    assert files_of(named, GOOD) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run named as bind")
def test_key_directory_named_cannot_enter_is_reported_by_named_itself() -> None:
    # 9.18 could not tell (loadkeys "succeeds", nothing is published); 9.20 answers the key
    # state query with "permission denied", so the zone is refused before any file is written.
    # Not tmp_path: named as bind must reach its directory, and pytest's base is 0700 root.
    top = Path(tempfile.mkdtemp(prefix="krs-bind9-perm-"))
    os.chmod(top, 0o755)
    lab = Bind9Lab(top / "named", [GOOD], sysroot=bind9_root(policy=True), user="bind")
    try:
        lab.start()
        what, fix = problem(lab, GOOD)
        assert "cannot tell the key state" in what and "permission denied" in what
        assert "key directory" in fix
    finally:
        lab.stop()
        shutil.rmtree(top, ignore_errors=True)
