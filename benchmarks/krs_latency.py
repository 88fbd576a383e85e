"""NOTIFY-to-installed latency of ``krs run`` with the directory adapter, over many distributions.

Run:  .venv/bin/python benchmarks/krs_latency.py [--count 100] [--backend hpke|jose|both]

Real processes on 127.0.0.1 with free ports in a temporary directory: ``krs-kdc serve`` and
``krs run`` (directory adapter, ``poll_interval: 3600`` so that polling cannot help; only the
NOTIFY starts a fetch). The KDC state is made with the CLI (``init``, ``zone add``, a KSK and a
ZSK of algorithm 13, ``node add``); the node's NOTIFY address is a relay in this process
(``krs_harness.NotifyRelay``) that notes when each NOTIFY arrives and forwards it to the KRS.

One warm-up distribution (the first KSK and ZSK) is not counted. Then, ``--count`` times, in this
process through the KDC's store and ``distribute_zone``: the previous ZSK is marked removed, a new
algorithm-13 ZSK is generated, and one distribution is built (KSK and new ZSK as roll_key, the old
ZSK as delete_key: three operations, one data chunk). Times, all with ``time.perf_counter``:

- **NOTIFY -> installed** (the figure of the issue): from the moment the NOTIFY datagram from
  ``krs-kdc serve`` reaches the relay until both key files of the new ZSK are in the adapter's
  folder (inotify on the folder: the ``.key`` file, written after the ``.private`` one, renamed
  into place).
- **distribute returned -> installed**: from ``distribute_zone`` returning (distribution stored)
  to the same moment; adds the KDC's wait for its next NOTIFY round (``serve`` looks for pending
  distributions every 0.5 s). Each round starts after a random pause of 0 to 0.5 s, so that the
  rounds meet that cycle at every phase rather than at the same one each time.
- **NOTIFY -> confirmed**: until the KDC's state shows the distribution ``confirmed`` (polled every
  10 ms); adds the KRS's confirmation round (every 0.5 s) and the KDC's handling of it.

A harness that prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from inotify_simple import INotify, flags
from krs_harness import NotifyRelay, machine, percentile

from krs_lab.deployment import CZ, ZONE, Deployment
from krs_plugin.dnssec import generate_key
from krs_plugin.kdc.distribute import distribute_zone
from krs_plugin.kdc.identity import load_identity
from krs_plugin.kdc.store import Store

ALGORITHM = 13
TIMEOUT = 30.0
TICK = 0.5  # krs-kdc serve looks for pending distributions every 0.5 s (ServeOptions.tick)
LABELS = {
    "installed": "NOTIFY sent -> key files installed",
    "returned": "distribute returned -> installed",
    "notify": "distribute returned -> NOTIFY sent",
    "confirmed": "NOTIFY sent -> confirmed at KDC",
}


def wait_for_files(inotify: INotify, names: set[str], timeout: float) -> float:
    """perf_counter when the last of ``names`` was created or renamed into the watched folder."""
    pending = set(names)
    deadline = time.perf_counter() + timeout
    while pending:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"key files {sorted(pending)} did not appear within {timeout} s")
        events = inotify.read(timeout=int(left * 1000) + 1)
        seen = time.perf_counter()
        pending -= {event.name for event in events}
    return seen


def wait_confirmed(store: Store, dist_id: str, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while True:
        rows = store.distributions(dist_id=dist_id)
        now = time.perf_counter()
        if rows and rows[0].status == "confirmed":
            return now
        if rows and rows[0].status != "pending":
            raise RuntimeError(f"distribution {dist_id} is {rows[0].status}: {rows[0].error}")
        if now > deadline:
            raise TimeoutError(f"distribution {dist_id} not confirmed within {timeout} s")
        time.sleep(0.01)


def new_zsk(store: Store) -> tuple[int, set[str]]:
    """Retire the ZSK into ``removed`` (the next distribution deletes it on the node), forget the
    one removed last round (the node deleted it), add a new ZSK; its tag and file names."""
    with store.transaction():
        store.db.execute("DELETE FROM keys WHERE zone = ? AND state = 'removed'", (ZONE,))
    for row in store.keys(ZONE):
        if row.role == "ZSK":
            store.set_key_state(row.id, "removed")
    taken = {row.key_tag for row in store.keys(ZONE)}
    key = generate_key(ZONE, ALGORITHM, 256)
    while key.key_tag in taken:
        key = generate_key(ZONE, ALGORITHM, 256)
    now = int(time.time())
    store.add_key(
        ZONE,
        key_tag=key.key_tag,
        role="ZSK",
        algorithm=ALGORITHM,
        flags=256,
        private_pem=key.to_pkcs8_pem(),
        publish_at=now,
        activate_at=now,
    )
    return key.key_tag, {f"{key.basename}.key", f"{key.basename}.private"}


def measure(root: Path, backend: str, count: int) -> dict[str, list[float]]:
    relay = NotifyRelay(CZ, 0)
    deployment = Deployment(root, backend, kdc_notify_port=relay.port)  # CLI: init, keys, node
    relay.target = ("127.0.0.1", deployment.notify_port)
    series: dict[str, list[float]] = {key: [] for key in LABELS}
    store = Store(deployment.state / "kdc.db")
    inotify = INotify()
    try:
        deployment.write_config(poll_interval=3600)
        deployment.start_kdc()
        deployment.start_krs()
        identity = load_identity(deployment.state / "keys")
        inotify.add_watch(deployment.node_dir / "keys", flags.CREATE | flags.MOVED_TO)
        warm_up = distribute_zone(store, identity, ZONE, now=time.time())
        wait_confirmed(store, warm_up.distribution_id, TIMEOUT)
        inotify.read(timeout=0)  # the warm-up's events
        rng = random.Random(1)
        for done in range(count):
            _, names = new_zsk(store)
            time.sleep(rng.uniform(0, TICK))  # meet the KDC's NOTIFY round at a random phase
            before = time.perf_counter()
            summary = distribute_zone(store, identity, ZONE, now=time.time())
            returned = time.perf_counter()
            installed = wait_for_files(inotify, names, TIMEOUT)
            notified = relay.wait(summary.distribution_id, TIMEOUT)
            confirmed = wait_confirmed(store, summary.distribution_id, TIMEOUT)
            series["installed"].append(installed - notified)
            series["returned"].append(installed - returned)
            series["notify"].append(notified - returned)
            series["confirmed"].append(confirmed - notified)
            if done == 0:
                build_ms = (returned - before) * 1000
            if sys.stderr.isatty():
                print(f"\r  {backend}: {done + 1}/{count}", end="", file=sys.stderr)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        print(f"  (building and storing one distribution took {build_ms:.1f} ms, not counted)")
        return series
    finally:
        inotify.close()
        store.close()
        deployment.close()
        relay.close()


def report(backend: str, series: dict[str, list[float]]) -> None:
    print(
        f"{'backend ' + backend:38} {'p50':>8} {'p95':>8} {'min':>8} {'max':>8} {'mean':>8}  (ms)"
    )
    for key, label in LABELS.items():
        ms = [v * 1000 for v in series[key]]
        print(
            f"  {label:36} {percentile(ms, 50):8.1f} {percentile(ms, 95):8.1f} {min(ms):8.1f} "
            f"{max(ms):8.1f} {statistics.fmean(ms):8.1f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="distributions (default 100)")
    parser.add_argument("--backend", choices=("hpke", "jose", "both"), default="both")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be at least 1")
    print(f"machine: {machine()}")
    print(
        f"{args.count} distributions per backend, each a new algorithm-{ALGORITHM} ZSK for "
        f"{ZONE} (KSK + new ZSK + delete of the old one); directory adapter; poll_interval 3600"
    )
    for backend in ("hpke", "jose") if args.backend == "both" else (args.backend,):
        with tempfile.TemporaryDirectory(prefix="krs-bench-latency-") as tmp:
            series = measure(Path(tmp), backend, args.count)
        report(backend, series)
    print("percentiles are nearest-rank over the measured values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
