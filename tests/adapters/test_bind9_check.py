"""``check()`` of the BIND 9 adapter against a real named 9.18: what an operator is told (and what
``krs doctor`` prints) when the server cannot take pushed keys. (9.20: test_bind9_policy.py.)
named 9.18 runs from the host's packages on Debian 12, from the bookworm root elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dns.name
import pytest

from krs_lab.bind9 import Bind9Lab
from krs_lab.ports import free_port
from krs_plugin.adapters.base import KeyPlan
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.errors import AdapterError
from tests.adapters.servers import bind9_root

pytestmark = pytest.mark.integration

ZONES = ("good.example.", "plain.example.", "policy.example.")


@pytest.fixture
def named(tmp_path: Path) -> Iterator[Bind9Lab]:
    lab = Bind9Lab(
        tmp_path / "named",
        ZONES,
        signed_zones=("good.example.",),
        policy_zones=("policy.example.",),
        sysroot=bind9_root(policy=False),
    )
    lab.start()
    yield lab
    lab.stop()


def adapter(lab: Bind9Lab, *zones: str, **changes: object) -> Bind9Adapter:
    settings = {**lab.adapter_settings(), **changes}
    return Bind9Adapter(settings, zones=[dns.name.from_text(z) for z in zones])


def test_a_zone_set_up_for_external_keys_passes(named: Bind9Lab) -> None:
    assert adapter(named, "good.example.").check() == []


def test_zone_under_dnssec_policy_is_refused_with_the_reason(named: Bind9Lab) -> None:
    problems = adapter(named, "policy.example.").check()
    assert len(problems) == 1
    assert "dnssec-policy" in problems[0].what and "auto-dnssec maintain" in problems[0].fix
    zone = dns.name.from_text("policy.example.")
    with pytest.raises(AdapterError, match="dnssec-policy"):
        adapter(named, "policy.example.").apply(zone, KeyPlan(zone))


def test_zone_without_signing_is_reported(named: Bind9Lab) -> None:
    problems = adapter(named, "plain.example.").check()
    assert [p.what for p in problems] == [
        "zone plain.example. is not set up for signing with external keys"
    ]


def test_zone_not_in_named_conf_is_reported(named: Bind9Lab) -> None:
    problems = adapter(named, "absent.example.").check()
    assert len(problems) == 1 and "does not serve zone absent.example." in problems[0].what


def test_unreachable_control_channel_is_reported(named: Bind9Lab) -> None:
    settings = named.adapter_settings()
    settings["rndc"] = {**settings["rndc"], "port": free_port(), "timeout": 3}
    problems = Bind9Adapter(settings).check()
    assert len(problems) == 1 and "control channel does not answer" in problems[0].what


def test_named_stopped_during_apply_is_said_to_be_down_not_the_zone_missing(
    named: Bind9Lab,
) -> None:
    # The named version is cached for a minute: the first rndc call of the apply after named
    # stopped is the zone's status, whose failure must not read as "BIND does not serve zone".
    node = adapter(named, "good.example.")
    assert node.version() >= (9, 16)
    named.stop()
    with pytest.raises(AdapterError) as failure:
        node.apply(
            dns.name.from_text("good.example."), KeyPlan(dns.name.from_text("good.example."))
        )
    message = str(failure.value)
    assert "named does not answer on its control channel" in message, message
    assert "does not serve zone" not in message and "nothing was changed" in message


def test_missing_key_directory_is_reported(named: Bind9Lab, tmp_path: Path) -> None:
    problems = adapter(named, key_directory=str(tmp_path / "nowhere")).check()
    assert [p.what for p in problems] == [f"key directory {tmp_path / 'nowhere'} does not exist"]
