"""Issue 23's "An emergency ZSK rollover completes in the time the TTLs allow": the child on
BIND, Knot, NSD and PowerDNS behind a validating Unbound (krs_lab.multisigner), the lab's
pushable parent watched by the KDC. The policy keeps a standby ZSK (``standby-zsks 1``); once it
is in every cache, ``krs-kdc rollover --emergency --key <the signing ZSK>`` is the only command.
The rollover starts at the swap, so it waits only the retire side (docs/lifecycle.md,
"Emergency rollovers"); every step is read on every server against the KDC's records (the
algorithm test's loop), Unbound answers every probe without SERVFAIL, and the time from the
command to the rollover's end is printed next to its minimum and asserted within a few
seconds of it."""

from __future__ import annotations

import time
from pathlib import Path

import dns.flags
from test_lifecycle_algorithm import BASE, AlgorithmRun, running

from krs_lab.deployment import wait_until
from krs_lab.multisigner import CHILD, SERVERS
from krs_plugin.kdc.methods import steps_for
from krs_plugin.kdc.records import settles_at

POLICY = BASE.changed(standby_zsks=1)


def retire_side() -> list[int]:
    """The waits of a ZSK pre-publish rollover's last two steps (the swap, the removal): what
    an emergency with a standby in every cache must still wait."""
    return [
        max(settles_at(c.record, c.to, since=0, policy=POLICY, dnskey_ttl=POLICY.dnskey_ttl)
            for c in step.changes)
        for step in (steps_for("ZSK", "pre-publish") or ())[1:]
    ]  # fmt: skip


def test_an_emergency_zsk_rollover_swaps_to_the_standby_in_the_time_the_ttls_allow(
    tmp_path: Path,
) -> None:
    with running(tmp_path, POLICY, SERVERS) as lab:
        began = time.monotonic()
        run = AlgorithmRun(lab)
        prober = lab.start_prober()
        wait_until(lambda: prober.counts["NOERROR"] >= 5, 10, "five answers")
        lab.watch_parent()

        def standby_ready() -> bool:
            keys = lab.keys()
            standby = [
                t for t, k in keys.items() if k["role"] == "ZSK" and k["state"] == "published"
            ]
            idle = run.events("rollover-done") and len(run.events("rollover-done")) == len(
                run.events("rollover-started")
            )
            return (
                bool(standby)
                and bool(idle)
                and any(e["detail"].get("record") == "ds" for e in run.events("record-settled"))
            )

        run.until(standby_ready, 90, "the first DS settled and the standby ZSK in every cache")
        wait_until(lambda: lab.resolve(want_ad=True).flags & dns.flags.AD, 20, "validated")
        keys = lab.keys()
        (signing,) = [t for t, k in keys.items() if k["role"] == "ZSK" and k["state"] == "active"]
        (standby,) = [
            t for t, k in keys.items() if k["role"] == "ZSK" and k["state"] == "published"
        ]

        lab.kdc("rollover", "--zone", CHILD, "--emergency", "--key", str(signing))
        run.until(lambda: "--emergency" in run.events("rollover-started")[-1]["cause"], 10,
                  "the emergency rollover started")  # fmt: skip
        started = run.events("rollover-started")[-1]
        assert started["detail"]["keys"] == {"old": signing, "new": standby}, started
        waits = retire_side()
        run.until(
            lambda: any(e["at"] >= started["at"] for e in run.events("rollover-done")),
            sum(waits) + 60,
            "the emergency rollover done",
        )
        done = next(e for e in run.events("rollover-done") if e["at"] >= started["at"])
        took = done["at"] - started["at"]
        prober.stop()

        keys = lab.keys()
        assert keys[signing]["state"] == "removed" and keys[standby]["state"] == "active"
        for name, s in lab.served().items():
            assert signing not in s.tags and s.soa_signers == {standby}, (name, s)
        wait_until(lambda: lab.resolve(want_ad=True).flags & dns.flags.AD, 20, "validated")
        steps = [s for r, s, _ in run.checked if r == "ZSK"]
        print(
            f"emergency ZSK rollover on {', '.join(lab.server_names)}: ZSK {signing} -> standby "
            f"{standby}: {took}s from the command's rollover to its end vs minimum {sum(waits)}s "
            f"(swap {waits[0]}s + removal {waits[1]}s; without a standby Ipub would come first); "
            f"answers {dict(prober.counts)} in {time.monotonic() - began:.0f}s; ZSK steps checked "
            f"on every server {steps}"
        )
        assert run.problems == [], run.problems
        assert prober.counts["SERVFAIL"] == 0, (prober.servfails, lab.unbound_log()[-3000:])
        # whole seconds; each step is served about a second after it begins, and serve looks
        # once a second: a few seconds over the minimum, never under it
        assert sum(waits) <= took <= sum(waits) + 6, (took, waits)
