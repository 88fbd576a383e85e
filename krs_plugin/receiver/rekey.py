"""``krs rekey``: the node replaces its long-term keys without enrolling again (docs/operations.md,
"Rotating the node's keys"; the wire form is docs/protocol.md section 10).

The key files and their phases, all beside the current ones, all 0600:

- ``<key>.next``: made by ``krs rekey`` before the UPDATE is sent. While they exist, the KDC's
  answer is unknown (no answer, a crash): ``krs rekey`` again sends the same keys again.
- the UPDATE answered NOERROR: each current file is kept as ``<key>.previous`` (a hard link, so
  the bytes never pass through another file) and ``<key>.next`` is renamed over the current one.
  ``krs run`` reloads (it watches its key files) and signs with the new keys from then on.
- ``<key>.previous`` is unlinked once a distribution sealed to the new backend key opened
  (``retire_previous``, called by the pipeline): until then a distribution still sealed to the
  old key opens with it (``alternate_keys``), so nothing in flight is lost.

One rotation at a time: ``krs rekey`` and ``krs run``'s own (asked by the KDC) take an flock on
``<krs.db>.rekey.lock``; a second one is refused at once, naming the lock, and changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.rcode
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from krs_plugin import keymove
from krs_plugin.config import Config, load_config
from krs_plugin.crypto import (
    HpkeKey,
    HybridKey,
    JoseKey,
    load_jose_key,
    write_secret_file,
)
from krs_plugin.crypto.keys import write_jose_private
from krs_plugin.crypto.nodekey import generate_node_key, load_node_private, write_node_private
from krs_plugin.enrollment import ede_text
from krs_plugin.errors import ConfigError, EnrollmentError, KrsError
from krs_plugin.rekey import build_update, public_keys, request_body

log = logging.getLogger("krs_plugin.receiver.rekey")

NEXT = ".next"
PREVIOUS = ".previous"
SIG0_FILE = "node.sig0.privatekey"  # written by krs enroll beside the other keys
TIMEOUT = 10.0


class RekeyError(KrsError):
    """A rotation that did not happen; the node keeps its current keys."""

    stage = "apply"


@dataclass(frozen=True)
class KeyPaths:
    """The node's three private key files (current names). ``backend`` is the backend rotated to;
    in a move to another backend (``krs rekey --backend``) ``moving_from`` is the backend and file
    of the key in use until the switch (docs/enrollment.md section 7)."""

    backend: str
    backend_file: Path
    signing: Path
    sig0: Path
    moving_from: tuple[str, Path] | None = None

    def all(self) -> tuple[Path, Path, Path]:
        return (self.backend_file, self.signing, self.sig0)


@dataclass(frozen=True)
class RekeyResult:
    outcome: str  # "switched" | "waiting" (a rotation already switched, not yet complete)
    backend: str
    detail: str


def resolved_keys(config: Config) -> dict[str, Path | None]:
    keys = config.keys
    return {"hpke": keys.hpke, "jose": keys.jose, "hpke-pq": keys.hpke_pq}


def key_paths(config: Config, to: str | None = None) -> KeyPaths:
    """Where the node's keys are (``to``: the backend to move to, None to keep the current one,
    or the one of a move sent without an answer); ConfigError naming what is missing."""
    keys = config.keys
    if keys.signing is None:
        raise ConfigError(
            f"{config.path}: keys.signing is not set: a node without a signing key cannot rekey "
            "(the KDC knows it by address only); enrol it again"
        )
    resolved = resolved_keys(config)
    found = keymove.current_backend(resolved)
    if found is None:
        raise ConfigError(f"{config.path}: keys: no hpke, jose or hpke-pq key to rotate")
    backend, path = found
    everywhere = keymove.backend_paths(resolved)
    pending = [
        b for b in keymove.BACKENDS if b != backend and suffixed(everywhere[b], NEXT).exists()
    ]
    if pending and to is not None and to != pending[0]:
        raise RekeyError(
            f"a move to {pending[0]} was sent without a known answer "
            f"({suffixed(everywhere[pending[0]], NEXT)} exists): run krs rekey --backend "
            f"{pending[0]} to finish it first; nothing was changed"
        )
    target = pending[0] if pending else (to or backend)
    moving = (backend, path) if target != backend else None
    if moving is not None:
        path = everywhere[target]
        backend = target
    sig0 = keys.signing.parent / SIG0_FILE
    if not sig0.exists():
        raise ConfigError(
            f"{sig0}: the node's SIG(0) key (made by krs enroll) is missing: the KDC takes a "
            "rekey only signed with it"
        )
    return KeyPaths(backend, path, keys.signing, sig0, moving)


def suffixed(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def phase(paths: KeyPaths) -> str:
    """``sent`` (new keys made, the KDC's answer unknown), ``switched`` (old keys kept until a
    distribution sealed to the new ones opened), or ``idle``."""
    if any(suffixed(p, NEXT).exists() for p in paths.all()):
        return "sent"
    if any(suffixed(p, PREVIOUS).exists() for p in paths.all()):
        return "switched"
    return "idle"


@contextlib.contextmanager
def rotation_lock(config: Config) -> Iterator[None]:
    """One rotation at a time on this node; RekeyError at once when another holds it."""
    lock = f"{config.state}.rekey.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise RekeyError(
            f"{lock}: cannot open the rotation lock: {exc}; nothing was changed"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RekeyError(
                f"another key rotation of this node is running ({lock} is locked: a krs rekey, "
                "or krs run acting on the KDC's request); nothing was changed"
            ) from exc
        yield
    finally:
        os.close(fd)


def load_sig0(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the node's SIG(0) key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: the SIG(0) key is not Ed25519")
    return key


def _load_backend(backend: str, path: Path) -> HpkeKey | JoseKey | HybridKey:
    return load_node_private(backend, path)


def _make_next(paths: KeyPaths) -> None:
    """New keys, 0600 from creation, as ``<key>.next`` (never over a current file); the backend
    key is the backend rotated to (generate_node_key, the one place a backend's key is made)."""
    write_node_private(
        suffixed(paths.backend_file, NEXT), paths.backend, generate_node_key(paths.backend)
    )
    write_jose_private(
        suffixed(paths.signing, NEXT),
        JoseKey.generate(),
        use="sig",
        comment="node confirmation signing key",
    )
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret_file(suffixed(paths.sig0, NEXT), pem.decode())


def _drop_next(paths: KeyPaths) -> None:
    for path in paths.all():
        suffixed(path, NEXT).unlink(missing_ok=True)


def _switch_files(paths: KeyPaths) -> None:
    """Current -> ``.previous`` (hard link), ``.next`` -> current; safe to repeat after a crash.
    In a move the old backend's file is linked as ``.previous`` before the new backend's key is
    put in place, and both names stay until ``retire_previous`` (keymove.is_old reads them)."""
    if paths.moving_from is not None:
        # The backend key first: a reload the signing files' change starts finds the new key.
        # The old file stays (the same inode as its .previous: keymove.is_old) until retire.
        old = paths.moving_from[1]
        following = suffixed(paths.backend_file, NEXT)
        if following.exists():
            previous = suffixed(old, PREVIOUS)
            if not previous.exists():
                os.link(old, previous)
            os.replace(following, paths.backend_file)
    files = [paths.signing, paths.sig0]
    if paths.moving_from is None:
        files.append(paths.backend_file)
    for path in files:
        following = suffixed(path, NEXT)
        if not following.exists():
            continue
        previous = suffixed(path, PREVIOUS)
        if not previous.exists():
            os.link(path, previous)
        os.replace(following, path)


def rekey(
    config: Config,
    *,
    timeout: float = TIMEOUT,
    now: float | None = None,
    backend: str | None = None,
) -> RekeyResult:
    """Rotate this node's keys (to ``backend``'s key when given: a move, docs/enrollment.md
    section 7); RekeyError (the node keeps its current keys) when the KDC does not take them.
    Idempotent: run again after no answer, it sends the same new keys."""
    with rotation_lock(config):
        paths = key_paths(config, backend)
        state = phase(paths)
        if state == "switched":
            return RekeyResult(
                "waiting",
                paths.backend,
                "the KDC has the new keys; the old ones are kept until a distribution sealed to "
                "the new ones is opened (krs run does that): nothing sent",
            )
        if state == "idle":
            try:
                _make_next(paths)
            except OSError as exc:
                _drop_next(paths)
                raise RekeyError(
                    f"cannot write the new keys beside {paths.backend_file}: {exc}; nothing was "
                    "sent, the node keeps its current keys"
                ) from exc
        try:
            new_backend = _load_backend(paths.backend, suffixed(paths.backend_file, NEXT))
            new_signing = load_jose_key(suffixed(paths.signing, NEXT))
            new_sig0 = load_sig0(suffixed(paths.sig0, NEXT))
        except KrsError as exc:
            _drop_next(paths)  # damaged: the KDC cannot have taken them from a run that read them
            raise RekeyError(
                f"the new keys of an earlier krs rekey do not load ({exc}); run it again"
            ) from exc
        node_id = config.node_id.to_text()
        moment = time.time() if now is None else now
        keys = public_keys(node_id, paths.backend, new_backend, new_signing, new_sig0)
        body = request_body(node_id, keys, new_signing, now=moment)
        wire = build_update(config.control_zone, node_id, body, load_sig0(paths.sig0), now=moment)
        reply = _send(config, wire, timeout)
        if reply.rcode() != dns.rcode.NOERROR:
            refusal = (
                f"the KDC refused the rekey ({dns.rcode.to_text(reply.rcode())}): "
                f"{ede_text(reply) or 'no reason given'}; the node keeps its current keys"
            )
            if state == "idle":  # keys made by this run: the KDC never had them
                _drop_next(paths)
                raise RekeyError(refusal)
            # Keys an earlier run sent without an answer: the KDC may have them (and have
            # completed since), so they are never removed on a guess.
            raise RekeyError(
                f"{refusal}; the new keys of an earlier krs rekey are kept (*.next): compare "
                "krs rekey --status with krs-kdc node show, and remove them by hand only if the "
                "KDC does not list them"
            )
        try:
            _switch_files(paths)
        except OSError as exc:
            raise RekeyError(
                f"the KDC took the new keys, but putting them in place failed: {exc}; fix it and "
                "run krs rekey again, which finishes the switch (the .next files hold the keys "
                "the KDC has)"
            ) from exc
    moved = f" (moved from {paths.moving_from[0]})" if paths.moving_from else ""
    log.info(
        "node keys rotated: the KDC seals to the new %s key from now on%s", paths.backend, moved
    )
    return RekeyResult(
        "switched",
        paths.backend,
        f"the KDC has the new keys{moved}; the old ones are destroyed once a distribution sealed "
        "to the new ones is opened",
    )


def _send(config: Config, wire: bytes, timeout: float) -> dns.message.Message:
    from krs_plugin.receiver.enroll import exchange  # the one TCP UPDATE exchange

    problems = []
    for address in config.kdc_servers:
        try:
            return exchange(wire, address.host, address.port, timeout)
        except EnrollmentError as exc:
            problems.append(str(exc))
    raise RekeyError(
        f"{'; '.join(problems) or 'no KDC address configured'}; the node keeps its current keys "
        "(run krs rekey again: it sends the same new keys)"
    )


# --- used by krs run's pipeline ------------------------------------------------------------------


def alternate_keys(config: Config, backend: str) -> list[HpkeKey | JoseKey | HybridKey]:
    """Backend keys to try when the loaded one does not fit a distribution: the current file
    (rotated since ``krs run`` loaded it), then ``.next`` and ``.previous``, read now."""
    # Every backend's path, not only the loaded config's: a move (keymove) adds a backend the
    # running config may not have loaded yet.
    path = keymove.backend_paths(resolved_keys(config)).get(backend)
    if path is None:
        return []
    found: list[HpkeKey | JoseKey | HybridKey] = []
    for candidate in (path, suffixed(path, NEXT), suffixed(path, PREVIOUS)):
        with contextlib.suppress(KrsError, OSError):
            if candidate.exists():
                found.append(_load_backend(backend, candidate))
    return found


def retire_previous(config: Config, opened_with: HpkeKey | JoseKey | HybridKey) -> bool:
    """A distribution opened with ``opened_with``: when that is the current (new) backend key
    of a switched rotation, unlink the old keys (and the old backend's key of a move). True when
    it did. krs.yaml is read again: the running config may be from before the switch. Not when
    ``switched`` cannot be the phase (``_may_be_switched``): reading krs.yaml was two fifths of
    an apply's CPU (docs/benchmarks.md, "Fleet")."""
    if not _may_be_switched(config):
        return False
    with contextlib.suppress(KrsError, OSError):  # else the daemon's config says which are
        config = load_config(config.path)
    try:
        paths = key_paths(config)
    except (ConfigError, RekeyError):
        return False
    if phase(paths) != "switched":
        return False
    try:
        current = _load_backend(paths.backend, paths.backend_file)
    except KrsError:
        return False
    if current.hmac_key != opened_with.hmac_key:
        return False  # opened with the old key: keep it until the new one has been used
    try:
        with rotation_lock(config):
            for path in paths.all():
                suffixed(path, PREVIOUS).unlink(missing_ok=True)
            keymove.retire(resolved_keys(config))
    except RekeyError:
        return False  # another rotation runs: the next distribution retires them
    log.info("a distribution sealed to the new node key opened: the old node keys are destroyed")
    return True


def _may_be_switched(config: Config) -> bool:
    """Whether the signing key or the SIG(0) key has a ``.previous``: every switch makes both
    (``_switch_files``; krs.yaml's ``keys.signing`` is never rewritten by a rotation or a move,
    and the SIG(0) key is always beside it), and retiring unlinks them after the backend key's,
    so ``phase`` is ``switched`` only while one of them is there. Without one, nothing is
    retired and krs.yaml need not be read again."""
    signing = config.keys.signing
    if signing is None:
        return False  # key_paths refuses such a node: nothing to retire
    return any(suffixed(path, PREVIOUS).exists() for path in (signing, signing.parent / SIG0_FILE))


__all__ = [
    "KeyPaths",
    "RekeyError",
    "RekeyResult",
    "alternate_keys",
    "key_paths",
    "phase",
    "rekey",
    "retire_previous",
    "rotation_lock",
]
