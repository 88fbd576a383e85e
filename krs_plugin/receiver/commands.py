"""``krs fetch``, ``krs apply --dry-run``, ``krs status`` and ``krs keys``."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict

from krs_plugin.adapters import make_adapter
from krs_plugin.adapters.base import ReportsSignatureExpiry
from krs_plugin.cliout import emit
from krs_plugin.config import Config, load_config
from krs_plugin.errors import KrsError, outcome_of, stage_of
from krs_plugin.humantime import format_time
from krs_plugin.protocol import check_distribution_id
from krs_plugin.receiver.fetcher import Fetcher
from krs_plugin.receiver.pipeline import Outcome, Pipeline, load_identity
from krs_plugin.receiver.reconcile import compare, resend_advice
from krs_plugin.receiver.store import ReceiverStore
from krs_plugin.receiver.trustcli import status_lines as trust_lines


def run_command(args: argparse.Namespace) -> int:
    if args.command == "doctor":  # before the store opens: a broken state is a finding, not a crash
        from krs_plugin.receiver.doctor import doctor_command

        return doctor_command(load_config(args.config, require_files=False), as_json=args.json)
    config = load_config(args.config)
    store = ReceiverStore(config.state)
    try:
        if args.command == "run":
            return _run(config, store)
        if args.command in ("fetch", "apply"):
            return _fetch(args, config, store)
        if args.command == "status":
            rows = store.distributions()
            now = time.time()
            emit(
                [asdict(r) for r in rows],
                [
                    f"{r.id} {r.outcome:8} {r.stage or '-':10} received "
                    f"{format_time(r.received_at, now=now)} {r.error or ''}".rstrip()
                    for r in rows
                ]
                or ["no distributions received yet"],
                as_json=args.json,
            )
            if not args.json:
                for line in _signature_lines(config):
                    print(line)
                for line in trust_lines(config, store):  # the KDC's keys (receiver/kdctrust.py)
                    print(line)
                from krs_plugin.receiver.rekeycli import status_lines

                for line in status_lines(config):  # the node's own keys (krs rekey)
                    print(line)
            return 0
        zone = args.zone.lower() if args.zone else None
        if zone and not zone.endswith("."):
            zone += "."
        keys = [dict(r) for r in store.installed(zone)]
        notes = _held_by_server(config, store, zone, keys)
        emit(
            keys,
            [
                f"{k['zone']:28} tag {k['key_tag']:5} alg {k['algorithm']:2} flags {k['flags']} "
                f"from {k['distribution_id']}, installed {format_time(k['installed_at'])}"
                + ("  NOT HELD" if k["held"] is False else "")
                for k in keys
            ]
            + notes
            or ["no keys installed"],
            as_json=args.json,
        )
        return 0
    finally:
        store.close()


def _held_by_server(
    config: Config, store: ReceiverStore, zone: str | None, keys: list[dict[str, object]]
) -> list[str]:
    """Mark each key ``held``: True or False when the server was asked (the keys of each zone's
    newest distribution, ``reconcile.compare``), None otherwise; the lines saying what is
    missing and what happens about it."""
    for key in keys:
        key["held"] = None
    try:
        results = compare(config, store, make_adapter(config))
    except (KrsError, OSError):
        return []
    notes = []
    for result in results:
        if (zone is not None and result.zone != zone) or result.error is not None:
            continue
        missing = {t for t, _ in result.missing}
        expected = {t for t, _, _ in result.expected}
        for key in keys:
            if key["zone"] == result.zone and key["distribution_id"] == result.distribution_id:
                key["held"] = key["key_tag"] not in missing and key["key_tag"] in expected
        if not result.in_sync:
            notes.append(f"{result.reason}; {resend_advice(config)}")
    return notes


def _signature_lines(config: Config) -> list[str]:
    """For adapters that sign (NSD): when each zone's served signatures expire."""
    try:
        adapter = make_adapter(config)
    except KrsError:
        return []
    if not isinstance(adapter, ReportsSignatureExpiry):
        return []
    lines = ["signatures served (earliest RRSIG expiry per zone):"]
    for zone in sorted(config.zones):
        when = adapter.signature_expiry(zone)
        text = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(when)) if when else "not signed"
        lines.append(f"  {zone.to_text():28} {text}")
    return lines


def _run(config: Config, store: ReceiverStore) -> int:
    import asyncio
    import contextlib

    from krs_plugin.logs import setup_logging
    from krs_plugin.memory import fix_mmap_threshold
    from krs_plugin.receiver.service import Service

    setup_logging(config.log_format)
    fix_mmap_threshold()
    service = Service.from_config(config, store)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(service.run())
    return 0


def _fetch(args: argparse.Namespace, config: Config, store: ReceiverStore) -> int:
    dist_id = check_distribution_id(args.distribution_id)
    identity, verifier, _ = load_identity(config)
    adapter = make_adapter(config)
    pipeline = Pipeline(config, adapter, store, identity, verifier)
    fetcher = Fetcher(
        config.control_servers, config.control_zone, config.node_id, config.fetch, config.limits
    )
    try:
        fetched = fetcher.fetch(dist_id)
    except KrsError as exc:
        stage = stage_of(exc)  # fetch when the servers are down, else what refused the answer
        result = outcome_of(stage)
        if args.command == "fetch":
            store.record_outcome(
                dist_id, pipeline.kdc, int(dist_id, 16), result, stage=stage, error=str(exc),
                report=pipeline.failure_report(result, stage, str(exc)),  # None for fetch
            )  # fmt: skip
        outcome = Outcome(dist_id, result, stage, str(exc))
        _show(args, outcome)
        return 1
    outcome = pipeline.process(
        dist_id, fetched.manifest, fetched.chunks, dry_run=args.command == "apply"
    )
    _show(args, outcome)
    return 0 if outcome.outcome in ("applied", "planned") else 1


def _show(args: argparse.Namespace, outcome: Outcome) -> None:
    lines = [f"distribution {outcome.distribution_id}: {outcome.outcome} ({outcome.stage})"]
    if outcome.error:
        lines.append(f"  error: {outcome.error}")
    for plan in outcome.plans:
        lines.append(
            f"  zone {plan.zone}: install "
            f"{[p.key.key_tag for p in plan.install]}, retire {list(plan.retire)}, "
            f"remove {list(plan.remove)}"
        )
    data = {
        "distribution_id": outcome.distribution_id,
        "outcome": outcome.outcome,
        "stage": outcome.stage,
        "error": outcome.error,
        "plans": [
            {
                "zone": p.zone.to_text(),
                "install": [k.key.key_tag for k in p.install],
                "retire": list(p.retire),
                "remove": list(p.remove),
            }
            for p in outcome.plans
        ],
    }
    emit(data, lines, as_json=args.json)
