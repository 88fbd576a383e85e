"""A node's folder for tests that run the KRS in-process: its HPKE key, the KDC's verification
key and a krs.yaml with the directory adapter, as ``krs enroll`` leaves them
(docs/configuration.md)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krs_plugin.config import Config, load_config
from krs_plugin.crypto import HpkeKey, JoseKey, write_hpke_private, write_jose_public

NODE_ID = "ns1.edge.example."


@dataclass(frozen=True)
class NodeFolder:
    root: Path
    node_key: HpkeKey
    kdc_key: JoseKey  # the KDC's signing key; the folder holds its public half

    @property
    def config_path(self) -> Path:
        return self.root / "krs.yaml"

    @property
    def keys(self) -> Path:
        """The directory adapter's key folder."""
        return self.root / "keys"

    def config(self) -> Config:
        return load_config(self.config_path)


def write_node_folder(
    root: Path,
    zones: Iterable[str],
    *,
    node_id: str = NODE_ID,
    control_zone: str = "kdc.example.",
    extra: Mapping[str, Any] | None = None,
) -> NodeFolder:
    """Write the folder under ``root`` (``keys/`` made if missing); ``extra`` adds or replaces
    top-level krs.yaml settings (``notify``, say)."""
    folder = NodeFolder(root, HpkeKey.generate(), JoseKey.generate())
    write_hpke_private(root / "node.key", folder.node_key)
    write_jose_public(root / "kdc.pub", folder.kdc_key.public_only(), use="sig")
    folder.keys.mkdir(exist_ok=True)
    settings = {
        "node_id": node_id,
        "keys": {"hpke": "node.key"},
        "kdc": {"verification_key": "kdc.pub"},
        "control_zone": control_zone,
        "control_servers": ["127.0.0.1:5354"],
        "adapter": {"type": "directory", "settings": {"path": "keys"}},
        "zones": list(zones),
        "state": "krs.db",
        **(extra or {}),
    }
    folder.config_path.write_text(json.dumps(settings))
    return folder
