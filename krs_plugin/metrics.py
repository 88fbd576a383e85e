"""Prometheus metrics and the health endpoint of ``krs run``, and the HTTP listener that
``krs-kdc serve --metrics`` uses too (its metrics: ``kdc/metrics.py``).

One registry per service (not the process-global default), so tests and embedded uses can run
several services without clashing. Keys per zone and pending confirmations are read from the
state store at scrape time: the store is the truth, a counter kept beside it could drift.

The HTTP side is a deliberately tiny asyncio server with two paths, ``/metrics`` (Prometheus text
format) and ``/healthz`` (JSON, 200 when healthy, 503 otherwise), on the ``metrics`` address of
``krs.yaml``. It answers only GET, reads at most one request head, and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from krs_plugin.errors import DONE, STAGES, outcome_of

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 5.0


class _StoreCollector(Collector):
    """Gauges computed from the state store when Prometheus scrapes."""

    def __init__(self, read: Callable[[], Mapping[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            data = self.read()
        except Exception:  # a scrape must not kill the daemon; the gap shows in Prometheus
            log.exception("metrics: reading the state store failed")
            return
        keys = GaugeMetricFamily(
            "krs_keys_installed", "DNSSEC keys installed by this KRS, per zone", labels=["zone"]
        )
        for zone, count in sorted(data.get("keys_per_zone", {}).items()):
            keys.add_metric([zone], count)
        yield keys
        yield GaugeMetricFamily(
            "krs_confirmations_pending",
            "confirmations not yet acknowledged by the KDC",
            value=data.get("confirmations_pending", 0),
        )
        yield GaugeMetricFamily(
            "krs_queue_length", "distributions queued for fetching", value=data.get("queued", 0)
        )


class Metrics:
    """Every metric ``krs run`` exports; see docs/operations.md for what each one means."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.distributions = Counter(
            "krs_distributions",
            "distributions processed, by outcome (applied/rejected/failed) and stage",
            ["outcome", "stage"],
            registry=r,
        )
        self.fetch_seconds = Histogram(
            "krs_fetch_seconds",
            "time to fetch one distribution (manifest and chunks)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.apply_seconds = Histogram(
            "krs_apply_seconds",
            "time from fetched to applied and verified, for one distribution",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.fetches = Counter(
            "krs_fetches", "fetch attempts of a distribution, by result", ["result"], registry=r
        )
        self.last_success = Gauge(
            "krs_last_success_timestamp_seconds",
            "Unix time of the last distribution applied successfully",
            registry=r,
        )
        self.notifies = Counter(
            "krs_notify",
            "NOTIFY messages received, by result (accepted, duplicate, refused, rate_limited)",
            ["result"],
            registry=r,
        )
        self.confirmations = Counter(
            "krs_confirmations",
            "confirmation attempts to the KDC, by result (acknowledged/failed)",
            ["result"],
            registry=r,
        )
        self.reloads = Counter(
            "krs_config_reloads",
            "configuration and key file reloads, by result (applied/refused)",
            ["result"],
            registry=r,
        )
        self.polls = Counter(
            "krs_polls",
            "control-zone polls for this node's distributions, by result (ok: a server "
            "answered; failed: none did, the KDC is unreachable)",
            ["result"],
            registry=r,
        )
        self.poll_failures = Gauge(
            "krs_poll_failures_consecutive",
            "polls in a row that no control server answered (0 after one that did)",
            registry=r,
        )
        self.server_up = Gauge(
            "krs_server_up",
            "1 when the adapter's nameserver answers its control channel (knotc/rndc/"
            "nsd-control status, PowerDNS's API or pdns_control), 0 when not; checked "
            "periodically; no sample for adapters without a server (directory)",
            ["adapter"],
            registry=r,
        )
        self.apply_failing = Gauge(
            "krs_apply_failing",
            "1 from a distribution that failed to apply until one applies, else 0",
            registry=r,
        )
        # Known label values start at 0, so rates and alerts work before the first event.
        for counter, results in (
            (self.notifies, ("accepted", "duplicate", "refused", "rate_limited")),
            (self.fetches, ("ok", "failed", "rejected", "not_published")),
            (self.confirmations, ("acknowledged", "failed")),
            (self.reloads, ("applied", "refused")),
            (self.polls, ("ok", "failed")),
        ):
            for result in results:
                counter.labels(result)
        # The stage label takes the names of errors.STAGES only (docs/operations.md, "Errors
        # and what to do"), each with the one outcome it is recorded with, and applied/done.
        self.distributions.labels("applied", DONE)
        for stage in STAGES:
            self.distributions.labels(outcome_of(stage), stage)
        self.up_since = Gauge("krs_start_time_seconds", "Unix time krs run started", registry=r)
        self.up_since.set_to_current_time()

    def watch_store(self, read: Callable[[], Mapping[str, Any]]) -> None:
        self.registry.register(_StoreCollector(read))

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


class Exposition(Protocol):
    """What the listener serves at ``/metrics``: ``Metrics``, or the KDC's ``KdcMetrics``."""

    def exposition(self) -> bytes: ...


async def serve_http(
    host: str,
    port: int,
    metrics: Exposition,
    health: Callable[[], tuple[bool, Mapping[str, Any]]],
    *,
    in_thread: bool = False,
) -> tuple[asyncio.Server, int]:
    """Start the ``/metrics`` and ``/healthz`` listener; returns the server and its bound port.

    ``in_thread``: ``/metrics`` is computed in a worker thread, so a scrape that reads a large
    database never holds up the event loop (the KDC's DNS answers); ``/healthz`` stays on it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError, OSError):
            writer.close()
            return
        method, _, rest = head.decode("latin-1").partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if in_thread and method == "GET" and path == "/metrics":
            status, ctype, body = (
                "200 OK",
                CONTENT_TYPE,
                await asyncio.to_thread(metrics.exposition),
            )
        else:
            status, ctype, body = _route(method, path, metrics, health)
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_HEAD)
    bound = server.sockets[0].getsockname()[1]
    return server, int(bound)


def _route(
    method: str,
    path: str,
    metrics: Exposition,
    health: Callable[[], tuple[bool, Mapping[str, Any]]],
) -> tuple[str, str, bytes]:
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"only GET\n"
    if path == "/metrics":
        return "200 OK", CONTENT_TYPE, metrics.exposition()
    if path in ("/healthz", "/health"):
        healthy, detail = health()
        body = json.dumps({"status": "ok" if healthy else "unhealthy", **detail}, default=str)
        status = "200 OK" if healthy else "503 Service Unavailable"
        return status, "application/json", body.encode() + b"\n"
    return "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
