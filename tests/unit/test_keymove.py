"""keymove.resolve: which backend key files are in use at each step of a move (krs rekey
--backend; docs/enrollment.md section 7), read from the files alone, krs.yaml unchanged."""

from __future__ import annotations

import os
from pathlib import Path

from krs_plugin.keymove import current_backend, old_files, resolve, retire


def touch(path: Path, text: str = "key") -> Path:
    path.write_text(text)
    return path


def named(tmp_path: Path) -> dict[str, Path | None]:
    return {"hpke": tmp_path / "node.hpke.privatekey", "jose": None, "hpke-pq": None}


def test_without_a_move_the_paths_are_krs_yaml_s(tmp_path: Path) -> None:
    touch(tmp_path / "node.hpke.privatekey")
    held = resolve(named(tmp_path))
    assert held == named(tmp_path)
    missing = {"hpke": tmp_path / "gone.key", "jose": None, "hpke-pq": None}
    assert resolve(missing) == missing  # load_config reports the missing file, as before
    touch(tmp_path / "node.jose.privatekey")  # a stray key of another backend: not taken
    assert resolve(named(tmp_path)) == named(tmp_path)


def test_each_step_of_a_move_to_hpke_pq_and_back(tmp_path: Path) -> None:
    hpke, pq = tmp_path / "node.hpke.privatekey", tmp_path / "node.hpke-pq.privatekey"
    touch(hpke, "old")
    touch(tmp_path / "node.hpke-pq.privatekey.next", "new")  # sent, no answer yet
    assert current_backend(resolve(named(tmp_path))) == ("hpke", hpke)
    os.link(hpke, tmp_path / "node.hpke.privatekey.previous")  # the switch, step 1
    assert current_backend(resolve(named(tmp_path))) == ("hpke", hpke)  # (a crash here)
    os.replace(tmp_path / "node.hpke-pq.privatekey.next", pq)  # step 2: the new key in place
    held = resolve(named(tmp_path))
    # The old key is never in the config (retire unlinks it), only on disk until then.
    assert held == {"hpke": None, "jose": None, "hpke-pq": pq}
    assert current_backend(held) == ("hpke-pq", pq)
    assert old_files(held) == [hpke, tmp_path / "node.hpke.privatekey.previous"]
    retire(held)  # a distribution sealed to hpke-pq opened
    assert resolve(named(tmp_path)) == {"hpke": None, "jose": None, "hpke-pq": pq}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.hpke-pq.privatekey"]
    # Back to hpke: krs.yaml's hpke path again, the hybrid key kept until used.
    touch(tmp_path / "node.hpke.privatekey.next", "newer")
    os.link(pq, tmp_path / "node.hpke-pq.privatekey.previous")
    os.replace(tmp_path / "node.hpke.privatekey.next", hpke)
    held = resolve(named(tmp_path))
    assert held == {"hpke": hpke, "jose": None, "hpke-pq": None}
    assert current_backend(held) == ("hpke", hpke)
    assert old_files(held) == [pq, tmp_path / "node.hpke-pq.privatekey.previous"]
