"""Live reload for ``krs run``: what a krs.yaml builds, which files reload it, and the new
configuration made ready before anything running is replaced.

krs.yaml and the key files it names are read again on SIGHUP or when inotify sees one change
(``receiver/watch.py``). A change that loads is built completely (keys, adapter, pipeline,
fetcher) and its changed listen addresses are bound first; only then does the service swap it in,
between two distributions (``Service.reload``). A change that does not load or bind is refused and
the daemon keeps running as it was (docs/operations.md, "Changing the configuration while
running").
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from krs_plugin.adapters import make_adapter
from krs_plugin.config import Address, Config, load_config
from krs_plugin.crypto import JoseKey
from krs_plugin.dnsio import Handler
from krs_plugin.errors import ConfigError
from krs_plugin.receiver import notify
from krs_plugin.receiver.fetcher import Fetcher
from krs_plugin.receiver.pipeline import Pipeline, load_identity
from krs_plugin.receiver.store import ReceiverStore

HttpServer = tuple[asyncio.AbstractServer, Address]


@dataclass
class Components:
    """What a config builds: replaced as a whole when a reload is applied."""

    pipeline: Pipeline
    fetcher: Fetcher
    signer: JoseKey | None
    fingerprint: str


def watched_files(config: Config) -> list[Path]:
    """The files whose change reloads the daemon: krs.yaml and every key file it names."""
    keys = (
        config.keys.hpke,
        config.keys.jose,
        config.keys.hpke_pq,
        config.keys.signing,
        config.kdc.verification_key,
    )
    return [config.path, *(k for k in keys if k is not None)]


def files_fingerprint(paths: list[Path]) -> str:
    """A digest of the files' contents, so that a touch or a rewrite with the same bytes is not
    a change (and nothing secret is kept in memory longer than the loaders keep it)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            digest.update(f"unreadable: {exc}".encode())
    return digest.hexdigest()


def build_components(config: Config) -> Components:
    """Load keys, adapter, pipeline and fetcher for ``config``; raises KrsError, touches nothing
    that the running service uses."""
    identity, verifier, signer = load_identity(config)
    adapter = make_adapter(config)
    store = ReceiverStore(config.state, any_thread=True)
    pipeline = Pipeline(config, adapter, store, identity, verifier)
    fetcher = Fetcher(
        config.control_servers, config.control_zone, config.node_id, config.fetch, config.limits
    )
    return Components(pipeline, fetcher, signer, files_fingerprint(watched_files(config)))


@dataclass
class Change:
    """A new configuration that loaded, and what it builds; nothing running uses it yet."""

    config: Config
    components: Components
    listeners: list[notify.Listener] | None = None  # bound when notify.listen changed
    http: HttpServer | None = None  # bound when metrics changed

    async def bind(
        self,
        running: Config,
        answer: Handler,
        serve_http: Callable[[Address | None], Awaitable[HttpServer | None]],
    ) -> None:
        """Bind the addresses that differ from ``running``: ``answer`` takes the NOTIFYs,
        ``serve_http`` starts the metrics listener. When one cannot be bound, everything this
        change opened is closed again and ConfigError names the setting."""
        try:
            if self.config.notify.listen != running.notify.listen:
                self.listeners = await notify.listen(self.config.notify, answer)
        except OSError as exc:
            self.components.pipeline.store.close()
            raise ConfigError(f"notify.listen: cannot bind: {exc}") from exc
        try:
            if self.config.metrics != running.metrics:
                self.http = await serve_http(self.config.metrics)
        except OSError as exc:
            notify.close(self.listeners or [])
            self.components.pipeline.store.close()
            raise ConfigError(f"metrics: cannot bind: {exc}") from exc


def load_change(running: Config, fingerprint: str) -> Change | None:
    """Read ``running``'s krs.yaml again and build what it names; None when it and every key
    file are as they were (``fingerprint``), e.g. a refused edit reverted. Raises KrsError."""
    config = load_config(running.path)
    if config == running and files_fingerprint(watched_files(config)) == fingerprint:
        return None
    return Change(config, build_components(config))
