"""``krs-kdc identity pq-enable|pq-status``: the KDC's ML-DSA-65 signing key (kdc/pqidentity.py;
docs/security.md, "Post-quantum sealing"; docs/kdc.md, "The post-quantum signature").
identitycli.py only wires these in."""

from __future__ import annotations

import argparse
from typing import Any

from krs_plugin.cliout import emit
from krs_plugin.kdc import pqidentity
from krs_plugin.kdc.clistate import open_store, state_dir
from krs_plugin.kdc.store import StateError


def cmd_pq_enable(args: argparse.Namespace) -> int:
    store = open_store(args)
    keys_dir = state_dir(args) / "keys"
    with store.transaction():
        key = pqidentity.enable(keys_dir)
        try:
            store.audit(
                "identity.pq.enable",
                details={"fingerprint": key.fingerprint, "file": pqidentity.PRIVATE_FILE},
            )
        except BaseException:
            # No key without its audit entry: the files go, the transaction rolls back.
            (keys_dir / pqidentity.PRIVATE_FILE).unlink(missing_ok=True)
            (keys_dir / pqidentity.PUBLIC_FILE).unlink(missing_ok=True)
            raise
    public = keys_dir / pqidentity.PUBLIC_FILE
    emit(
        {"fingerprint": key.fingerprint, "pubkey_file": str(public)},
        [
            f"ML-DSA-65 key {key.fingerprint} made; every distribution from now on carries "
            "pq_signature",
            f"give {public} to node operators: kdc.pq_verification_key in krs.yaml",
        ],
        as_json=args.json,
    )
    return 0


def cmd_pq_status(args: argparse.Namespace) -> int:
    key = pqidentity.pq_signer(state_dir(args) / "keys")
    if key is None:
        raise StateError("no ML-DSA key: distributions carry no pq_signature (pq-enable)")
    public = state_dir(args) / "keys" / pqidentity.PUBLIC_FILE
    emit(
        {"fingerprint": key.fingerprint, "pubkey_file": str(public)},
        [f"ML-DSA-65 {key.fingerprint}", f"public key: {public}"],
        as_json=args.json,
    )
    return 0


def add_parsers(group: Any, add: Any) -> None:
    add(
        group,
        "pq-enable",
        cmd_pq_enable,
        "make the KDC's ML-DSA-65 key (a 0600 file in keys/); every distribution then also "
        "carries a post-quantum signature",
    )
    add(group, "pq-status", cmd_pq_status, "the KDC's ML-DSA-65 key, if enabled")
