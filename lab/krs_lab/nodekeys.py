"""A lab node's key files, as `krs enroll` would leave them: its sealing key (hpke, jose or
hpke-pq) and its signing key, private and public, in one folder; and the `krs-kdc node add`
options that register their public halves. One place for the deployments, the multi-signer lab
and the benchmarks."""

from __future__ import annotations

from pathlib import Path

from krs_plugin.crypto import JoseKey, write_jose_private, write_jose_public
from krs_plugin.crypto.nodekey import generate_node_key, write_node_private, write_node_public


def write_node_keys(folder: Path, backend: str = "hpke") -> list[str]:
    """node.key/node.pub and signing.key/signing.pub in ``folder``; returns the `node add`
    options naming the public files (``--hpke-pq-pubkey`` for the hybrid backend)."""
    key = generate_node_key(backend)  # the hook krs enroll and krs rekey use (crypto/nodekey.py)
    write_node_private(folder / "node.key", backend, key)
    write_node_public(folder / "node.pub", backend, key)
    signer = JoseKey.generate()
    write_jose_private(folder / "signing.key", signer, use="sig")
    write_jose_public(folder / "signing.pub", signer, use="sig")
    return [
        f"--{backend}-pubkey", str(folder / "node.pub"),
        "--signing-pubkey", str(folder / "signing.pub"),
    ]  # fmt: skip
