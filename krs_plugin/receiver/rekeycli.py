"""``krs rekey`` and the node-key lines of ``krs status`` (docs/operations.md, "Rotating the
node's keys"). The work is ``receiver/rekey.py``'s; this module only reads options and prints."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from krs_plugin.cliout import emit
from krs_plugin.config import Config, load_config
from krs_plugin.crypto import load_hpke_private, load_hybrid_private, load_jose_key
from krs_plugin.errors import KrsError
from krs_plugin.protocol import sig0
from krs_plugin.receiver.rekey import NEXT, PREVIOUS, key_paths, load_sig0, phase, rekey, suffixed
from krs_plugin.rekey import key_identity


def key_status(config: Config, *, now: float | None = None) -> dict[str, object]:
    """The node's keys: their public identities (as ``krs-kdc node show`` prints them), ages (the
    files' times), and the rotation's phase."""
    now = time.time() if now is None else now
    paths = key_paths(config)
    keys: dict[str, object] = {}
    for name, path in ((paths.backend, paths.backend_file), ("signing", paths.signing),
                       ("sig0", paths.sig0)):  # fmt: skip
        keys[name] = {
            "file": str(path),
            "identity": _identity(name, path, config),
            "age": int(now - path.stat().st_mtime),
            "next": suffixed(path, NEXT).exists(),
            "previous": suffixed(path, PREVIOUS).exists(),
        }
    return {"backend": paths.backend, "rekey": phase(paths), "keys": keys}


def _identity(name: str, path: Path, config: Config) -> str:
    """The public half's identity (rekey.key_identity); never anything of the private half."""
    try:
        if name == "sig0":
            text = sig0.key_text(load_sig0(path), config.node_id)
        elif name == "hpke":
            text = load_hpke_private(path).public_hex
        elif name == "hpke-pq":
            text = load_hybrid_private(path).public_hex
        else:
            text = json.dumps(load_jose_key(path).public_jwk)
    except (KrsError, OSError) as exc:
        return f"unreadable: {exc}"
    return key_identity(name, text)


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
            f"  {name:8} {info['identity']}  age {info['age'] // 86400} d"
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
    result = rekey(config, timeout=args.timeout, backend=args.backend)
    emit(
        {"outcome": result.outcome, "backend": result.backend, "detail": result.detail},
        [f"rekey {result.outcome} ({result.backend}): {result.detail}"],
        as_json=args.json,
    )
    return 0
