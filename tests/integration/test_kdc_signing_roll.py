"""The KDC's signing-key roll with real ``krs-kdc serve`` and ``krs run`` processes
(docs/security.md, "Rotation"): four nodes (directory adapter), one stopped for part of the
overlap, learn the next key, the KDC switches once every node trusts it and retires the old key
once every node trusts only the new one; a key event during the roll reaches every node. A node
offline for the whole overlap refuses the new key's distributions at stage ``signature`` with
a message naming the way back, and recovers with ``krs trust-kdc-key``; the pkcs11 custody's
old token objects are destroyed."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krs_lab.deployment import BIN, NODE, ZONE, Deployment, run, wait_until
from krs_lab.nodekeys import write_node_keys
from krs_lab.ports import free_port
from krs_plugin.crypto import load_jose_key

SERVE = ["--resend-after", "2"]  # nodes that have not confirmed get the roll again every 2 s


class Fleet:
    """One KDC and ``count`` nodes serving ZONE, each with its own copy of the KDC's key
    (as an operator copies kdc.signing.pubkey at enrollment), krs.yaml and krs.db."""

    def __init__(self, root: Path, count: int) -> None:
        self.lab = Deployment(root)
        self.configs: dict[str, Path] = {NODE: self.lab.config_path}
        self._own_key(self.lab.node_dir, self.lab.config)
        self.lab.write_config()
        for i in range(2, count + 1):
            node = f"ns{i}.edge.example."
            folder = root / f"node{i}"
            (folder / "keys").mkdir(parents=True)
            port = free_port()
            self.lab.kdc(
                "node", "add", node, "--notify", f"127.0.0.1:{port}",
                *write_node_keys(folder, "hpke"), "--zone", ZONE,
            )  # fmt: skip
            config: dict[str, Any] = json.loads(json.dumps(self.lab.config))
            config.update(
                node_id=node,
                keys={"hpke": str(folder / "node.key"), "signing": str(folder / "signing.key")},
                notify={"listen": [f"127.0.0.1:{port}"], "allowed_sources": ["127.0.0.0/8"]},
                adapter={"type": "directory", "settings": {"path": str(folder / "keys")}},
                state=str(folder / "krs.db"),
            )
            self._own_key(folder, config)
            path = folder / "krs.yaml"
            path.write_text(json.dumps(config))
            self.configs[node] = path

    def _own_key(self, folder: Path, config: dict[str, Any]) -> None:
        copy = folder / "kdc.signing.pubkey"
        shutil.copy(self.lab.state / "keys" / "kdc.signing.pubkey", copy)
        config["kdc"] = {"verification_key": str(copy)}

    def start(self, node: str) -> None:
        name = node.split(".")[0]
        log = self.lab.logs / f"{name}.log"
        seen = log.read_text().count("listening for NOTIFY") if log.exists() else 0
        process = self.lab.start(name, [str(BIN / "krs"), "run", "-c", str(self.configs[node])])
        wait_until(
            lambda: (
                log.read_text().count("listening for NOTIFY") > seen or process.poll() is not None
            ),
            30,
            f"krs run of {node}",
        )
        assert process.poll() is None, log.read_text()

    def stop(self, node: str) -> None:
        self.lab.stop(node.split(".")[0])

    def krs(self, node: str, *args: str) -> Any:
        return json.loads(run("krs", *args, "-c", str(self.configs[node]), "--json"))

    def trusted(self, node: str) -> set[str]:
        return {r["thumbprint"] for r in self.krs(node, "kdc-keys") if r["state"] == "trusted"}

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.lab.kdc("--json", "identity", "status"))
        return data

    def reported(self, node: str) -> set[str]:
        return next(set(n["kdc_keys"]) for n in self.status()["nodes"] if n["node"] == node)

    def confirmed_by_all(self, dist_id: str) -> bool:
        rows = [r for r in self.lab.distributions() if r["id"] == dist_id]
        return len(rows) == len(self.configs) and all(r["status"] == "confirmed" for r in rows)

    def audit_kinds(self) -> list[str]:
        entries = json.loads(self.lab.kdc("--json", "audit", "list"))
        return [e["kind"] for e in entries]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, 4)
    try:
        yield fleet
    finally:
        fleet.lab.close()


def test_roll_reaches_four_nodes_one_stopped_and_retires_the_old_key_after_all_confirmed(
    fleet: Fleet,
) -> None:
    lab = fleet.lab
    keys = lab.state / "keys"
    old = load_jose_key(keys / "kdc.signing.privatekey")
    lab.start_kdc(serve_args=SERVE)
    for node in fleet.configs:
        fleet.start(node)
    first = lab.distribute("--zone", ZONE)
    wait_until(lambda: fleet.confirmed_by_all(first), 60, lab.all_logs)
    late = "ns4.edge.example."
    fleet.stop(late)

    started = json.loads(lab.kdc("--json", "identity", "roll"))
    new = started["next"]
    assert started["custody"] == "file"
    assert (keys / started["locator"]).stat().st_mode & 0o777 == 0o600
    online = [n for n in fleet.configs if n != late]
    wait_until(lambda: all(new in fleet.reported(n) for n in online), 60, lab.all_logs)
    # a key event during the roll: the three online nodes apply it at once
    lab.kdc("key", "generate", "--zone", ZONE, "--role", "ZSK")
    event = lab.distribute("--zone", ZONE)
    wait_until(
        lambda: sum(
            r["status"] == "confirmed" for r in lab.distributions() if r["id"] == event
        ) == 3,
        60,
        lab.all_logs,
    )  # fmt: skip
    status = fleet.status()
    assert status["phase"] == "announcing"  # ns4 holds the switch
    assert [n["node"] for n in status["nodes"] if n["holding"]] == [late]
    text = lab.kdc("identity", "status")
    assert f"next     {new}" in text and f"node {late}: trusts " in text and "HOLDS" in text
    assert load_jose_key(keys / "kdc.signing.privatekey").thumbprint == old.thumbprint
    held = subprocess.run(
        [str(BIN / "krs-kdc"), "--state", str(lab.state), "identity", "roll", "--continue"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert held.returncode == 1 and late in held.stdout, held.stdout + held.stderr

    fleet.start(late)  # back: it fetches what waits for it, the event included
    wait_until(lambda: fleet.status()["phase"] == "idle", 120, lab.all_logs)

    assert fleet.confirmed_by_all(event), lab.distributions()  # no distribution lost
    for node in fleet.configs:
        assert fleet.trusted(node) == {new}, node
    shown = run("krs", "status", "-c", str(fleet.configs[late]))
    assert f"{new} trusted (announced" in shown and f"{old.thumbprint} dropped" in shown
    doctor = subprocess.run(
        [str(BIN / "krs"), "doctor", "--json", "-c", str(fleet.configs[late])],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    dropped = [c for c in json.loads(doctor.stdout) if "signing-key roll dropped" in c["message"]]
    assert [c["status"] for c in dropped] == ["warning"] and new in dropped[0]["message"]
    assert load_jose_key(keys / "kdc.signing.privatekey").thumbprint == new
    assert load_jose_key(keys / "kdc.signing.pubkey").thumbprint == new
    assert not list(keys.glob(f"kdc.signing.{old.fingerprint}.privatekey"))  # shredded
    status = fleet.status()
    assert status["current"] == new and status["previous"] is None
    kinds = fleet.audit_kinds()
    assert (
        kinds.index("signing.roll") < kinds.index("signing.switch") < kinds.index("signing.retire")
    )
    entries = json.loads(lab.kdc("--json", "audit", "list"))
    switch = next(e for e in entries if e["kind"] == "signing.switch")
    retire = next(e for e in entries if e["kind"] == "signing.retire")
    assert switch["details"]["forced_past"] == [] and retire["details"]["forced_past"] == []
    lab.kdc("audit", "verify", "--key", str(keys / "kdc.signing.pubkey"))
    # after the roll, a key event is signed by the new key and applied everywhere
    lab.kdc("key", "generate", "--zone", ZONE, "--role", "ZSK")
    after = lab.distribute("--zone", ZONE)
    wait_until(lambda: fleet.confirmed_by_all(after), 60, lab.all_logs)


def test_node_offline_for_the_whole_overlap_gets_a_clear_error_and_recovers(
    tmp_path: Path,
) -> None:
    fleet = Fleet(tmp_path, 2)
    lab = fleet.lab
    try:
        keys = lab.state / "keys"
        old = load_jose_key(keys / "kdc.signing.privatekey")
        lab.start_kdc(serve_args=SERVE)
        away = "ns2.edge.example."
        fleet.start(NODE)
        started = json.loads(lab.kdc("--json", "identity", "roll"))
        new = started["next"]
        wait_until(lambda: new in fleet.reported(NODE), 60, lab.all_logs)
        forced = subprocess.run(
            [str(BIN / "krs-kdc"), "--state", str(lab.state), "identity", "roll", "--continue",
             "--force"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert forced.returncode == 0, forced.stderr
        switched = f"{max(int(r['id'], 16) for r in lab.distributions()):x}"
        assert "WARNING: --force" in forced.stderr and away in forced.stderr
        wait_until(lambda: fleet.reported(NODE) == {new}, 60, lab.all_logs)
        status = fleet.status()
        assert status["phase"] == "retiring"
        assert [n["node"] for n in status["nodes"] if n["holding"]] == [away]
        assert (keys / f"kdc.signing.{old.fingerprint}.privatekey").exists()  # not retired

        # away beyond the distribution ttl (5 minutes): what was sent to it before the switch
        # is withdrawn unread (kdc.db's expiry time moved, not the clock)
        db = sqlite3.connect(lab.state / "kdc.db")
        with db:
            db.execute(
                "UPDATE distributions SET expires_at = 0 WHERE node_id = ? AND status = 'pending'",
                (away,),
            )
        db.close()
        wait_until(
            lambda: all(r["status"] != "pending" for r in lab.distributions()
                        if r["node_id"] == away and int(r["id"], 16) < int(switched, 16)),
            30,
            lab.all_logs,
        )  # fmt: skip
        fleet.start(away)
        dist = lab.distribute("--zone", ZONE)  # signed by the new key

        def refused() -> list[dict[str, Any]]:
            return [r for r in fleet.krs(away, "status") if r["stage"] == "signature"]

        wait_until(refused, 60, lab.all_logs)
        error = refused()[0]["error"]
        assert "does not verify with any KDC key this node trusts" in error
        assert "krs trust-kdc-key FILE --fingerprint=" in error
        assert fleet.trusted(away) == {old.thumbprint}

        pubkey = keys / "kdc.signing.pubkey"  # fetched from the KDC operator
        wrong = subprocess.run(
            [str(BIN / "krs"), "trust-kdc-key", str(pubkey), f"--fingerprint={old.thumbprint}",
             "-c", str(fleet.configs[away])],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert wrong.returncode == 2 and "nothing was changed" in wrong.stderr, wrong.stderr
        assert fleet.trusted(away) == {old.thumbprint}
        run("krs", "trust-kdc-key", str(pubkey), f"--fingerprint={new}",
            "-c", str(fleet.configs[away]))  # fmt: skip

        # the KDC sends again; the node takes it, drops the old key, the KDC retires it
        wait_until(lambda: fleet.status()["phase"] == "idle", 120, lab.all_logs)
        assert fleet.trusted(away) == {new}
        assert not (keys / f"kdc.signing.{old.fingerprint}.privatekey").exists()
        assert any(
            r["outcome"] == "applied" and int(r["id"], 16) > int(dist, 16)
            for r in fleet.krs(away, "status")
        )
    finally:
        lab.close()


def test_pkcs11_roll_destroys_the_old_token_objects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from krs_lab.softhsm import LAB_CUSTODY

    monkeypatch.setenv(LAB_CUSTODY, "pkcs11")
    lab = Deployment(tmp_path)
    try:
        from krs_plugin.kdc import custody as cu
        from krs_plugin.kdc.store import Store

        def settings() -> cu.CustodySettings:
            store = Store(lab.state / "kdc.db")
            try:
                return store.custody.settings
            finally:
                store.close()

        def labels() -> set[str]:
            """The token's private keys' labels, read by a process of its own: SoftHSM2 reads
            its configuration once per process, and test_custody.py's tokens are elsewhere."""
            found = settings()
            probe = (
                "import json, os, pkcs11\n"
                f"t = pkcs11.lib({found.module!r}).get_token(token_label={found.token!r})\n"
                "s = t.open(user_pin=os.environ['KRS_KDC_PIN'])\n"
                "objs = s.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY})\n"
                "print(json.dumps(sorted(o.label for o in objs)))\n"
            )
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                 timeout=60, check=True).stdout  # fmt: skip
            return set(json.loads(out))

        old_label = settings().signing_label
        shutil.copy(lab.state / "keys" / "kdc.signing.pubkey", lab.node_dir / "kdc.pub")
        lab.config["kdc"] = {"verification_key": str(lab.node_dir / "kdc.pub")}
        lab.start_kdc(serve_args=SERVE)
        lab.start_krs()
        started = json.loads(lab.kdc("--json", "identity", "roll"))
        assert started["custody"] == "pkcs11" and started["locator"] != old_label
        assert {old_label, started["locator"]} <= labels()
        wait_until(
            lambda: json.loads(lab.kdc("--json", "identity", "status"))["phase"] == "idle",
            120,
            lab.all_logs,
        )
        assert old_label not in labels() and started["locator"] in labels()
        assert settings().signing_label == started["locator"]
        new = started["next"]
        assert load_jose_key(lab.state / "keys" / "kdc.signing.pubkey").thumbprint == new
        assert not list((lab.state / "keys").glob("*.privatekey*signing*"))
        lab.kdc("audit", "verify")
        after = lab.distribute("--zone", ZONE)
        lab.wait_confirmed(after, 60)
    finally:
        lab.close()


def test_custody_migrate_is_refused_while_a_roll_is_under_way(tmp_path: Path) -> None:
    state = str(tmp_path / "kdc")
    run("krs-kdc", "--state", state, "init", "--control-zone", "kdc.example.")
    run("krs-kdc", "--state", state, "identity", "roll")
    before = sorted(p.name for p in (tmp_path / "kdc" / "keys").iterdir())
    migrate = subprocess.run(
        [str(BIN / "krs-kdc"), "--state", state, "custody", "migrate", "--to", "file"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert migrate.returncode == 2 and "roll is under way" in migrate.stderr, migrate.stderr
    assert sorted(p.name for p in (tmp_path / "kdc" / "keys").iterdir()) == before
    # no nodes: nothing holds the steps
    run("krs-kdc", "--state", state, "identity", "roll", "--continue")
    run("krs-kdc", "--state", state, "identity", "roll", "--continue")
    status = json.loads(run("krs-kdc", "--state", state, "--json", "identity", "status"))
    assert status["phase"] == "idle" and [k["state"] for k in status["keys"]] == [
        "retired",
        "current",
    ]
