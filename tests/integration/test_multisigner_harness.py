"""The multi-signer harness of issue 22 proves itself with rollovers pushed by hand: a ZSK
rollover with RFC 7583's waits, every node confirming each step, gives a validating Unbound no
SERVFAIL; the same rollover without the waits makes it answer SERVFAIL (krs_lab.multisigner)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from krs_lab.deployment import wait_until
from krs_lab.multisigner import MultiSigner, Prober
from krs_lab.process import server_binary

pytestmark = pytest.mark.skipif(
    any(server_binary(b) is None for b in ("named", "knotd", "nsd", "pdns_server", "unbound")),
    reason="needs named, knotd, nsd, pdns_server and unbound (./run setup)",
)

T_PROP = 20  # allowance for a distribution to reach the four nodes, under a loaded test host


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MultiSigner]:
    """The whole lab; Unbound's cache-max-ttl is the test's parameter (6 s by default)."""
    lab = MultiSigner(tmp_path, cache_max_ttl=getattr(request, "param", 6))
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


def zsk_and_ksk(lab: MultiSigner) -> tuple[int, int]:
    keys = lab.keys()
    (zsk,) = [t for t, k in keys.items() if k["role"] == "ZSK"]
    (ksk,) = [t for t, k in keys.items() if k["role"] == "KSK"]
    return zsk, ksk


def prime(prober: Prober) -> None:
    wait_until(lambda: prober.counts["NOERROR"] >= 5, 10, "five validated answers")


def every_server_serves(lab: MultiSigner, tags: set[int]) -> None:
    served = lab.served()
    assert {name: set(s.tags) for name, s in served.items()} == dict.fromkeys(served, tags)


def test_careful_zsk_rollover_gives_the_validating_resolver_no_servfail(lab: MultiSigner) -> None:
    prober = lab.start_prober()
    prime(prober)
    old, ksk = zsk_and_ksk(lab)
    t_dnskey, t_max = lab.waits()
    began = time.monotonic()

    # 1. publish NEW, signing only after T_prop + T_dnskey
    out = lab.kdc_json(
        "key",
        "generate",
        "--zone",
        "child.lab.example.",
        "--role",
        "ZSK",
        "--activate-after",
        f"{T_PROP + t_dnskey}s",
    )
    new = int(out["key_tag"])
    took = lab.distribute()
    assert took < T_PROP, f"the distribution took {took:.1f}s, more than T_prop"
    every_server_serves(lab, {ksk, old, new})
    activate_at = lab.keys()[new]["activate_at"]
    assert time.time() + t_dnskey <= activate_at
    wait_until(lambda: time.time() > activate_at + 1, T_PROP + t_dnskey + 5, "NEW's activation")
    signing = {name: sorted(s.probe_signers) for name, s in lab.served().items()}
    print(f"after NEW's activate time, {old} -> {new}, the signers of the probed name: {signing}")

    # 2. retire OLD; every server signs with NEW; then T_max more
    lab.kdc("key", "retire", "--zone", "child.lab.example.", "--tag", str(old))
    lab.distribute()
    wait_until(
        lambda: all(new in s.soa_signers and new in s.probe_signers for s in lab.served().values()),
        60,
        lambda: f"every server to sign with {new}: {lab.served()}",
    )
    time.sleep(t_max + 1)

    # 3. remove OLD
    lab.kdc("key", "remove", "--zone", "child.lab.example.", "--tag", str(old))
    lab.distribute()
    every_server_serves(lab, {ksk, new})
    for name, served in lab.served().items():
        assert old not in served.soa_signers | served.probe_signers, name
    duration = time.monotonic() - began
    time.sleep(t_dnskey + 1)
    prober.stop()

    print(
        f"careful rollover: {duration:.1f}s, T_dnskey {t_dnskey}s, T_max {t_max}s, "
        f"answers {dict(prober.counts)}"
    )
    assert prober.counts["SERVFAIL"] == 0, (prober.servfails, lab.unbound_log()[-3000:])
    assert prober.counts["NOERROR"] >= duration * 2  # the prober kept asking throughout


@pytest.mark.parametrize("lab", [30], indirect=True)
def test_careless_zsk_rollover_makes_the_validating_resolver_answer_servfail(
    lab: MultiSigner,
) -> None:
    prober = lab.start_prober()
    prime(prober)
    old, _ = zsk_and_ksk(lab)
    lab.kdc("key", "generate", "--zone", "child.lab.example.", "--role", "ZSK")
    lab.kdc("key", "remove", "--zone", "child.lab.example.", "--tag", str(old), "--force")
    # Unbound must hold the DNSKEY set without NEW for a while yet: taken from Knot or
    # PowerDNS it lives 2 s (the zone's TTL), from BIND or NSD the cap, 30 s.
    wait_until(lambda: lab.cached_dnskey_ttl() >= 20, 60, "a DNSKEY set cached for 20 s")
    lab.distribute()
    time.sleep(5)
    prober.stop()

    print(
        f"careless rollover: answers {dict(prober.counts)}, first SERVFAILs {prober.servfails[:3]}"
    )
    assert prober.counts["SERVFAIL"] >= 1, lab.unbound_log()[-3000:]
