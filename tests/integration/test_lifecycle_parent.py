"""Issue 23's "Must show" on four real servers: the child on BIND, Knot, NSD and PowerDNS behind a
validating Unbound, its parent the lab's pushable parent (krs_lab/parent.py: Knot taking TSIG
UPDATEs, an NSD secondary held back until released), the KDC told where the parent is by
``krs-kdc parent set`` and nothing else. The zone gets a policy and no command: its first keys,
their DS pushed and seen at both parent addresses, then a KSK rollover by lifetime whose DS step
first publishes the new KSK's CDS/CDNSKEY on all four servers (read here directly: identical,
the new KSK's only), pushes the DS and holds while the secondary lags, named in ``krs-kdc
status``, until the test (playing the parent's slowness) releases it. Unbound answers every probe
without SERVFAIL throughout (docs/lifecycle.md, "The parent")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import pytest
from test_lifecycle_fleet import TIMING, Run, durations, options

from krs_lab.deployment import wait_until
from krs_lab.multisigner import CHILD, MultiSigner, Served
from krs_lab.parent import LabParent
from krs_lab.process import server_binary

pytestmark = pytest.mark.skipif(
    any(server_binary(b) is None for b in ("named", "knotd", "nsd", "pdns_server", "unbound")),
    reason="needs named, knotd, nsd, pdns_server and unbound (./run setup)",
)

# test_lifecycle_fleet's TTLs of seconds, the policy's default cds (rollover), no ZSK rollover;
# the KSK lives 40 s from activation: its rollover starts (40 - Ipub 4 s) after the first keys,
# once their DS has been pushed, seen and settled.
POLICY = TIMING.changed(zsk_lifetime=0, ksk_lifetime=40)
HOLD = 5  # seconds the test keeps the parent's secondary behind at each DS change, at least


class ParentRun(Run):
    """test_lifecycle_fleet's loop (every server read at each step-served) without the parent's
    operator: the KDC pushes the DS and sees it itself."""

    def parent_operator(self) -> None:
        pass

    def parent(self) -> dict[str, Any]:
        """What ``krs-kdc status --json`` says the parent watch last saw ({} if nothing)."""
        return dict(self.status.get("parent") or {})

    def at(self, event: str, index: int = -1) -> int:
        return int(self.events(event)[index]["at"])


STARTED: dict[str, float] = {}  # the lab's start-up, seconds


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[MultiSigner]:
    began = time.monotonic()
    lab = MultiSigner(
        tmp_path,
        policy=options(POLICY),
        serve_options=(
            "--resend-after", "5s", "--parent-check-interval", "1s", "--parent-check-max", "2s",
        ),
        pushable_parent=True,
    )  # fmt: skip
    try:
        lab.start()
        STARTED["lab"] = time.monotonic() - began
        yield lab
    finally:
        lab.close()


def ds_texts(lab: MultiSigner, tags: set[int]) -> set[str]:
    """The DS rdata ("tag alg 2 digest") the parent is to serve for the KSKs ``tags``."""
    return {line.split(" DS ", 1)[1] for line in lab.child_ds(tags=tags)}


def only(tags: set[int]) -> int:
    (tag,) = tags
    return tag


def hold_the_secondary(
    run: ParentRun, parent: LabParent, purpose: str
) -> tuple[float, dict[str, Any], dict[str, Any], str]:
    """The parent's secondary lags: the KDC pushed (``ds-pushed``), looks again and again, and
    names the secondary as what holds ``purpose``; released after HOLD s and 3 looks at least.
    Returns when it was released (monotonic) and, read just before, ``krs-kdc status --json``'s
    zone and parent watch and ``krs-kdc status``'s text."""
    began = time.monotonic()
    run.until(
        lambda: (
            run.parent().get("purpose", "").startswith(purpose)
            and parent.secondary in (run.parent().get("why") or "")
            and run.parent().get("checks", 0) >= 3
            and time.monotonic() - began >= HOLD
        ),
        60,
        f"{purpose} held by {parent.secondary}",
    )
    status, watch = run.status, run.parent()
    text = run.lab.kdc("status", "--zone", CHILD)
    parent.release()
    return time.monotonic(), status, watch, text


def test_first_ds_and_a_ksk_rollover_pushed_and_seen_at_the_parent_on_four_servers(
    lab: MultiSigner,
) -> None:
    parent = lab.lab_parent
    assert parent is not None
    began = time.monotonic()
    run = ParentRun(lab)
    prober = lab.start_prober()
    wait_until(lambda: prober.counts["NOERROR"] >= 5, 10, "five answers (insecure delegation)")
    lab.watch_parent()  # krs-kdc parent set: both addresses, the trust anchor, UPDATE + TSIG
    marks = {"parent set": began}

    # --- the first DS: pushed at once, seen only once the secondary has it ------------------
    run.poll()
    first = {int(t) for t, k in lab.keys().items() if k["role"] == "KSK"}
    run.until(lambda: bool(run.events("ds-pushed")), 30, "the first DS pushed")
    first_ds = ds_texts(lab, first)
    assert parent.ds_at(parent.primary) == first_ds
    assert parent.ds_at(parent.secondary) == set()
    released_first, _, watch, text = hold_the_secondary(run, parent, "first DS")
    assert f"new DS {only(first)}/13/2 not yet at {parent.secondary}" in watch["why"], watch
    assert f"waits for its first DS at the parent: new DS {only(first)}/13/2" in text, text
    assert not run.events("ds-seen"), "the first DS seen while the secondary lacked it"
    marks["first DS released"] = released_first
    run.until(lambda: bool(run.events("ds-seen")), 30, "the first DS seen")
    wait_until(lambda: lab.resolve(want_ad=True).flags & dns.flags.AD, 20, "a validated answer")
    marks["first DS seen"] = time.monotonic()

    # --- the KSK rollover by lifetime: CDS on every node, then the DS pushed, held, seen ----
    run.until(lambda: run.rollover_role() == "KSK", 90, "the KSK rollover by lifetime")
    marks["KSK rollover started"] = time.monotonic()
    started = next(e for e in run.events("rollover-started") if e["detail"]["role"] == "KSK")
    new = int(started["detail"]["keys"]["new"])
    old = only(first)
    assert int(started["detail"]["keys"]["old"]) == old
    # The first DS had settled before: the old KSK's DS is what the rollover withdraws.
    settled = [
        e for e in run.history
        if e["event"] == "record-settled" and e["detail"] == {"key": old, "record": "ds",
                                                               "state": "omnipresent"}
    ]  # fmt: skip
    assert settled and settled[0]["at"] <= started["at"], run.history
    run.until(
        lambda: run.status.get("waits_for") == "parent" and len(run.events("ds-pushed")) == 2,
        60,
        "the KSK's DS step served by every node (CDS) and its DS pushed",
    )
    marks["DS step: CDS served, DS pushed"] = at_ds_step = time.monotonic()
    assert run.status["step"].startswith("2 of 3"), run.status
    # Every server serves the new KSK's CDS (SHA-256) and CDNSKEY, nothing else, all alike.
    served: dict[str, Served] = lab.served()
    want_cds, want_cdnskey = lab.kdc_cds({new})
    for name, s in served.items():
        assert (s.cds, s.cdnskey) == (want_cds, want_cdnskey), (name, s, want_cds, want_cdnskey)
        assert {old, new} <= s.tags, (name, s)
    assert len({(s.cds, s.cdnskey) for s in served.values()}) == 1
    pushed = run.events("ds-pushed")[-1]
    assert [line.split(" DS ", 1)[1] for line in pushed["detail"]["ds"]] == sorted(
        ds_texts(lab, {new})
    )
    assert parent.ds_at(parent.primary) == ds_texts(lab, {new})
    assert parent.ds_at(parent.secondary) == first_ds
    released, status, watch, text = hold_the_secondary(run, parent, "rollover ")
    marks["DS step released"] = released
    assert status["waits_for"] == "parent" and status["step"].startswith("2 of 3"), status
    assert f"not yet at {parent.secondary}" in watch["why"], watch
    assert f"still at {parent.secondary}" in watch["why"], watch
    assert parent.primary not in watch["why"], watch
    by_address = {a["address"]: a["ds"] for a in watch["view"]["addresses"]}
    assert by_address == {parent.primary: [f"{new}/13/2"], parent.secondary: [f"{old}/13/2"]}
    print(text)
    assert "KSK rollover, step 2 of 3" in text and "waits for the parent" in text, text
    assert f"new DS {new}/13/2 not yet at {parent.secondary}" in text, text
    assert f"{parent.secondary}: DS {old}/13/2" in text, text
    assert len([e for e in run.events("ds-seen")]) == 1  # no timeout turned the lag into success

    run.until(
        lambda: [e["detail"]["role"] for e in run.events("rollover-done")] == ["initial", "KSK"],
        60,
        "the KSK rollover done once the secondary serves the new DS",
    )
    marks["KSK rollover done"] = time.monotonic()
    prober.stop()

    # --- the end: old KSK gone everywhere, the parent's DS the new KSK's only --------------
    keys = lab.keys()
    assert keys[old]["state"] == "removed" and keys[new]["state"] == "active", keys
    for name, s in lab.served().items():
        assert old not in s.tags and new in s.tags, (name, s)
        assert (s.cds, s.cdnskey) == (frozenset(), frozenset()), (name, s)  # withdrawn
    for address in parent.addresses:
        assert parent.ds_at(address) == ds_texts(lab, {new}), address
    wait_until(lambda: lab.resolve(want_ad=True).flags & dns.flags.AD, 20, "validated (new DS)")
    events = run.history
    for entry in events:
        if entry["event"] in ("ds-seen", "ds-gone"):
            assert entry["cause"].startswith("parent: "), entry
        assert not entry["cause"].startswith("command:"), entry
    assert [e["event"] for e in events if e["event"].startswith("ds-")] == [
        "ds-pushed", "ds-seen", "ds-pushed", "ds-seen", "ds-gone",
    ]  # fmt: skip
    assert run.problems == [], run.problems

    # the KSK's: under load a ZSK rollover by lifetime may start after it (seen in CI)
    ksk = [e for e in events if e["event"] == "rollover-started" and e["detail"]["role"] == "KSK"][
        -1
    ]["at"]
    step2 = [e for e in events if e["event"] == "step-begun" and e["at"] >= ksk][1]["at"]
    served2 = [e for e in events if e["event"] == "step-served" and e["at"] >= ksk][1]["at"]
    pushed2, seen2 = run.at("ds-pushed"), run.at("ds-seen")
    done = run.at("rollover-done")
    for line in durations(events, POLICY):
        print(line)
    stamps = list(marks.items())
    print(
        f"phases (test clock): lab start-up {STARTED['lab']:.1f}s (first keys served); "
        + "; ".join(f"{b} +{t - stamps[i][1]:.1f}s" for i, (b, t) in enumerate(stamps[1:]))
    )
    print(
        f"KSK rollover (engine clock): started → DS step {step2 - ksk}s; CDS served by all four "
        f"{served2 - step2}s; DS pushed {pushed2 - served2}s later; held at the DS step "
        f"{seen2 - pushed2}s (the secondary released {released - at_ds_step:.1f}s after); "
        f"seen → done {done - seen2}s; total {done - ksk}s"
    )
    print(
        f"first DS (engine clock): pushed → seen {run.at('ds-seen', 0) - run.at('ds-pushed', 0)}s "
        f"(held by the secondary), seen → omnipresent {settled[0]['at'] - run.at('ds-seen', 0)}s"
    )
    print(f"answers {dict(prober.counts)} in {time.monotonic() - began:.0f}s")
    assert prober.counts["SERVFAIL"] == 0, (prober.servfails, lab.unbound_log()[-3000:])
    assert prober.counts["NOERROR"] >= (time.monotonic() - began) * 3
