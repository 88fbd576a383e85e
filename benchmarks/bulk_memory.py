"""Where ``krs run``'s memory goes while it applies one distribution with the keys of 10,000
zones: the KRS pipeline in one process, memory shown at each stage boundary.

Run:  .venv/bin/python benchmarks/bulk_memory.py [--zones 10000] [--keys csk|ksk+zsk]
                                                  [--no-trace] [--top 6]

1. Setup, in this process (not measured): a KDC state, ``--zones`` zones with their keys
   (algorithm 13) written into its store and one ``distribute_node`` for the node, as
   ``krs_bulk.py`` does; the CHUNK records are written to a file with the node's krs.yaml
   (directory adapter, the 10,000 zones, default limits).
2. Measured, in a fresh child process: the records read back and handed to
   ``Pipeline.process`` as ``krs run`` hands them (a list the pipeline empties), then the
   confirmation message built from the report (``confirmation_message``), as ``krs run`` sends it.
   At each stage boundary (the pipeline's functions and the adapter's batch hooks wrapped) it
   prints VmRSS and VmHWM, and with tracemalloc (unless ``--no-trace``) the memory Python holds
   then, the peak since the previous boundary, and the ``--top`` allocation sites that grew most
   since the start. Last, ``ru_maxrss`` of the child.

tracemalloc makes the run about three times slower and adds its own memory to VmRSS; the
``--no-trace`` run gives the RSS figures a real ``krs run`` would show. A harness that prints
figures; exit status 0 unless the distribution was not applied.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from krs_harness import machine, proc_status

HERE = Path(__file__).resolve().parent


def setup(root: Path, zones: int, layout: str, adapter: dict[str, Any] | None = None) -> None:
    """KDC state, keys, one distribution; records and krs.yaml in ``root`` (see the docstring);
    ``adapter``: krs.yaml's ``adapter`` (default: the directory adapter)."""
    from krs_bulk import add_zones, zone_names

    from krs_lab.deployment import CZ, NODE, Deployment
    from krs_plugin.kdc.distribute import distribute_node
    from krs_plugin.kdc.identity import load_identity
    from krs_plugin.kdc.store import Store

    names = zone_names(zones)
    deployment = Deployment(root, "hpke", zones=(), generate_keys=False, adapter=adapter)
    try:
        store = Store(deployment.state / "kdc.db")
        started = time.perf_counter()
        keys = add_zones(store, names, 13, layout)
        deployment.write_config(zones=names, poll_interval=3600)
        identity = load_identity(deployment.state / "keys")
        summary = distribute_node(store, identity, NODE, now=time.time())
        rows = store.db.execute(
            "SELECT rdata FROM records WHERE distribution_id = ? ORDER BY sequence",
            (summary.distribution_id,),
        ).fetchall()
        (root / "records.bin").write_bytes(
            b"".join(len(r[0]).to_bytes(4, "big") + bytes(r[0]) for r in rows)
        )
        (root / "dist.json").write_text(
            json.dumps({"id": summary.distribution_id, "made": time.time(), "control_zone": CZ})
        )
        size = sum(len(r[0]) for r in rows)
        print(
            f"setup: {keys} keys of {zones} zones ({layout}), one distribution "
            f"{summary.distribution_id}: {len(rows)} records, {size / 1e6:.1f} MB "
            f"({time.perf_counter() - started:.0f} s, not measured)"
        )
        store.close()
    finally:
        deployment.close()


class Stages:
    """Memory at each stage boundary (``mark``)."""

    def __init__(self, trace: bool, top: int) -> None:
        self.trace, self.top = trace, top
        self.start: Any = None
        self.started = time.perf_counter()
        self.rows: list[tuple[str, float, float, float, float, float]] = []

    def begin(self) -> None:
        gc.collect()
        if self.trace:
            tracemalloc.start(1)
            self.start = tracemalloc.take_snapshot()
        self.mark("start")

    def mark(self, name: str) -> None:
        status = proc_status(os.getpid())
        current = peak = 0.0
        if self.trace:
            now, top = tracemalloc.get_traced_memory()
            current, peak = now / 2**20, top / 2**20
            tracemalloc.reset_peak()
        row = (
            name,
            time.perf_counter() - self.started,
            status["VmRSS"] / 1024,
            status["VmHWM"] / 1024,
            current,
            peak,
        )
        self.rows.append(row)
        line = f"  {name:34} {row[1]:7.1f} s  RSS {row[2]:6.1f}  HWM {row[3]:6.1f} MB"
        if self.trace:
            line += f"  python {current:6.1f}  peak since last {peak:6.1f} MB"
        print(line, flush=True)
        if self.trace and self.top and name != "start":
            snapshot = tracemalloc.take_snapshot()
            for stat in snapshot.compare_to(self.start, "lineno")[: self.top]:
                if stat.size_diff < 256 * 1024:
                    break
                frame = stat.traceback[0]
                where = f"{Path(frame.filename).name}:{frame.lineno}"
                size, count = stat.size_diff / 2**20, stat.count_diff
                print(f"      {size:+7.1f} MB  {count:+8d} blocks  {where}")
            del snapshot

    def around(self, owner: Any, attr: str, name: str) -> None:
        """Mark before and after each call of ``owner.attr``."""
        real = getattr(owner, attr)

        @functools.wraps(real)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.mark(f"before {name}")
            try:
                return real(*args, **kwargs)
            finally:
                self.mark(f"after {name}")

        setattr(owner, attr, wrapped)


def measure(root: Path, trace: bool, top: int) -> int:
    """The child: the pipeline on the stored distribution, memory at each stage."""
    from krs_plugin.adapters import make_adapter, transaction
    from krs_plugin.config import load_config
    from krs_plugin.confirmation import confirmation_message
    from krs_plugin.memory import fix_mmap_threshold
    from krs_plugin.protocol.chunk import parse_chunk_wire
    from krs_plugin.receiver import pipeline
    from krs_plugin.receiver.pipeline import Pipeline, load_identity
    from krs_plugin.receiver.store import ReceiverStore

    fix_mmap_threshold()  # as krs run does
    config = load_config(root / "node" / "krs.yaml")
    adapter = make_adapter(config)
    store = ReceiverStore(config.state)
    identity, verifier, signer = load_identity(config)
    pipe = Pipeline(config, adapter, store, identity, verifier)
    dist = json.loads((root / "dist.json").read_text())
    idle = proc_status(os.getpid())["VmRSS"] / 1024
    print(f"  child with {len(config.zones)} zones configured, idle: RSS {idle:.1f} MB")

    stages = Stages(trace, top)
    stages.around(pipeline, "unpack_distribution", "unpack")
    stages.around(pipeline, "parse_payload", "parse_payload")
    stages.around(pipeline, "build_plans", "build_plans")
    stages.around(transaction, "_apply_atomically", "apply_atomically (batch_context in)")
    stages.around(transaction, "_apply_batch", "apply_batch (snapshots taken)")
    # the adapter's own hooks (a server overrides some): wrapped on the instance
    stages.around(adapter, "_begin_batch", "begin (every zone)")
    stages.around(adapter, "load_batch", "load_batch (keys written)")
    stages.around(adapter, "verify_batch", "verify_batch")
    stages.around(adapter, "read_served_batch", "read_served_batch")
    stages.around(Pipeline, "_report", "report")
    stages.around(store, "record_applied", "record_applied")

    stages.begin()
    records = []
    with (root / "records.bin").open("rb") as source:  # one record at a time, as fetched
        while length := int.from_bytes(source.read(4), "big"):
            records.append(parse_chunk_wire(source.read(length)))
    manifest, chunks = records[0], records[1:]
    del records
    stages.mark("records fetched")
    # a setup kept with --root may be older than the manifest's lifetime: checked as if new
    made = dist.get("made", int(dist["id"], 16))  # the id is the time it was made
    now = None if time.time() - made < 200 else made + 5
    outcome = pipe.process(dist["id"], manifest, chunks, now=now)
    del chunks
    stages.mark(f"processed: {outcome.outcome}")
    report = outcome.report
    del outcome
    gc.collect()
    stages.mark("outcome dropped, report kept")
    message = confirmation_message(dist["id"], config.control_zone, report, signer, node_id=None)
    stages.mark(f"confirmation built ({len(message.to_wire(max_size=0xFFFF))} bytes)")
    del message, report
    gc.collect()
    stages.mark("all dropped")
    if trace:
        tracemalloc.stop()
    hwm = proc_status(os.getpid())["VmHWM"] / 1024
    print(f"  peak RSS (VmHWM) of the child: {hwm:.1f} MB (idle {idle:.1f} MB, +{hwm - idle:.1f})")
    store.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--zones", type=int, default=10000)
    parser.add_argument("--keys", choices=("csk", "ksk+zsk"), default="ksk+zsk")
    parser.add_argument("--no-trace", action="store_true", help="RSS only, no tracemalloc")
    parser.add_argument("--top", type=int, default=6, help="allocation sites shown per stage")
    parser.add_argument("--root", type=Path, help="reuse (or keep) the setup in this folder")
    parser.add_argument(
        "--server",
        choices=("directory", "bind9", "bind920", "knot", "powerdns", "nsd"),
        default="directory",
        help="the adapter; a server is set up as bulk_servers.py does (every run anew)",
    )
    parser.add_argument("--verify-timeout", type=float, default=120)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.measure is not None:
        return measure(args.measure, not args.no_trace, args.top)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="krs-bench-mem-") as tmp:
        if args.server != "directory":
            return with_server(args, Path(tmp))
        root = args.root or Path(tmp)
        if not (root / "records.bin").exists():
            root.mkdir(parents=True, exist_ok=True)
            setup(root, args.zones, args.keys)
        for path in (root / "node" / "keys").iterdir():  # each run starts from an empty folder
            path.unlink()
        (root / "node" / "krs.db").unlink(missing_ok=True)
        return child(args, root)


def child(args: argparse.Namespace, root: Path) -> int:
    argv = [sys.executable, str(Path(__file__).resolve()), "--measure", str(root)]
    argv += ["--top", str(args.top)] + (["--no-trace"] if args.no_trace else [])
    mode = "RSS only" if args.no_trace else "tracemalloc"
    print(f"measured in a fresh process ({mode}):", flush=True)
    return subprocess.run(argv, check=False).returncode


def with_server(args: argparse.Namespace, root: Path) -> int:
    """The server with the zones (bulk_servers.py's setup), then the child against it."""
    from bulk_servers import adapter_settings, adapter_type, started, zone_names

    zones = zone_names(args.zones)
    with started(args.server, root / "server", zones) as lab:
        settings = adapter_settings(args.server, lab, args.verify_timeout)
        adapter = {"type": adapter_type(args.server), "settings": settings}
        setup(root / "krs", args.zones, args.keys, adapter)
        return child(args, root / "krs")


if __name__ == "__main__":
    sys.exit(main())
