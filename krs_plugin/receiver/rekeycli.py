"""``krs rekey`` and the node-key lines of ``krs status`` (docs/operations.md, "Rotating the
node's keys"). The work is ``receiver/rekey.py``'s; this module only reads options and prints."""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

from krs_plugin.cliout import emit
from krs_plugin.config import Config, load_config
from krs_plugin.crypto import load_hpke_private, load_jose_key
from krs_plugin.errors import KrsError
from krs_plugin.receiver.rekey import NEXT, PREVIOUS, key_paths, phase, rekey, suffixed


def key_status(config: Config, *, now: float | None = None) -> dict[str, object]:
    """The node's keys: public thumbprints, ages (file times), and the rotation's phase."""
    now = time.time() if now is None else now
    paths = key_paths(config)
    keys: dict[str, object] = {}
    for name, path in (
        ("backend", paths.backend_file),
        ("signing", paths.signing),
        ("sig0", paths.sig0),
    ):
        keys[name] = {
            "file": str(path),
            "thumbprint": _thumbprint(name, paths.backend, path),
            "age": int(now - path.stat().st_mtime),
            "next": suffixed(path, NEXT).exists(),
            "previous": suffixed(path, PREVIOUS).exists(),
        }
    return {"backend": paths.backend, "rekey": phase(paths), "keys": keys}


def _thumbprint(name: str, backend: str, path: Path) -> str:
    try:
        if name == "backend" and backend == "hpke":
            return load_hpke_private(path).fingerprint
        if name in ("backend", "signing"):
            return load_jose_key(path).thumbprint
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]  # of the PEM; never shown
    except (KrsError, OSError) as exc:
        return f"unreadable: {exc}"


def status_lines(config: Config) -> list[str]:
    """``krs status``'s node-key part; one line saying why when the keys cannot be read."""
    try:
        status = key_status(config)
    except (KrsError, OSError) as exc:
        return [f"node keys: {exc}"]
    lines = [f"node keys ({status['backend']}): rotation {status['rekey']}"]
    keys = status["keys"]
    assert isinstance(keys, dict)
    for name, info in keys.items():
        lines.append(
            f"  {name:8} {info['thumbprint']}  age {info['age'] // 86400} d"
            + ("  (old key kept until a distribution sealed to the new one opens)"
               if info["previous"] else "")
            + ("  (new key, the KDC's answer not yet known)" if info["next"] else "")
        )  # fmt: skip
    return lines


def rekey_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.status:
        status = key_status(config)
        emit(status, status_lines(config), as_json=args.json)
        return 0
    result = rekey(config, timeout=args.timeout)
    emit(
        {"outcome": result.outcome, "backend": result.backend, "detail": result.detail},
        [f"rekey {result.outcome} ({result.backend}): {result.detail}"],
        as_json=args.json,
    )
    return 0
