"""The jsonkeys adapter's lab: what krs-plugin's storage-level scenario table needs to drive it
(tests/adapters/test_key_store_scenarios.py in krs-plugin; docs/adapters.md, "A worked example").

The table makes the adapter through the registry with ``settings()``, applies plans, and asserts
on what ``keys()`` and ``stored()`` read back. Both read the store as the signer would: the JSON
is parsed here and every key rebuilt with krs_plugin.dnssec, never through adapter.py, so a
scenario checks what was stored, not what the adapter believes it stored. Only the tests import
this module; krs never does.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, NamedTuple

import dns.name

from krs_plugin.dnssec import (
    DnssecKey,
    KeyTiming,
    check_key_matches,
    parse_bind_private,
    parse_dnskey_text,
)


class StoredKey(NamedTuple):
    """One key as the store holds it: the key rebuilt from its private part (which must derive
    the stored DNSKEY), its timing and, where the store keeps one, its role."""

    key: DnssecKey
    timing: KeyTiming
    role: str | None


class JsonKeysLab:
    """A jsonkeys key store in ``root`` (created 0700), and what it holds."""

    adapter_name = "jsonkeys"
    keeps_roles = True

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root

    def settings(self) -> dict[str, Any]:
        """``adapter.settings`` for a store in ``root``."""
        return {"path": str(self.root)}

    def stored(self) -> dict[str, tuple[int, bytes]]:
        """Every file of the store, hidden ones included, with its mode and bytes: a rollback
        must bring back exactly this."""
        return {
            p.name: (stat.S_IMODE(p.stat().st_mode), p.read_bytes())
            for p in sorted(self.root.iterdir())
        }

    def secret_files(self) -> list[Path]:
        """The files holding private keys: only their owner may read them."""
        return sorted(p for p in self.root.iterdir() if p.name.endswith(".json"))

    def keys(self, zone: dns.name.Name) -> dict[int, StoredKey]:
        """The zone's keys by tag, from the file named after the zone (none without a file)."""
        name = zone.canonicalize().to_text()
        path = self.root / f"{name}json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        assert doc["format"] == 1 and doc["zone"] == name, f"{path}: {doc['format']} {doc['zone']}"
        keys = {}
        for item in doc["keys"]:
            where = f"{path}: key {item['tag']}"
            owner, ttl, dnskey = parse_dnskey_text(item["dnskey"], where=where)
            algorithm, private, times_in_private = parse_bind_private(item["private"], where)
            key = DnssecKey(owner, algorithm, dnskey.flags, private, ttl)
            check_key_matches(key, dnskey, item["tag"], where=where)
            assert (item["algorithm"], item["flags"]) == (key.algorithm, key.flags), where
            assert times_in_private == KeyTiming(), f"{where}: times belong in 'timing' only"
            keys[key.key_tag] = StoredKey(key, KeyTiming(**item["timing"]), item["role"])
        return keys
