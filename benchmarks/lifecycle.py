"""The lifecycle engine's figures (issue 22): the cost of a scheduling pass at scale, and how long
real rollovers take next to the RFC 7583 minimum of their policy.

Run:  .venv/bin/python benchmarks/lifecycle.py [--part scale|rollover|emergency|both] [--quick]
                                                [--zones 10000] [--nodes 10] [--begin 10000]

Part 1, ``scale`` (in this process, a simulated clock, no sockets): a kdc.db with ``--zones``
zones under one policy (the defaults: KSK+ZSK, ZSK pre-publish, ZSK lifetime 30 days), each with
a KSK and a ZSK of algorithm 13 (each key generated, about 0.1 ms each), all served by ``--nodes``
nodes (HPKE), built by direct Store/SQL calls. The zones start as after their first keys: every
record omnipresent, every node's confirmation of that (one ``served_state`` row per node and zone,
as the KDC records it). Then ``Engine.run_pass`` is timed on:

a. an idle pass: nothing due (the ZSKs are 10 days into their 30);
   ``--removed N`` adds N removed ZSKs per zone (as after N rollovers) to see that the pass
   does not grow with them;
c. the pass that begins ``--begin`` (1,000) ZSK rollovers at once: their ZSKs' lifetimes made
   to end now, so the pass makes each new ZSK and begins step 1 (one real sealed distribution to
   every node of the zone); the other zones' rollovers (when ``--begin`` < ``--zones``) are
   begun by an untimed pass first, their distributions stubbed (the gate and the waits never
   read a distribution). 1,000 by default: each step's ``distribute_zone`` reads
   ``Store.nodes(zone)``, which loads every node's list of zones (10,000 rows per node here),
   so beginning all 10,000 at once takes about ten times as long;
b. a pass where every zone is mid-step waiting on the gate: the nodes confirmed the zones' older
   step only;
d. (also) the pass that records the gate reached for every zone (each node's confirmation of
   the new step written as the KDC records it), then a pass where every zone waits for time
   (where a rollover spends nearly all its life: Ipub, Iret are hours or days).

For each: wall time, per zone, and the peak RSS of this process during that pass (VmHWM, reset
before each pass through /proc/self/clear_refs), next to the target for the idle pass: under
0.5 s for 10,000 zones (``krs-kdc serve`` runs a pass every second in its event loop).

Part 2, ``rollover`` (real processes on 127.0.0.1): ``krs-kdc serve`` and three ``krs run``
(directory adapter), a policy whose TTLs are tens of seconds (``--quick``: halved); see
``rollover_part`` for the steps and the minimum each is compared with.

A harness that prints figures; it asserts nothing.
"""

import argparse
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from krs_harness import machine, proc_status

from krs_lab.deployment import BIN, Deployment, wait_until
from krs_lab.nodekeys import write_node_keys
from krs_lab.ports import free_port
from krs_plugin.crypto import (
    HpkeKey,
)
from krs_plugin.dnssec import generate_key
from krs_plugin.kdc import engine as engine_module
from krs_plugin.kdc.distribute import DistributionSummary
from krs_plugin.kdc.engine import Engine
from krs_plugin.kdc.enginestate import EngineState
from krs_plugin.kdc.identity import create_identity
from krs_plugin.kdc.policy import Policy, intervals
from krs_plugin.kdc.records import RECORDS_OF_ROLE, State
from krs_plugin.kdc.store import Store

DAY = 86400
IDLE_TARGET = 0.5  # seconds for 10,000 zones: serve runs a pass every second


# --- part 1: the pass at scale ------------------------------------------------------------------


def reset_peak() -> None:
    """Start a new VmHWM (Linux: writing 5 to clear_refs resets the peak RSS)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    return proc_status(os.getpid())["VmHWM"] / 1024


def zone_name(i: int) -> str:
    return f"z{i:05d}.bench.example."


def build(state: Path, zones: int, nodes: int, policy: Policy, t0: int, removed: int = 0) -> Store:
    """kdc.db as after every zone's first keys: keys active, records omnipresent, every node's
    confirmation of that recorded; with ``removed``, that many ZSKs per zone rolled before
    (removed, every record hidden; one PEM reused, they are never loaded)."""
    state.mkdir(parents=True)
    store = Store(state / "kdc.db")
    store.set_meta("control_zone", "kdc.example.")
    store.add_policy("bench", policy, now=t0)
    names = [zone_name(i) for i in range(zones)]
    node_ids = [f"ns{n}.edge.example." for n in range(nodes)]
    since = t0 - 10 * DAY  # the ZSKs are 10 days into their 30
    served: list[tuple[str, str, str, int, int, str]] = []
    with store.transaction():
        store.db.executemany(
            "INSERT INTO zones(name, created_at, policy) VALUES (?, ?, 'bench')",
            [(z, since) for z in names],
        )
        for node in node_ids:
            store.db.execute(
                "INSERT INTO nodes(id, notify_address, backend, hpke_pubkey, created_at) "
                "VALUES (?, '127.0.0.1:9', 'hpke', ?, ?)",
                (node, HpkeKey.generate().public_hex, since),
            )
            store.db.executemany(
                "INSERT INTO node_zones(node_id, zone) VALUES (?, ?)", [(node, z) for z in names]
            )
        for z in names:
            made = []
            for role, flags in (("KSK", 257), ("ZSK", 256)):
                while True:  # a tag may collide with the zone's other key (1 in 65,536)
                    key = generate_key(z, policy.algorithm, flags, ttl=policy.dnskey_ttl)
                    if all(key.key_tag != k.key_tag for _, k in made):
                        break
                made.append((role, key))
                cursor = store.db.execute(
                    "INSERT INTO keys(zone, key_tag, role, algorithm, flags, state, private_pem, "
                    "created_at, publish_at, activate_at) VALUES (?, ?, ?, ?, ?, 'active', ?, ?, "
                    "?, ?)",
                    (z, key.key_tag, role, key.algorithm, flags, key.to_pkcs8_pem(), since,
                     since, since),
                )  # fmt: skip
                store.db.executemany(
                    "INSERT INTO key_records(key_id, record, state, changed_at) "
                    "VALUES (?, ?, ?, ?)",
                    [(cursor.lastrowid, r, str(State.OMNIPRESENT), since)
                     for r in RECORDS_OF_ROLE[role]],
                )  # fmt: skip
            used = {k.key_tag for _, k in made}
            for _ in range(removed):
                tag = max(used) + 1 if max(used) < 65535 else min(used) - 1
                used.add(tag)
                cursor = store.db.execute(
                    "INSERT INTO keys(zone, key_tag, role, algorithm, flags, state, private_pem, "
                    "created_at, publish_at, activate_at, inactive_at, delete_at) "
                    "VALUES (?, ?, 'ZSK', ?, 256, 'removed', ?, ?, ?, ?, ?, ?)",
                    (z, tag, policy.algorithm, made[-1][1].to_pkcs8_pem(), since, since, since,
                     since, since),
                )  # fmt: skip
                store.db.executemany(
                    "INSERT INTO key_records(key_id, record, state, changed_at) "
                    "VALUES (?, ?, 'hidden', ?)",
                    [(cursor.lastrowid, r, since) for r in RECORDS_OF_ROLE["ZSK"]],
                )
            report = {
                "zone": z,
                "read_at": since,
                "dnskey": sorted([k.key_tag, k.algorithm, k.flags] for _, k in made),
                "dnskey_ttl": policy.dnskey_ttl,
                "dnskey_signers": [k.key_tag for r, k in made if r == "KSK"],
                "soa_signers": [k.key_tag for r, k in made if r == "ZSK"],
            }
            text = json.dumps(report, sort_keys=True)
            served += [(f"init-{z}", n, z, since, since, text) for n in node_ids]
        store.db.executemany(
            "INSERT INTO served_state(distribution_id, node_id, zone, read_at, recorded_at, state) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            served,
        )
    return store


def confirm_all(store: Store, nodes: list[str], read_at: int) -> int:
    """Every node confirms serving the zones' current key sets (what the engine sent: the keys
    published, active or retired), as the KDC records a confirmation."""
    by_zone: dict[str, list[sqlite3.Row]] = {}
    for row in store.db.execute(
        "SELECT zone, key_tag, algorithm, flags, state FROM keys "
        "WHERE state IN ('published', 'active', 'retired')"
    ):
        by_zone.setdefault(row["zone"], []).append(row)
    running = {
        r["zone"]: r["distribution_id"]
        for r in store.db.execute("SELECT zone, distribution_id FROM rollovers "
                                  "WHERE finished_at IS NULL")
    }  # fmt: skip
    rows = []
    for zone, keys in by_zone.items():
        report = {
            "zone": zone,
            "read_at": read_at,
            "dnskey": sorted([k["key_tag"], k["algorithm"], k["flags"]] for k in keys),
            "dnskey_ttl": Policy().dnskey_ttl,
            "dnskey_signers": [k["key_tag"] for k in keys if k["state"] == "active"
                               and k["flags"] == 257],
            "soa_signers": [k["key_tag"] for k in keys if k["state"] == "active"
                            and k["flags"] == 256],
        }  # fmt: skip
        text = json.dumps(report, sort_keys=True)
        dist = running.get(zone) or f"step-{zone}"
        rows += [(dist, n, zone, read_at, read_at, text) for n in nodes]
    with store.transaction():
        store.db.executemany(
            "INSERT OR REPLACE INTO served_state(distribution_id, node_id, zone, read_at, "
            "recorded_at, state) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    return len(rows)


def history_count(store: Store) -> int:
    return int(store.db.execute("SELECT COUNT(*) FROM history").fetchone()[0])


CPU: list[float] = [0.0]  # CPU seconds of the last timed pass (the machine may be shared)


def timed_pass(engine: Engine, now: int) -> tuple[float, float, int]:
    """(seconds, peak RSS MB during the pass, history entries it wrote)."""
    before = history_count(engine.store)
    reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    engine.run_pass(now)
    elapsed = time.perf_counter() - start
    CPU[0] = time.process_time() - cpu
    return elapsed, peak_mb(), history_count(engine.store) - before


def make_due(store: Store, zones: list[str], policy: Policy, now: int) -> None:
    """The ZSKs of ``zones`` reach the start of their rollover (Ipub before their lifetime's
    end) at ``now``."""
    ipub, _ = intervals(policy, "ZSK")
    activate = now - policy.zsk_lifetime + ipub.seconds
    with store.transaction():
        store.db.executemany(
            "UPDATE keys SET activate_at = ?, publish_at = ? WHERE zone = ? AND role = 'ZSK' "
            "AND state = 'active'",
            [(activate, activate, z) for z in zones],
        )


def stub_distribute(
    store: Store, identity: object, zone: str, *, now: float, **_: object
) -> DistributionSummary:
    """For the untimed begin of the zones outside ``--begin``: nothing sealed (the gate and the
    waits never read a distribution's records)."""
    return DistributionSummary(f"stub-{zone}", zone, (), 0, 0, 0, (zone,))


def line(label: str, zones: int, seconds: float, peak: float, wrote: int, extra: str = "") -> None:
    per = seconds / zones * 1e6 if zones else 0.0
    print(
        f"  {label:<50} {seconds:8.3f} s (CPU {CPU[0]:7.3f} s) {per:7.0f} us/zone  "
        f"peak RSS {peak:4.0f} MB  history +{wrote}{extra}"
    )


def scale_part(args: argparse.Namespace) -> None:
    policy = Policy()
    zones, nodes = args.zones, args.nodes
    begin = min(args.begin, zones)
    t0 = int(time.time())
    print(f"part 1: one engine pass, {zones} zones x {nodes} nodes, KSK+ZSK each, one policy "
          "(defaults)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="krs-bench-") as tmp:
        start = time.perf_counter()
        store = build(Path(tmp) / "state", zones, nodes, policy, t0, args.removed)
        built = time.perf_counter() - start
        identity = create_identity(Path(tmp) / "state" / "keys")
        node_ids = [n.id for n in store.nodes()]
        size = (Path(tmp) / "state" / "kdc.db").stat().st_size / 2**20
        print(f"  kdc.db built in {built:.1f} s ({2 * zones} keys generated, "
              f"{zones * args.removed} removed keys, {zones * nodes} served_state rows; "
              f"{size:.0f} MB)")  # fmt: skip
        engine = Engine(store, identity)
        names = [zone_name(i) for i in range(zones)]
        engine.run_pass(t0)  # warm: the first pass reads the database into the page cache
        elapsed, peak, wrote = timed_pass(engine, t0 + 1)
        verdict = "PASS" if elapsed * 10_000 / zones < IDLE_TARGET else "FAIL"
        line("(a) idle: nothing due", zones, elapsed, peak, wrote,
             f"  [target {IDLE_TARGET} s per 10,000 zones: {verdict}]")  # fmt: skip

        now = t0 + 10
        rest = names[begin:]
        if rest:
            make_due(store, rest, policy, now)
            real = engine_module.distribute_zone
            engine_module.distribute_zone = stub_distribute  # type: ignore[assignment]
            try:
                engine.run_pass(now)
            finally:
                engine_module.distribute_zone = real
            print(f"  ({len(rest)} zones' rollovers begun untimed, distributions stubbed)")
        now += 10
        make_due(store, names[:begin], policy, now)
        elapsed, peak, wrote = timed_pass(engine, now)
        dists = store.db.execute("SELECT COUNT(*) FROM distributions").fetchone()[0]
        line(f"(c) begins {begin} ZSK rollovers (new key, step 1)", begin, elapsed, peak, wrote,
             f", {dists} sealed copies")  # fmt: skip
        running = len(EngineState(store).rollovers(running=True))

        elapsed, peak, wrote = timed_pass(engine, now + 1)
        line(f"(b) {running} zones wait on the gate", zones, elapsed, peak, wrote)

        confirm_all(store, node_ids, now + 2)
        elapsed, peak, wrote = timed_pass(engine, now + 3)
        line("(d) records the gate reached for every zone", zones, elapsed, peak, wrote)
        elapsed, peak, wrote = timed_pass(engine, now + 4)
        line("(d) every zone waits for time (Ipub)", zones, elapsed, peak, wrote)
        store.close()


# --- part 2: real rollovers next to their minimum ------------------------------------------------

ZONE = "example.com."
POLICIES = {  # seconds; Dsgn = validity - refresh
    "normal": dict(dnskey_ttl=20, max_zone_ttl=30, negative_ttl=20, signatures_validity=50,
                   signatures_refresh=40, publish_safety=5, retire_safety=5, parent_ds_ttl=20,
                   parent_propagation_delay=5, propagation_margin=0),
    "quick": dict(dnskey_ttl=10, max_zone_ttl=15, negative_ttl=10, signatures_validity=25,
                  signatures_refresh=20, publish_safety=2, retire_safety=2, parent_ds_ttl=10,
                  parent_propagation_delay=2, propagation_margin=0),
}  # fmt: skip


def step_minimum(policy: Policy, kind: str, step: int) -> tuple[int, str]:
    """The step's RFC 7583 wait from docs/lifecycle.md "The waits" (every node confirming at
    once, the operator answering at once, the pass exactly on time): the largest wait of the
    records the step moves."""
    p = policy
    dsgn = p.signatures_validity - p.signatures_refresh
    key_in = p.dnskey_ttl + p.publish_safety + p.propagation_margin
    key_out = p.dnskey_ttl + p.retire_safety + p.propagation_margin
    sig_in = dsgn + p.max_zone_ttl + p.publish_safety + p.propagation_margin
    sig_out = dsgn + p.max_zone_ttl + p.retire_safety + p.propagation_margin
    ds = p.parent_ds_ttl + p.parent_propagation_delay
    first = max(p.max_zone_ttl, p.negative_ttl) + p.publish_safety + p.propagation_margin
    table = {
        ("initial", 1): (max(key_in, first), "zrrsig in: max-zone-ttl + pub-safety + M, no Dsgn"),
        ("ZSK", 1): (key_in, "dnskey in: TTLkey + publish-safety + M (Ipub)"),
        ("ZSK", 2): (max(sig_in, sig_out), "zrrsig swap: Dsgn + max-zone-ttl + safety + M (Iret)"),
        ("ZSK", 3): (key_out, "dnskey out: TTLkey + retire-safety + M"),
        ("KSK", 1): (key_in, "dnskey+krrsig in: TTLkey + publish-safety + M (Ipub)"),
        ("KSK", 2): (ds, "ds swap: parent-ds-ttl + parent-propagation-delay, from ds seen/gone"),
        ("KSK", 3): (key_out, "dnskey+krrsig out: TTLkey + retire-safety + M"),
    }  # fmt: skip
    return table[(kind, step)]


class Fleet:
    """``krs-kdc serve`` and three ``krs run`` (directory adapter) on 127.0.0.1."""

    def __init__(self, root: Path, policy: dict[str, int]) -> None:
        self.dep = Deployment(root, zones=(ZONE,), generate_keys=False)
        self.cli("policy", "add", "bench", *[a for k, v in policy.items()
                 for a in (f"--{k.replace('_', '-')}", str(v))],
                 "--zsk-lifetime", "0")  # fmt: skip
        self.cli("zone", "set", ZONE, "--policy", "bench")
        self.configs = [self.dep.config_path]
        for n in (2, 3):
            self.configs.append(self._add_node(n))

    def _add_node(self, n: int) -> Path:
        node, folder = f"ns{n}.edge.example.", self.dep.root / f"node{n}"
        (folder / "keys").mkdir(parents=True)
        node_keys = write_node_keys(folder)
        port = free_port()
        self.cli("node", "add", node, "--notify", f"127.0.0.1:{port}", *node_keys,
                 "--zone", ZONE)  # fmt: skip
        config = json.loads(json.dumps(self.dep.config))
        config.update(
            node_id=node,
            keys={"hpke": str(folder / "node.key"), "signing": str(folder / "signing.key")},
            notify={"listen": [f"127.0.0.1:{port}"], "allowed_sources": ["127.0.0.0/8"]},
            adapter={"type": "directory", "settings": {"path": str(folder / "keys")}},
            state=str(folder / "krs.db"),
        )
        path = folder / "krs.yaml"
        path.write_text(json.dumps(config))
        return path

    def cli(self, *args: str) -> str:
        return self.dep.kdc(*args)

    def json(self, *args: str) -> Any:
        return json.loads(self.dep.kdc("--json", *args))

    def start(self) -> None:
        self.dep.write_config()
        self.dep.start_kdc()
        for n, config in enumerate(self.configs, start=1):
            name = f"krs{n}"
            log = self.dep.logs / f"{name}.log"
            self.dep.start(name, [str(BIN / "krs"), "run", "-c", str(config)])
            wait_until(lambda log=log: log.exists() and "listening for NOTIFY" in log.read_text(),
                       20, f"{name} to start")  # fmt: skip

    def zone_view(self) -> dict[str, object]:
        zones = self.json("status", "--zone", ZONE)["zones"]
        assert isinstance(zones, list)
        view: dict[str, object] = zones[0]
        return view

    def wait_idle(self, timeout: float, on_parent: Callable[[], None] | None = None) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            view = self.zone_view()
            if view["phase"] == "idle":
                return
            if view["waits_for"] == "parent" and on_parent is not None:
                on_parent()
                on_parent = None
            time.sleep(0.25)
        raise TimeoutError(f"{ZONE} not idle within {timeout} s: {self.zone_view()}\n"
                           f"{self.dep.all_logs()[-3000:]}")  # fmt: skip

    def close(self) -> None:
        self.dep.close()


BEGAN = re.compile(
    r"zone \S+: (\S+) step (\d+) began: .*?(?:\(distribution (\w+) to \d+ nodes\))?$"
)
DONE = re.compile(r"zone \S+: (\S+) step (\d+) done$")
CONFIRMED = re.compile(r"distribution (\w+) for \S+ confirmed$")


def log_steps(text: str) -> list[dict[str, Any]]:
    """Every step from the KDC's log (JSON lines, millisecond times): role, step, began, the
    last node's confirmation of its distribution arriving, done."""
    steps: list[dict[str, Any]] = []
    confirmed: dict[str, list[float]] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        at = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
        message = str(entry.get("message", ""))
        if found := BEGAN.match(message):
            steps.append({"role": found[1], "step": int(found[2]), "dist": found[3],
                          "began": at, "done": None})  # fmt: skip
        elif (found := DONE.match(message)) and steps:
            steps[-1]["done"] = at
        elif found := CONFIRMED.match(message):
            confirmed.setdefault(found[1], []).append(at)
    for step in steps:
        times = confirmed.get(step["dist"] or "", [])
        step["confirmed"] = max(times) if times else None
    return steps


def rollover_part(args: argparse.Namespace) -> None:
    """Part 2: the engine in a real ``krs-kdc serve`` rolls a zone's keys on three directory
    nodes: its first keys, a ZSK pre-publish rollover (``krs-kdc rollover --role ZSK``), a KSK
    double-KSK rollover (``--role KSK``; ``ds seen`` and ``ds gone`` as soon as ``status``
    shows it waits for the parent). Each rollover's duration (the command -> its last step
    done) next to its minimum, the sum of its steps' waits (``step_minimum``); per step where
    the rest went: confirmation (step begun -> the last node's confirmation at the KDC; the
    wait counts from that node's read of its server, a moment before), the operator (the DS
    step: begun -> ds seen/gone), and the rest: the pass (serve runs one a second, so up to 1 s
    late) less up to 1 s of rounding (the engine keeps whole seconds and counts from the
    second of the read)."""
    values = POLICIES["quick" if args.quick else "normal"]
    policy = Policy(**values)  # type: ignore[arg-type]
    ipub, iret = intervals(policy, "ZSK")
    kipub, kiret = intervals(policy, "KSK")
    listed = ", ".join(f"{k} {v}" for k, v in values.items())
    print(f"\npart 2: real krs-kdc serve + 3 krs run (directory adapter), policy "
          f"{'(--quick) ' if args.quick else ''}{listed}")  # fmt: skip
    print(f"  ZSK pre-publish: Ipub {ipub.seconds} s, Iret {iret.seconds} s; KSK double-KSK: "
          f"Ipub {kipub.seconds} s, Iret {kiret.seconds} s (policy.intervals)")  # fmt: skip
    started = time.time()
    asked: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="krs-bench-") as tmp:
        fleet = Fleet(Path(tmp), values)
        try:
            asked["initial"] = time.time()  # serve's first pass makes the first keys
            fleet.start()
            fleet.wait_idle(300)
            fleet.cli("ds", "seen", "--zone", ZONE)  # the first KSK's DS is at the parent
            asked["ZSK"] = time.time()
            fleet.cli("rollover", "--zone", ZONE, "--role", "ZSK")
            fleet.wait_idle(300)

            def answer() -> None:
                asked["parent"] = time.time()
                fleet.cli("ds", "seen", "--zone", ZONE)
                fleet.cli("ds", "gone", "--zone", ZONE)

            asked["KSK"] = time.time()
            fleet.cli("rollover", "--zone", ZONE, "--role", "KSK")
            fleet.wait_idle(300, on_parent=answer)
            steps = log_steps(fleet.dep.log("kdc"))
        finally:
            fleet.close()
    print(
        f"  ran {time.time() - started:.0f} s. Per step: duration = minimum + confirmation "
        "(begun -> last node's confirmation) + operator + rest (pass lag less rounding)"
    )
    for kind in ("initial", "ZSK", "KSK"):
        mine = [st for st in steps if st["role"] == kind]
        if not mine or any(st["done"] is None for st in mine):
            print(f"  {kind}: not finished")
            continue
        minimum = 0
        totals = {"confirmation": 0.0, "operator": 0.0, "rest": 0.0}
        print(f"  {'first keys' if kind == 'initial' else kind + ' rollover'}:")
        for st in mine:
            wait, why = step_minimum(policy, kind, st["step"])
            minimum += wait
            took = st["done"] - st["began"]
            confirm = st["confirmed"] - st["began"] if st["confirmed"] is not None else 0.0
            operator = 0.0
            if st["dist"] is None and "parent" in asked:  # the DS step: no distribution
                operator = max(0.0, asked["parent"] - st["began"])
            rest = took - wait - confirm - operator
            for name, value in (("confirmation", confirm), ("operator", operator),
                                ("rest", rest)):  # fmt: skip
                totals[name] += value
            print(f"    step {st['step']}: {took:5.1f} s = min {wait:3d} s [{why}] + confirmation "
                  f"{confirm:.2f} s + operator {operator:.2f} s + rest {rest:+.2f} s")  # fmt: skip
        total = mine[-1]["done"] - asked[kind]
        request = mine[0]["began"] - asked[kind]
        over = (total - minimum) / minimum * 100
        verdict = "within 10 %" if over <= 10 else "more than 10 % over"
        print(f"    total {total:.1f} s vs minimum {minimum} s: +{over:.1f} % ({verdict}); "
              f"to the first step {request:.2f} s, confirmation {totals['confirmation']:.2f} s, "
              f"operator {totals['operator']:.2f} s, rest {totals['rest']:+.2f} s "
              f"({len(mine)} steps)")  # fmt: skip


def emergency_part(args: argparse.Namespace) -> None:
    """Part 3: an emergency ZSK rollover (docs/lifecycle.md, "Emergency rollovers") on the same
    real fleet, the policy keeping one standby ZSK: once the standby is in every cache,
    ``krs-kdc rollover --emergency --key <signing ZSK>``; the time until the compromised ZSK is
    removed, next to its minimum (the retire side only: ZSK steps 2 and 3)."""
    values = {**POLICIES["quick" if args.quick else "normal"], "standby_zsks": 1}
    policy = Policy(**values)  # type: ignore[arg-type]
    minimum = step_minimum(policy, "ZSK", 2)[0] + step_minimum(policy, "ZSK", 3)[0]
    without = minimum + step_minimum(policy, "ZSK", 1)[0]
    print(f"\npart 3: emergency ZSK rollover with a standby ZSK, real krs-kdc serve + 3 krs run "
          f"(directory adapter), policy {'(--quick) ' if args.quick else ''}as part 2, "
          f"standby-zsks 1")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="krs-bench-") as tmp:
        fleet = Fleet(Path(tmp), values)
        try:
            fleet.start()

            def standby_ready() -> bool:
                keys = fleet.json("key", "list", "--zone", ZONE)
                assert isinstance(keys, list)
                ready = any(k["role"] == "ZSK" and k["state"] == "published" for k in keys)
                return ready and fleet.zone_view()["phase"] == "idle"

            wait_until(standby_ready, 300, "the standby ZSK")
            keys = fleet.json("key", "list", "--zone", ZONE)
            assert isinstance(keys, list)
            signing = next(k["key_tag"] for k in keys
                           if k["role"] == "ZSK" and k["state"] == "active")  # fmt: skip
            asked = time.time()
            fleet.cli("rollover", "--zone", ZONE, "--emergency", "--key", str(signing))

            def done() -> float | None:
                """When the emergency rollover's rollover-done was recorded (whole seconds)."""
                started = False
                for e in fleet.json("history", "--zone", ZONE)["entries"]:
                    if e["event"] == "rollover-started" and "--emergency" in e["cause"]:
                        started = True
                    elif started and e["event"] == "rollover-done":
                        return float(e["at"])
                return None

            wait_until(lambda: done() is not None, 300, f"ZSK {signing}'s rollover done")
            took = (done() or 0) - asked  # whole seconds, as the engine records them
        finally:
            fleet.close()
    print(f"  compromised ZSK {signing}'s rollover done {took:.1f} s after the command; minimum "
          f"{minimum} s (Dsgn + max-zone-ttl + retire-safety + M, then TTLkey + retire-safety + "
          f"M): {(took - minimum) / minimum * 100:+.1f} % (the history keeps whole seconds); "
          f"without a standby the minimum is {without} s (Ipub first)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("scale", "rollover", "emergency", "both"),
                        default="both")  # fmt: skip
    parser.add_argument("--zones", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--begin", type=int, default=1_000,
                        help="rollovers the timed pass (c) begins (the rest untimed)")  # fmt: skip
    parser.add_argument("--removed", type=int, default=0,
                        help="removed ZSKs per zone, as after that many rollovers")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="part 2 with halved TTLs")
    args = parser.parse_args()
    print(machine())
    if args.part in ("scale", "both"):
        scale_part(args)
    if args.part in ("rollover", "both"):
        rollover_part(args)
    if args.part in ("emergency", "both"):
        emergency_part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
