"""What `krs run`, `krs keys` and `krs doctor` compare (receiver/reconcile.py): the keys each
zone's newest applied distribution installed against what the adapter lists now, and the
adapter's identity recorded with each apply."""

from __future__ import annotations

import json
import time
from pathlib import Path

from krs_plugin.adapters import make_adapter
from krs_plugin.config import Config, load_config
from krs_plugin.dnssec import generate_key, write_bind_key_pair
from krs_plugin.receiver.reconcile import adapter_identity, compare
from krs_plugin.receiver.store import ReceiverStore

CZ = "kdc.example."
ZONES = ("example.com.", "example.net.")


def config(tmp_path: Path, folder: str = "keys") -> Config:
    (tmp_path / folder).mkdir(exist_ok=True)
    (tmp_path / "krs.yaml").write_text(
        json.dumps(
            {
                "node_id": "ns1.edge.example.",
                "keys": {"hpke": "node.key"},
                "kdc": {"verification_key": "kdc.pub"},
                "control_zone": CZ,
                "control_servers": ["127.0.0.1:5354"],
                "zones": list(ZONES),
                "state": "krs.db",
                "adapter": {"type": "directory", "settings": {"path": folder}},
            }
        )
    )
    return load_config(tmp_path / "krs.yaml", require_files=False)


def install(cfg: Config, store: ReceiverStore, dist_id: str, zone: str, *flags: int) -> list[int]:
    """Write keys to the folder as the directory adapter does and record the apply."""
    folder = Path(cfg.adapter.settings["path"])
    folder = folder if folder.is_absolute() else cfg.path.parent / folder
    keys = [generate_key(zone, 13, f) for f in flags]
    for key in keys:
        write_bind_key_pair(folder, key)
    rows = [(zone, k.key_tag, 13, k.flags) for k in keys]
    store.record_applied(dist_id, CZ, int(dist_id, 16), rows, [], {}, adapter=adapter_identity(cfg))
    return [k.key_tag for k in keys]


def test_a_zone_whose_keys_are_all_there_is_in_sync(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = ReceiverStore(cfg.state)
    install(cfg, store, "6a000001", "example.com.", 257, 256)
    (result,) = compare(cfg, store, make_adapter(cfg))  # example.net.: nothing applied yet
    assert result.zone == "example.com." and result.in_sync and result.missing == ()


def test_a_key_gone_from_the_folder_is_named_with_the_distribution_that_installed_it(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    store = ReceiverStore(cfg.state)
    _, zsk = install(cfg, store, "6a000001", "example.com.", 257, 256)
    for path in (tmp_path / "keys").glob(f"*+{zsk:05d}.*"):
        path.unlink()
    (result,) = compare(cfg, store, make_adapter(cfg))
    assert result.missing == ((zsk, 13),)
    assert not result.adapter_changed
    assert result.reason == (
        f"the key folder {tmp_path / 'keys'} does not hold key(s) {zsk} of example.com. that "
        "distribution "
        "6a000001 installed"
    )


def test_another_folder_is_another_adapter_and_says_so(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = ReceiverStore(cfg.state)
    install(cfg, store, "6a000001", "example.com.", 257)
    moved = config(tmp_path, "other")
    assert adapter_identity(moved) != adapter_identity(cfg)
    assert adapter_identity(moved).startswith("directory:")
    (result,) = compare(moved, store, make_adapter(moved))
    assert result.adapter_changed and len(result.missing) == 1
    assert f"installed through adapter {adapter_identity(cfg)}" in result.reason


def test_only_the_newest_distribution_of_a_zone_is_expected(tmp_path: Path) -> None:
    """An earlier distribution's key may have been retired since; the server removes it."""
    cfg = config(tmp_path)
    store = ReceiverStore(cfg.state)
    (old,) = install(cfg, store, "6a000001", "example.com.", 256)
    (new,) = install(cfg, store, "6a000002", "example.com.", 256)
    (net,) = install(cfg, store, "6a000003", "example.net.", 256)
    for path in (tmp_path / "keys").glob(f"*+{old:05d}.*"):
        path.unlink()
    expected = store.expected_keys()
    assert expected["example.com."].distribution_id == "6a000002"
    assert [t for t, _, _ in expected["example.com."].keys] == [new]
    assert [t for t, _, _ in expected["example.net."].keys] == [net]
    assert all(r.in_sync for r in compare(cfg, store, make_adapter(cfg)))


def test_a_database_from_before_the_adapter_was_recorded_still_compares(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    store = ReceiverStore(cfg.state)
    store.db.execute("DROP TABLE applied_adapters")  # as a krs.db made by an earlier version
    key = generate_key("example.com.", 13, 257)
    store.record_applied("6a000001", CZ, 0x6A000001, [("example.com.", key.key_tag, 13, 257)],
                         [], {}, now=time.time())  # fmt: skip
    (result,) = compare(cfg, store, make_adapter(cfg))
    assert store.expected_keys()["example.com."].adapter is None
    assert not result.adapter_changed and result.missing == ((key.key_tag, 13),)
    install(cfg, store, "6a000002", "example.com.", 257)  # the next apply creates the table
    assert store.expected_keys()["example.com."].adapter == adapter_identity(cfg)
    assert all(r.in_sync for r in compare(cfg, store, make_adapter(cfg)))
