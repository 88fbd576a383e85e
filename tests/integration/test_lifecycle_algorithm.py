"""Issue 23's "An algorithm rollover across the four servers with zero SERVFAIL": the child on
BIND, Knot, NSD and PowerDNS behind a validating Unbound (krs_lab.multisigner), its parent the
lab's pushable parent and the KDC told where it is by ``krs-kdc parent set``. After the first
keys (algorithm 13) and their DS, pushed and seen by the KDC itself, ``krs-kdc policy set P
--algorithm 15`` is the only command: the engine rolls every key to algorithm 15 (RFC 6781
4.1.4; docs/lifecycle.md, "Algorithm rollover"). At every step the engine records as served,
each server is read directly: it must serve exactly the DNSKEYs, signers and CDS the KDC's
records expect (the gate's own ``expected``) and what the method's step says (the tables below).
At the end only algorithm-15 keys are served, both parent addresses serve only the new KSK's
DS, the old keys are removed, Unbound validated every answer (no SERVFAIL) and sets AD.

- ``liberal`` on all four (BIND signs only with keys whose DNSKEY it serves): new DNSKEYs and
  signatures together, the DS swap, old DNSKEYs and signatures together.
- ``conservative`` on Knot, NSD and PowerDNS, which sign with a key whose DNSKEY is not
  published: step 1 serves no algorithm-15 DNSKEY but SOA RRSIGs by the new ZSK (algorithm 15),
  step 4 the old ZSK's signatures with its DNSKEY gone.
- ``conservative`` with BIND among the nodes holds at step 1, BIND's node named in ``krs-kdc
  status`` (its adapter refuses the step).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import pytest
from test_lifecycle_fleet import TIMING, options
from test_lifecycle_parent import ParentRun

from krs_lab.deployment import wait_until
from krs_lab.multisigner import CHILD, SERVERS, MultiSigner, Served
from krs_lab.process import server_binary
from krs_plugin.kdc.enginestate import EngineState
from krs_plugin.kdc.methods import algorithm_steps
from krs_plugin.kdc.policy import Policy
from krs_plugin.kdc.records import expected, settles_at
from krs_plugin.kdc.store import Store

pytestmark = pytest.mark.skipif(
    any(server_binary(b) is None for b in ("named", "knotd", "nsd", "pdns_server", "unbound")),
    reason="needs named, knotd, nsd, pdns_server and unbound (./run setup)",
)

# test_lifecycle_fleet's TTLs of seconds (DNSKEY TTL 2 s, Dsgn 5 s, safeties 2 s, the DS 2 + 1 s)
# and no rollover by lifetime: only the algorithm changes.
BASE = TIMING.changed(zsk_lifetime=0, ksk_lifetime=0)
OLD_ALG, NEW_ALG = 13, 15
# Sign with a key whose DNSKEY is not published (BIND cannot: the last test).
UNSIGNED_SERVERS = ("knot", "nsd", "powerdns")

# What every server serves at each step, by the rollover's keys: DNSKEYs, SOA signers, CDS.
K0, Z0, K1, Z1 = "old:KSK", "old:ZSK", "new:KSK", "new:ZSK"
BOTH = {K0, Z0, K1, Z1}
SERVES: dict[str, list[tuple[set[str], set[str], set[str]]]] = {
    "liberal": [
        (BOTH, {Z0, Z1}, set()),  # 1 the new DNSKEYs and signatures
        (BOTH, {Z0, Z1}, {K1}),  # 2 the DS swap: the new KSK's CDS
        ({K1, Z1}, {Z1}, set()),  # 3 the old DNSKEYs and signatures gone
    ],
    "conservative": [
        ({K0, Z0}, {Z0, Z1}, set()),  # 1 the new ZSK signs, its DNSKEY not published
        (BOTH, {Z0, Z1}, set()),  # 2 the new DNSKEYs
        (BOTH, {Z0, Z1}, {K1}),  # 3 the DS swap
        ({K1, Z1}, {Z0, Z1}, set()),  # 4 the old DNSKEYs gone, the old ZSK still signs
        ({K1, Z1}, {Z1}, set()),  # 5 the old signatures gone
    ],
}


@dataclass
class AlgorithmRun(ParentRun):
    """The parent test's loop (the KDC pushes and sees the DS itself); the test only releases
    the parent's secondary after each push. Each step-served: every server read and compared
    with the KDC's records and with ``SERVES``."""

    method: str = "liberal"
    released: int = 0  # ds-pushed entries whose DS the parent's secondary was given
    rollover: dict[str, int] = field(default_factory=dict)  # "old:KSK" -> tag, ...
    served_at: dict[tuple[str, int], dict[str, Served]] = field(default_factory=dict)

    def poll(self) -> None:
        super().poll()
        pushed = self.events("ds-pushed")
        for entry in pushed[self.released :]:
            self.lab.release_pushed(entry["detail"]["ds"])
            self.released += 1

    def check_served(self, entry: dict[str, Any]) -> None:
        started = self.events("rollover-started")
        role = str(started[-1]["detail"]["role"]) if started else "?"
        step = int(entry["detail"]["step"])
        if role == "algorithm":
            self.rollover = {k: int(v) for k, v in started[-1]["detail"]["keys"].items()}
        before = self.records()
        served = self.lab.served()
        lag = time.time() - entry["at"]
        if self.records() != before:
            self.problems.append(f"{role} step {step}: next step too soon")
            return
        want = expected(CHILD, before.values(), BASE.dnskey_ttl, compare_cds=True)
        assert want.cds is not None
        cds: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        if want.cds:
            cds = self.lab.kdc_cds({t for t, _ in want.cds})
        dnskeys = {(t, a) for t, a, _ in want.dnskeys}
        ever = set(before)  # every key of the zone, removed ones too
        for name, s in served.items():
            where = f"{role} step {step}, {name}"
            wrong = []
            if s.dnskeys != dnskeys:
                wrong.append(f"DNSKEY {sorted(s.dnskeys)}, KDC {sorted(dnskeys)}")
            if s.soa_signers != want.soa_signers:
                wrong.append(f"SOA signed by {sorted(s.soa_signers)}, KDC {want.soa_signers}")
            if (
                not want.dnskey_signers
                <= s.dnskey_signers
                <= (want.dnskey_signers | want.optional_dnskey_signers)
            ):
                wrong.append(f"DNSKEY signed by {sorted(s.dnskey_signers)}, KDC {want}")
            if not want.soa_signers <= s.probe_signers <= ever:
                wrong.append(f"probed name signed by {sorted(s.probe_signers)}")
            if (s.cds, s.cdnskey) != cds:
                wrong.append(f"CDS {sorted(s.cds)}, CDNSKEY {sorted(s.cdnskey)}, KDC {cds}")
            if s.dnskey_ttl != BASE.dnskey_ttl:
                wrong.append(f"DNSKEY TTL {s.dnskey_ttl}")
            if role == "algorithm":
                wrong += self.method_says(step, s)
            self.problems += [f"{where}: {w}" for w in wrong]
        self.checked.append((role, step, lag))
        self.served_at[(role, step)] = served

    def method_says(self, step: int, s: Served) -> list[str]:
        """What the method's step serves (SERVES), by the rollover's old and new keys."""
        keys, signers, cds = SERVES[self.method][step - 1]
        tag = self.rollover
        wrong = []
        if s.tags != {tag[k] for k in keys}:
            wrong.append(f"method: DNSKEY {sorted(s.tags)}, step {sorted(keys)}")
        if s.soa_signatures != {(tag[k], NEW_ALG if k.startswith("new") else OLD_ALG)
                                for k in signers}:  # fmt: skip
            wrong.append(f"method: SOA RRSIGs {sorted(s.soa_signatures)}, step {sorted(signers)}")
        if bool(s.cds) != bool(cds):
            wrong.append(f"method: CDS {sorted(s.cds)}, step {sorted(cds)}")
        return wrong

    def records(self) -> dict[int, Any]:
        """The KDC's record states of the child's keys (kdc.db, read-only), by tag."""
        store = Store.reader(self.lab.state / "kdc.db")
        try:
            return {r.key_tag: r for r in EngineState(store).key_records(CHILD)}
        finally:
            store.db.close()


def minimum(policy: Policy, method: str) -> list[int]:
    """Each step's wait (docs/lifecycle.md, "The waits"; benchmarks/lifecycle.py's
    step_minimum): the largest of its records', every node confirming at once and the parent
    seen at once."""
    return [
        max(settles_at(c.record, c.to, since=0, policy=policy, dnskey_ttl=policy.dnskey_ttl)
            for c in step.changes)
        for step in algorithm_steps(("KSK", "ZSK"), policy.cds, method)
    ]  # fmt: skip


@contextlib.contextmanager
def running(
    tmp_path: Path, policy: Policy, servers: Sequence[str], pushable_parent: bool = True
) -> Iterator[MultiSigner]:
    lab = MultiSigner(
        tmp_path,
        policy=options(policy),
        serve_options=(
            "--resend-after", "5s", "--parent-check-interval", "1s", "--parent-check-max", "2s",
        ),
        pushable_parent=pushable_parent,
        servers=servers,
        bind_algorithms=("ecdsap256sha256", "ed25519"),  # 9.20's keys clause: 13 and 15
    )  # fmt: skip
    try:
        lab.start()
        yield lab
    finally:
        lab.close()


def roll_the_algorithm(lab: MultiSigner, method: str) -> AlgorithmRun:
    """The first DS pushed and seen, then ``policy set --algorithm 15`` and the engine's
    algorithm rollover to its end, every step checked; the end state asserted; the numbers
    printed."""
    parent = lab.lab_parent
    assert parent is not None
    began = time.monotonic()
    run = AlgorithmRun(lab, method=method)
    prober = lab.start_prober()
    wait_until(lambda: prober.counts["NOERROR"] >= 5, 10, "five answers (insecure delegation)")
    lab.watch_parent()
    run.until(
        lambda: any(
            e["event"] == "record-settled" and e["detail"].get("record") == "ds"
            and e["detail"].get("state") == "omnipresent"
            for e in run.history
        ),
        60,
        "the first DS pushed, seen at both parent addresses and settled",
    )  # fmt: skip
    wait_until(lambda: lab.resolve(want_ad=True).flags & dns.flags.AD, 20, "a validated answer")
    first = time.monotonic()
    old = {k["role"]: t for t, k in lab.keys().items() if k["state"] == "active"}
    assert {lab.keys()[t]["algorithm"] for t in old.values()} == {OLD_ALG}

    asked = time.time()
    lab.kdc("policy", "set", "lab", "--algorithm", str(NEW_ALG))
    run.until(lambda: run.rollover_role() == "algorithm", 30, "the algorithm rollover started")
    started = run.events("rollover-started")[-1]
    assert started["detail"]["method"] == method, started
    run.rollover = {k: int(v) for k, v in started["detail"]["keys"].items()}
    assert {run.rollover["old:KSK"], run.rollover["old:ZSK"]} == set(old.values())
    waits = minimum(BASE.changed(algorithm_method=method), method)
    run.until(
        lambda: "algorithm" in [e["detail"]["role"] for e in run.events("rollover-done")],
        sum(waits) + 60,
        f"the {method} algorithm rollover done",
    )
    prober.stop()

    # --- the end: algorithm 15 only, everywhere -------------------------------------------
    tag = run.rollover
    keys = lab.keys()
    assert {t: keys[t]["state"] for t in tag.values()} == {
        tag[K0]: "removed", tag[Z0]: "removed", tag[K1]: "active", tag[Z1]: "active",
    }, keys  # fmt: skip
    for name, s in lab.served().items():
        assert s.dnskeys == {(tag[K1], NEW_ALG), (tag[Z1], NEW_ALG)}, (name, s)
        assert s.soa_signatures == {(tag[Z1], NEW_ALG)}, (name, s)
        assert s.probe_signers == {tag[Z1]}, (name, s)
        assert (s.cds, s.cdnskey) == (frozenset(), frozenset()), (name, s)
    new_ds = {line.split(" DS ", 1)[1] for line in lab.child_ds(tags={tag[K1]})}
    assert {int(d.split()[1]) for d in new_ds} == {NEW_ALG}
    for address in parent.addresses:
        assert parent.ds_at(address) == new_ds, address
    wait_until(lambda: lab.resolve(want_ad=True).flags & dns.flags.AD, 20, "validated at the end")
    for entry in run.history:
        if entry["event"] in ("ds-seen", "ds-gone"):
            assert entry["cause"].startswith("parent: "), entry
    assert run.problems == [], run.problems
    steps = len(SERVES[method])
    assert [s for r, s, _ in run.checked if r == "algorithm"] == list(range(1, steps + 1))

    # --- the numbers ------------------------------------------------------------------------
    at = started["at"]
    begun = [e for e in run.events("step-begun") if e["at"] >= at]
    served = [e for e in run.events("step-served") if e["at"] >= at]
    done = [e for e in run.events("step-done") if e["at"] >= at]
    lines = []
    for i in range(steps):
        lines.append(
            f"step {i + 1} ({begun[i]['detail']['does']}): {done[i]['at'] - begun[i]['at']}s "
            f"(served after {served[i]['at'] - begun[i]['at']}s) vs its wait {waits[i]}s"
        )
    ds = next(i for i in range(steps) if "parent" in begun[i]["detail"]["does"])
    pushed, seen = run.at("ds-pushed"), run.at("ds-seen")
    lines[ds] += (
        f"; CDS served -> DS pushed {pushed - served[ds]['at']}s -> seen at both parent "
        f"addresses {seen - pushed}s -> done {done[ds]['at'] - seen}s"
    )
    total = run.events("rollover-done")[-1]["at"] - at
    print(f"{method} algorithm rollover on {', '.join(lab.server_names)}:")
    print("\n".join(f"  {line}" for line in lines))
    print(
        f"  total {total}s (policy set -> started {at - int(asked)}s) vs minimum {sum(waits)}s "
        f"(the steps' waits {waits}); lab up -> first DS settled {first - began:.0f}s"
    )
    print(
        f"  answers {dict(prober.counts)} in {time.monotonic() - began:.0f}s; SERVFAIL "
        f"{prober.counts['SERVFAIL']}; steps checked on every server "
        f"{[(r, s) for r, s, _ in run.checked]}, read at most "
        f"{max(lag for r, _, lag in run.checked if r == 'algorithm'):.1f}s after step-served"
    )
    assert prober.counts["SERVFAIL"] == 0, (prober.servfails, lab.unbound_log()[-3000:])
    assert prober.counts["NOERROR"] >= (time.monotonic() - began) * 3
    return run


def test_a_liberal_algorithm_rollover_on_four_servers_without_servfail(tmp_path: Path) -> None:
    with running(tmp_path, BASE.changed(algorithm_method="liberal"), SERVERS) as lab:
        roll_the_algorithm(lab, "liberal")


def test_a_conservative_algorithm_rollover_signs_before_it_publishes(tmp_path: Path) -> None:
    policy = BASE.changed(algorithm_method="conservative")
    with running(tmp_path, policy, UNSIGNED_SERVERS) as lab:
        run = roll_the_algorithm(lab, "conservative")
    tag = run.rollover
    # Step 1: no algorithm-15 DNSKEY, the SOA signed by the new ZSK with algorithm 15 (and the
    # old); step 4: the old ZSK's DNSKEY gone, its signatures still served.
    for name, s in run.served_at[("algorithm", 1)].items():
        assert all(alg == OLD_ALG for _, alg in s.dnskeys), (name, s)
        assert (tag[Z1], NEW_ALG) in s.soa_signatures, (name, s)
    for name, s in run.served_at[("algorithm", 4)].items():
        assert tag[Z0] not in s.tags and (tag[Z0], OLD_ALG) in s.soa_signatures, (name, s)


def test_a_conservative_algorithm_rollover_holds_at_step_1_naming_bind(tmp_path: Path) -> None:
    """BIND cannot sign with a key whose DNSKEY is not published: its adapter refuses step 1,
    the step holds (no timeout turns it into success) and ``krs-kdc status`` names the node.
    Its server goes on serving the old keys; no parent needed (the delegation stays insecure)."""
    policy = BASE.changed(algorithm_method="conservative")
    with running(tmp_path, policy, SERVERS, pushable_parent=False) as lab:
        prober = lab.start_prober()
        run = AlgorithmRun(lab, method="conservative")
        run.poll()
        old = {t for t, k in lab.keys().items() if k["state"] == "active"}
        lab.kdc("policy", "set", "lab", "--algorithm", str(NEW_ALG))
        bind = lab.node_id("bind9")
        run.until(
            lambda: (
                run.rollover_role() == "algorithm" and bind in (run.status.get("lagging") or {})
            ),
            60,
            "step 1 held by BIND",
        )
        held = time.monotonic()
        run.until(lambda: time.monotonic() - held > 10, 20, "10 s held")
        text = lab.kdc("status", "--zone", CHILD)
        served = lab.served()
        prober.stop()
    print(text)
    print(f"held 10 s at step 1: lagging {run.status['lagging']}; answers {dict(prober.counts)}")
    assert run.status["step"].startswith("1 of 5"), run.status
    assert run.events("step-served")[-1]["at"] < run.events("rollover-started")[-1]["at"]
    assert "liberal" in run.status["lagging"][bind], run.status
    assert bind in text and "liberal" in text, text
    assert served["bind9"].tags == old and served["bind9"].soa_signers <= old, served["bind9"]
    assert prober.counts["SERVFAIL"] == 0, (prober.servfails, lab.unbound_log()[-3000:])
