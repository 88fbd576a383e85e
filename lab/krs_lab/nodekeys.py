"""A lab node's key files, as `krs enroll` would leave them: its sealing key (HPKE or JOSE) and
its signing key, private and public, in one folder; and the `krs-kdc node add` options that
register their public halves. One place for the deployments, the multi-signer lab and the
benchmarks."""

from __future__ import annotations

from pathlib import Path

from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    write_hpke_private,
    write_hpke_public,
    write_jose_private,
    write_jose_public,
)


def write_node_keys(folder: Path, backend: str = "hpke") -> list[str]:
    """node.key/node.pub and signing.key/signing.pub in ``folder``; returns the `node add`
    options naming the public files."""
    if backend == "hpke":
        key = HpkeKey.generate()
        write_hpke_private(folder / "node.key", key)
        write_hpke_public(folder / "node.pub", key)
    else:
        jkey = JoseKey.generate()
        write_jose_private(folder / "node.key", jkey)
        write_jose_public(folder / "node.pub", jkey)
    signer = JoseKey.generate()
    write_jose_private(folder / "signing.key", signer, use="sig")
    write_jose_public(folder / "signing.pub", signer, use="sig")
    return [
        f"--{backend}-pubkey", str(folder / "node.pub"),
        "--signing-pubkey", str(folder / "signing.pub"),
    ]  # fmt: skip
