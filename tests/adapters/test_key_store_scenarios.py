"""The storage-level rows of the adapter scenario table: what an adapter that keeps keys in files
stores, read back without it. No DNS server is involved (test_scenarios.py asks real servers).

Each adapter has a lab: it makes the adapter's store in a temporary directory (``settings()``)
and reads what the store holds with code of its own, not the adapter's (``keys()``, ``stored()``).
The adapters are made through the registry, found through the entry-point group as krs finds
them: the built-in ``directory``, and ``jsonkeys``, the example of an adapter shipped outside
krs-plugin (examples/krs-adapter-jsonkeys), which pip first installs into a temporary directory,
as an operator would install it next to krs-plugin. A sixth adapter's lab is one line in LABS.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import dns.name
import pytest

from krs_lab.ports import free_port
from krs_plugin.adapters import registry
from krs_plugin.adapters.base import BaseAdapter, KeyPlan, PlannedKey, Role, Verification
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import DnssecKey, KeyTiming, generate_key, read_bind_key_pair
from krs_plugin.errors import AdapterError, ConfigError
from tests.fsutil import unwritable

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "krs-adapter-jsonkeys"
PACKAGE = "krs_adapter_jsonkeys"
BUILT_IN = {"directory", "bind9", "knot", "nsd", "powerdns"}
ZONE = dns.name.from_text("example.com.")
OTHER = dns.name.from_text("example.net.")


class KeyStoreLab(Protocol):
    """What the table needs of an adapter's lab (krs_adapter_jsonkeys/lab.py is one)."""

    adapter_name: str
    """The name the adapter is registered under (``adapter.type``)."""
    keeps_roles: bool
    """The store records KSK/ZSK/CSK (BIND key files only have the flags)."""
    root: Path

    def settings(self) -> dict[str, Any]: ...
    def stored(self) -> dict[str, tuple[int, bytes]]:
        """Every file of the store with its mode and bytes."""
        ...

    def secret_files(self) -> list[Path]: ...
    def keys(self, zone: dns.name.Name) -> Mapping[int, tuple[DnssecKey, KeyTiming, str | None]]:
        """The zone's keys by tag, each rebuilt from its stored private key (which must derive
        the stored DNSKEY), with its timing and role (None where the store keeps none)."""
        ...


class DirectoryLab:
    """The built-in directory adapter's store: BIND key files, read with krs_plugin.dnssec's
    ``read_bind_key_pair`` (not the adapter's KeyFolder)."""

    adapter_name = "directory"
    keeps_roles = False

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = root

    def settings(self) -> dict[str, Any]:
        return {"path": str(self.root)}

    def stored(self) -> dict[str, tuple[int, bytes]]:
        return {
            p.name: (stat.S_IMODE(p.stat().st_mode), p.read_bytes())
            for p in sorted(self.root.iterdir())
        }

    def secret_files(self) -> list[Path]:
        return sorted(self.root.glob("*.private"))

    def keys(self, zone: dns.name.Name) -> dict[int, tuple[DnssecKey, KeyTiming, str | None]]:
        found: dict[int, tuple[DnssecKey, KeyTiming, str | None]] = {}
        for private in sorted(self.root.glob(f"K{zone.to_text()}+*.private")):
            key, timing = read_bind_key_pair(private)
            found[key.key_tag] = (key, timing, None)
        return found


def imported(spec: str) -> Callable[[Path], KeyStoreLab]:
    """The lab class ``module:Class``, imported when a test first asks for it: an installed
    package is importable only once the session's fixture has installed it."""

    def make(root: Path) -> KeyStoreLab:
        module, _, name = spec.partition(":")
        lab: KeyStoreLab = getattr(importlib.import_module(module), name)(root)
        return lab

    return make


LABS: dict[str, Callable[[Path], KeyStoreLab]] = {
    "directory": DirectoryLab,
    "jsonkeys": imported("krs_adapter_jsonkeys.lab:JsonKeysLab"),
}


# --- the example package, installed from outside the source tree ----------------------------


@pytest.fixture(scope="module")
def jsonkeys_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """examples/krs-adapter-jsonkeys built and installed by pip into a temporary directory, first
    on sys.path while this module runs: what ``pip install ./krs-adapter-jsonkeys`` does next to
    krs-plugin, without the network (the venv's setuptools builds it). Not for the session:
    the registry of every later test module would list jsonkeys too."""
    base = tmp_path_factory.mktemp("jsonkeys")
    source, site = base / "src", base / "site"
    # setuptools builds in the source directory (build/, *.egg-info): a copy keeps the checkout
    # clean, and stale build/lib modules out of the wheel.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__py*"))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    pip += ["--no-build-isolation", "--check-build-dependencies", "--no-cache-dir"]
    done = subprocess.run(
        [*pip, "--target", str(site), str(source)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            "pip could not build examples/krs-adapter-jsonkeys offline; the venv needs its build "
            f"requirement (setuptools>=77: ./run setup):\n{done.stdout}{done.stderr}"
        )
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]
        importlib.invalidate_caches()


@pytest.fixture(params=sorted(LABS))
def store(request: pytest.FixtureRequest, tmp_path: Path, jsonkeys_site: Path) -> KeyStoreLab:
    return LABS[request.param](tmp_path / "store")


# --- helpers ----------------------------------------------------------------------------------


def make(lab: KeyStoreLab) -> BaseAdapter[Any]:
    adapter = registry.make_adapter(lab.adapter_name, lab.settings(), zones=(ZONE, OTHER))
    assert isinstance(adapter, BaseAdapter)  # its hooks are replaced in the failure scenarios
    return adapter


def key(role: Role, zone: dns.name.Name = ZONE, algorithm: int = 13) -> DnssecKey:
    return generate_key(zone, algorithm, 256 if role == "ZSK" else 257)


def now_timing(**changes: int) -> KeyTiming:
    now = int(time.time()) - 1
    return KeyTiming(**{"created": now, "publish": now, "activate": now, **changes})


def planned(role: Role, zone: dns.name.Name = ZONE, algorithm: int = 13) -> PlannedKey:
    return PlannedKey(key(role, zone, algorithm), role, now_timing())


def tag(p: PlannedKey) -> int:
    return p.key.key_tag


def held(lab: KeyStoreLab, zone: dns.name.Name = ZONE) -> dict[int, tuple[str, KeyTiming, Any]]:
    """The zone's keys as stored: DNSKEY (derived from the stored private key), timing, role."""
    return {t: (k.dnskey_text(), timing, role) for t, (k, timing, role) in lab.keys(zone).items()}


def expected(lab: KeyStoreLab, *keys: PlannedKey) -> dict[int, tuple[str, KeyTiming, Any]]:
    return {
        tag(p): (p.key.dnskey_text(), p.timing, p.role if lab.keeps_roles else None) for p in keys
    }


def mtimes(lab: KeyStoreLab) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in lab.root.iterdir()}


def fail_verify(adapter: BaseAdapter[Any], zone: dns.name.Name | None = None) -> None:
    """Make ``adapter`` see, after writing, something else than it planned (for ``zone`` only,
    when given): the last step before success fails, with everything written."""
    real = adapter.verify

    def verify(change: Any) -> Verification:
        if zone is None or change.zone == zone:
            return Verification(False, ("planted: not what was planned",))
        return real(change)

    adapter.verify = verify  # type: ignore[method-assign]


# --- the scenarios ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [8, 13, 16])
def test_ksk_and_zsk_are_stored_as_planned_private_keys_0600(
    store: KeyStoreLab, algorithm: int
) -> None:
    adapter = make(store)
    ksk, zsk = planned("KSK", algorithm=algorithm), planned("ZSK", algorithm=algorithm)
    result = adapter.apply(ZONE, KeyPlan(ZONE, (ksk, zsk)))
    assert result.changed and result.installed == (tag(ksk), tag(zsk))
    assert result.verification.ok
    assert held(store) == expected(store, ksk, zsk)
    assert {k.key_tag for k in adapter.current_keys(ZONE)} == {tag(ksk), tag(zsk)}
    assert store.secret_files()
    for path in store.secret_files():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize("algorithm", [13, 15])
def test_csk_is_stored_as_planned(store: KeyStoreLab, algorithm: int) -> None:
    csk = planned("CSK", algorithm=algorithm)
    assert make(store).apply(ZONE, KeyPlan(ZONE, (csk,))).installed == (tag(csk),)
    assert held(store) == expected(store, csk)
    assert held(store, OTHER) == {}


def test_zsk_rollover_publish_then_activate_then_retire_then_remove(store: KeyStoreLab) -> None:
    adapter = make(store)
    ksk, old = planned("KSK"), planned("ZSK")
    adapter.apply(ZONE, KeyPlan(ZONE, (ksk, old)))

    # 1. the new ZSK is published ahead of use (activation in an hour)
    new = key("ZSK")
    published = PlannedKey(new, "ZSK", now_timing(activate=int(time.time()) + 3600))
    assert adapter.apply(ZONE, KeyPlan(ZONE, (published,))).installed == (new.key_tag,)
    assert held(store) == expected(store, ksk, old, published)

    # 2. it becomes active, and the old one is retired, to be deleted at the plan's time
    active = PlannedKey(new, "ZSK", now_timing())
    delete_at = int(time.time()) + 7200
    start = int(time.time())
    result = adapter.apply(ZONE, KeyPlan(ZONE, (active,), (tag(old),), retire_delete_at=delete_at))
    assert result.installed == (new.key_tag,) and result.retired == (tag(old),)
    now = held(store)
    retired = now.pop(tag(old))
    assert now == expected(store, ksk, active)
    assert retired[0] == old.key.dnskey_text()
    assert retired[1].inactive is not None and start <= retired[1].inactive <= int(time.time())
    assert retired[1].delete == delete_at
    assert replace(retired[1], inactive=None, delete=None) == old.timing

    # 3. the old one is removed
    assert adapter.apply(ZONE, KeyPlan(ZONE, remove=(tag(old),))).removed == (tag(old),)
    assert held(store) == expected(store, ksk, active)


def test_retire_and_remove_touch_only_the_keys_named(store: KeyStoreLab) -> None:
    adapter = make(store)
    ksk, gone, retiring, kept = planned("KSK"), planned("ZSK"), planned("ZSK"), planned("ZSK")
    adapter.apply(ZONE, KeyPlan(ZONE, (ksk, gone, retiring, kept)))
    elsewhere = planned("CSK", OTHER)
    adapter.apply(OTHER, KeyPlan(OTHER, (elsewhere,)))
    other_zone = {n: v for n, v in store.stored().items() if "example.net." in n}

    result = adapter.apply(ZONE, KeyPlan(ZONE, retire=(tag(retiring),), remove=(tag(gone),)))
    assert result.retired == (tag(retiring),) and result.removed == (tag(gone),)
    now = held(store)
    timing = now.pop(tag(retiring))[1]
    assert now == expected(store, ksk, kept)
    assert timing.inactive is not None and timing.delete is None  # no retire_delete_at
    assert held(store, OTHER) == expected(store, elsewhere)
    assert {n: v for n, v in store.stored().items() if "example.net." in n} == other_zone

    absent = next(t for t in range(1, 65536) if t not in {tag(k) for k in (ksk, retiring, kept)})
    before = store.stored()
    assert not adapter.apply(ZONE, KeyPlan(ZONE, retire=(absent,), remove=(absent,))).changed
    assert store.stored() == before


def test_reapplying_the_same_plan_changes_nothing(store: KeyStoreLab) -> None:
    adapter = make(store)
    ksk, zsk = planned("KSK"), planned("ZSK")
    plan = KeyPlan(ZONE, (ksk, zsk))
    adapter.apply(ZONE, plan)
    before, touched = store.stored(), mtimes(store)
    again = adapter.apply(ZONE, plan)
    assert not again.changed and again.installed == () and again.verification.ok
    assert store.stored() == before and mtimes(store) == touched

    retire = KeyPlan(ZONE, retire=(tag(zsk),), retire_delete_at=int(time.time()) + 60)
    assert adapter.apply(ZONE, retire).retired == (tag(zsk),)
    before, touched = store.stored(), mtimes(store)
    assert not adapter.apply(ZONE, retire).changed  # already inactive: its times stay
    assert store.stored() == before and mtimes(store) == touched


def test_a_failed_apply_leaves_the_store_exactly_as_before(store: KeyStoreLab) -> None:
    # Everything written, then the last check fails: apply_atomically puts the zone back.
    adapter = make(store)
    ksk, old = planned("KSK"), planned("ZSK")
    adapter.apply(ZONE, KeyPlan(ZONE, (ksk, old)))
    before = store.stored()
    fail_verify(adapter)
    with pytest.raises(AdapterError) as failure:
        apply_atomically(adapter, [KeyPlan(ZONE, (planned("ZSK"),), remove=(tag(old),))])
    assert store.stored() == before
    message = str(failure.value)
    assert "step 'verify' failed: planted" in message and "; rolled back: " in message
    assert held(store) == expected(store, ksk, old)


def test_a_step_failing_midway_leaves_the_store_exactly_as_before(
    store: KeyStoreLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The second key cannot be written (the disk is full): the first one, written already
    # (the directory adapter writes key by key), must go again, and the removed key come back.
    adapter = make(store)
    ksk, old = planned("KSK"), planned("ZSK")
    adapter.apply(ZONE, KeyPlan(ZONE, (ksk, old)))
    before = store.stored()
    real, calls = adapter.write_key, []

    def write_key(change: Any, key: PlannedKey) -> bool:
        calls.append(key)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(change, key)

    monkeypatch.setattr(adapter, "write_key", write_key)
    plan = KeyPlan(ZONE, (planned("ZSK"), planned("ZSK")), remove=(tag(old),))
    with pytest.raises(AdapterError) as failure:
        apply_atomically(adapter, [plan])
    assert "step 'write key" in str(failure.value) and "No space left" in str(failure.value)
    assert store.stored() == before


def test_an_unwritable_store_is_refused_before_anything_is_written(store: KeyStoreLab) -> None:
    adapter = make(store)
    adapter.apply(ZONE, KeyPlan(ZONE, (planned("CSK"),)))
    before = store.stored()
    with unwritable(store.root), pytest.raises(AdapterError) as failure:
        apply_atomically(adapter, [KeyPlan(ZONE, (planned("ZSK"),))])
    assert f"{store.root} is not writable; nothing was changed" in str(failure.value)
    assert store.stored() == before


def test_restore_undoes_a_completed_apply_removed_keys_included(store: KeyStoreLab) -> None:
    # What the pipeline does when a later zone of the distribution fails, and at start-up after
    # a crash: the snapshot taken before the apply brings back even a key it deleted.
    adapter = make(store)
    ksk, zsk, spare = planned("KSK"), planned("ZSK"), planned("ZSK")
    adapter.apply(ZONE, KeyPlan(ZONE, (ksk, zsk, spare)))
    before, snapshot = store.stored(), adapter.snapshot(ZONE)
    result = adapter.apply(
        ZONE, KeyPlan(ZONE, (planned("ZSK"),), retire=(tag(spare),), remove=(tag(zsk),))
    )
    assert result.installed and result.retired and result.removed
    adapter.restore(ZONE, snapshot)
    assert store.stored() == before
    assert held(store) == expected(store, ksk, zsk, spare)


def test_restore_of_a_zone_first_apply_leaves_no_key_of_it(store: KeyStoreLab) -> None:
    adapter = make(store)
    snapshot = adapter.snapshot(ZONE)
    adapter.apply(ZONE, KeyPlan(ZONE, (planned("CSK"),)))
    assert held(store) != {}
    adapter.restore(ZONE, snapshot)
    assert store.stored() == {} and held(store) == {}


def test_two_zones_one_failing_both_are_restored(store: KeyStoreLab) -> None:
    adapter = make(store)
    old = {zone: planned("CSK", zone) for zone in (ZONE, OTHER)}
    for zone, csk in old.items():
        adapter.apply(zone, KeyPlan(zone, (csk,)))
    before = store.stored()
    fail_verify(adapter, OTHER)  # the first zone is applied, the second fails
    plans = [KeyPlan(z, (planned("CSK", z),), remove=(tag(old[z]),)) for z in (ZONE, OTHER)]
    with pytest.raises(AdapterError) as failure:
        apply_atomically(adapter, plans)
    assert store.stored() == before
    message = str(failure.value)
    assert f"zone {OTHER}: step 'verify' failed" in message
    assert f"rolled back: zone {ZONE}: " in message and f"; zone {OTHER}: " in message
    for zone, csk in old.items():
        assert held(store, zone) == expected(store, csk)


def test_check_says_what_is_missing_and_settings_are_checked(store: KeyStoreLab) -> None:
    assert make(store).check() == []
    missing = store.root / "missing"
    name = store.adapter_name
    (problem,) = registry.make_adapter(name, {"path": str(missing)}).check()
    assert problem.what.endswith(f"{missing} does not exist")
    assert problem.fix == f"mkdir -m 0700 {missing}"
    with pytest.raises(ConfigError, match=re.escape(f"unknown key(s) for {name}: paht")):
        registry.make_adapter(name, {**store.settings(), "paht": "/tmp"})
    with pytest.raises(ConfigError, match=re.escape("adapter.settings.path: required")):
        registry.make_adapter(name, {})


def test_jsonkeys_refuses_a_damaged_store_file_and_check_names_it(
    jsonkeys_site: Path, tmp_path: Path
) -> None:
    lab = LABS["jsonkeys"](tmp_path / "store")
    file = lab.root / "example.com.json"
    file.write_text('{"format": 1, "keys": [{"tag": "not a number"}]}')
    adapter = make(lab)
    (problem,) = adapter.check()
    assert problem.what.startswith(f"{file}: not a jsonkeys key store")
    with pytest.raises(AdapterError) as failure:
        apply_atomically(adapter, [KeyPlan(ZONE, (planned("CSK"),))])
    assert "not a jsonkeys key store" in str(failure.value)
    assert "nothing was changed" in str(failure.value)
    assert file.read_text() == '{"format": 1, "keys": [{"tag": "not a number"}]}'


# --- found through the entry point, from outside the source tree ------------------------------


def test_the_registry_finds_jsonkeys_through_the_installed_entry_point(jsonkeys_site: Path) -> None:
    entry = registry.installed()["jsonkeys"]
    assert entry.value == "krs_adapter_jsonkeys.adapter:JsonKeysAdapter"
    assert entry.dist is not None and entry.dist.name == "krs-adapter-jsonkeys"
    assert set(registry.names()) == BUILT_IN | {"jsonkeys"}
    module = sys.modules[registry.adapter_class("jsonkeys").__module__]
    assert module.__file__ is not None
    assert Path(module.__file__).is_relative_to(jsonkeys_site)  # the installed copy,
    assert not Path(module.__file__).is_relative_to(EXAMPLE)  # not the source tree


def krs_yaml(directory: Path, adapter_type: str, **settings: Any) -> Path:
    """A krs.yaml whose node key files need not exist (``krs doctor`` reports them)."""
    path = directory / f"krs-{adapter_type}.yaml"
    raw = {
        "node_id": "ns1.edge.example.",
        "keys": {"hpke": "node.key"},
        "kdc": {"verification_key": "kdc.pub"},
        "control_zone": "kdc.example.",
        "control_servers": [f"127.0.0.1:{free_port()}"],
        "adapter": {"type": adapter_type, "settings": settings},
        "zones": [ZONE.to_text()],
        "state": "krs.db",
    }
    path.write_text(json.dumps(raw))
    return path


def python(site: Path | None, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """This venv's Python in a new process, with ``site`` as its only PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, check=False
    )


LOAD_BOTH = textwrap.dedent(
    """
    import json, sys
    from krs_plugin.adapters import registry
    from krs_plugin.config import load_config
    from krs_plugin.errors import ConfigError

    found = {"names": registry.names()}
    if "jsonkeys" in found["names"]:
        found["module"] = sys.modules[registry.adapter_class("jsonkeys").__module__].__file__
        found["type"] = load_config(sys.argv[1], require_files=False).adapter.type
    try:
        load_config(sys.argv[2], require_files=False)
    except ConfigError as exc:
        found["nosuch"] = str(exc)
    print(json.dumps(found))
    """
)


def test_another_process_finds_it_when_installed_and_only_then(
    jsonkeys_site: Path, tmp_path: Path
) -> None:
    configs = [str(krs_yaml(tmp_path, t, path="keys")) for t in ("jsonkeys", "nosuch")]
    done = python(jsonkeys_site, "-c", LOAD_BOTH, *configs, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert set(found["names"]) == BUILT_IN | {"jsonkeys"}
    assert found["module"].startswith(f"{jsonkeys_site}/")
    assert found["type"] == "jsonkeys"
    assert "adapter.type: no adapter 'nosuch' is installed" in found["nosuch"]
    assert "bind9, directory, jsonkeys, knot, nsd, powerdns" in found["nosuch"]

    without = python(None, "-c", LOAD_BOTH, *configs, cwd=tmp_path)
    assert without.returncode == 0, without.stderr
    assert "jsonkeys" not in json.loads(without.stdout)["names"]


def test_krs_doctor_in_another_process_reports_the_missing_key_store_with_its_fix(
    jsonkeys_site: Path, tmp_path: Path
) -> None:
    config = krs_yaml(tmp_path, "jsonkeys", path="keys")
    doctor = ("-m", "krs_plugin.cli", "doctor", "--json", "--config", str(config))
    done = python(jsonkeys_site, *doctor, cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # the node's key files are missing too
    adapter = [c for c in json.loads(done.stdout) if c["name"] == "adapter"]
    keys = tmp_path / "keys"
    assert adapter == [
        {
            "name": "adapter",
            "status": "error",
            "message": f"jsonkeys: key store {keys} does not exist",
            "fix": f"mkdir -m 0700 {keys}",
        }
    ]
    keys.mkdir(mode=0o700)
    done = python(jsonkeys_site, *doctor, cwd=tmp_path)
    adapter = [c for c in json.loads(done.stdout) if c["name"] == "adapter"]
    assert adapter == [
        {"name": "adapter", "status": "ok", "message": "jsonkeys: ready to install keys", "fix": ""}
    ]


def test_a_second_package_registering_the_same_name_is_refused(
    jsonkeys_site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Which adapter runs must never depend on the order of sys.path.
    info = tmp_path / "krs_adapter_jsonkeys_fork-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: krs-adapter-jsonkeys-fork\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text("[krs_plugin.adapters]\njsonkeys = fork.adapter:Fork\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as refused:
        registry.make_adapter("jsonkeys", {"path": str(tmp_path)})
    message = str(refused.value)
    assert "adapter 'jsonkeys' is registered twice" in message
    assert "krs_adapter_jsonkeys.adapter:JsonKeysAdapter" in message
    assert "fork.adapter:Fork" in message and "uninstall one of the packages" in message
