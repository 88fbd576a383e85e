"""`krs doctor`: every problem is reported at once, each naming the file or address and the fix."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rrset
import pytest

from krs_lab.ports import free_port
from krs_plugin import cli
from krs_plugin.config import Config, load_config
from krs_plugin.crypto import (
    HpkeKey,
    JoseKey,
    write_hpke_private,
    write_jose_private,
    write_jose_public,
)
from krs_plugin.dnsio import Handler, serve_dns
from krs_plugin.kdc.server import ControlZone, KdcServer, ServeOptions
from krs_plugin.kdc.store import Store
from krs_plugin.receiver.doctor import Check, doctor_command, render, run_checks
from tests.fsutil import unwritable

CZ = "kdc.example."


@contextmanager
def dns_server(handler: Handler) -> Iterator[int]:
    """``handler`` answering DNS on a loopback port (UDP and TCP) from a background thread."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        for attempt in range(5):  # port 0 picks a free UDP port whose TCP twin may be taken
            try:
                transport, server, port = loop.run_until_complete(
                    serve_dns(handler, "127.0.0.1", free_port())
                )
                break
            except OSError:
                if attempt == 4:
                    raise
        started["port"] = port
        ready.set()
        loop.run_forever()
        transport.close()
        server.close()
        pending = asyncio.all_tasks(loop)  # connections still open
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(10), "test DNS server did not start"
    try:
        yield int(started["port"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture
def kdc_port(tmp_path: Path) -> Iterator[int]:
    """The KDC's real control-zone answers (``KdcServer.handle``) for ``kdc.example.``."""
    (tmp_path / "kdc").mkdir()
    store = Store(tmp_path / "kdc" / "kdc.db")
    kdc = KdcServer(store, ControlZone(store, CZ), ServeOptions(listen=()))
    with dns_server(lambda wire, source, udp: kdc.handle(wire, source, udp=udp)) as port:
        yield port
    store.close()


def write_config(base: Path, control_port: int, **overrides: Any) -> Path:
    """A complete krs.yaml (directory adapter) whose files all exist and are right."""
    write_hpke_private(base / "node.key", HpkeKey.generate())
    write_jose_private(base / "node.signing.key", JoseKey.generate(), use="sig")
    write_jose_public(base / "kdc.pub", JoseKey.generate(), use="sig")
    (base / "keys").mkdir(mode=0o700)
    (base / "state").mkdir(mode=0o700)
    raw: dict[str, Any] = {
        "node_id": "ns1.edge.example.",
        "keys": {"hpke": "node.key", "signing": "node.signing.key"},
        "kdc": {"verification_key": "kdc.pub"},
        "control_zone": CZ,
        "control_servers": [f"127.0.0.1:{control_port}"],
        "notify": {"listen": [f"127.0.0.1:{free_port()}"]},
        "adapter": {"type": "directory", "settings": {"path": "keys"}},
        "zones": ["example.com."],
        "state": "state/krs.db",
        "metrics": f"127.0.0.1:{free_port()}",
        **overrides,
    }
    (base / "krs.yaml").write_text(json.dumps(raw))
    return base / "krs.yaml"


@pytest.fixture
def config(tmp_path: Path, kdc_port: int) -> Config:
    return load_config(write_config(tmp_path, kdc_port))


def problems(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status != "ok"]


def only(checks: list[Check], name: str) -> Check:
    found = [c for c in checks if c.name == name and c.status != "ok"]
    assert len(found) == 1, checks
    return found[0]


def test_everything_ok_against_a_real_control_server(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    checks = run_checks(config)
    assert problems(checks) == []
    names = [c.name for c in checks]
    assert names == [
        "config",
        "keys.hpke",
        "keys.signing",
        "kdc.verification_key",
        "state",
        "zones",
        "adapter",
        "control_servers[0]",
        "notify.listen",
        "notify.listen",
        "metrics",
    ]
    by_name = {c.name: c for c in checks}
    assert f"authoritative for {CZ}" in by_name["control_servers[0]"].message
    assert "schema OK" in by_name["state"].message
    assert "mode 0600" in by_name["keys.hpke"].message
    assert doctor_command(config, as_json=False) == 0
    out = capsys.readouterr().out
    assert "0 error(s), 0 warning(s); krs run can start" in out


def test_doctor_creates_a_private_state_database_when_there_is_none(config: Config) -> None:
    assert not config.state.exists()
    state = only_ok(run_checks(config), "state")
    assert "created now" in state.message
    assert config.state.stat().st_mode & 0o777 == 0o600


def only_ok(checks: list[Check], name: str) -> Check:
    return next(c for c in checks if c.name == name and c.status == "ok")


def test_missing_key_file_is_named_with_its_config_key(config: Config) -> None:
    assert config.keys.signing is not None
    config.keys.signing.unlink()  # removed after krs.yaml was read
    check = only(run_checks(config), "keys.signing")
    assert check.status == "error"
    assert check.message == f"{config.keys.signing} does not exist"
    assert "keys.signing" in check.fix


def test_missing_key_file_at_load_is_one_finding_among_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # krs run refuses such a config (exit 2); doctor reports the file with everything else.
    path = write_config(tmp_path, free_port())
    (tmp_path / "node.key").unlink()
    assert cli.main(["doctor", "-c", str(path), "--json"]) == 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert checks["keys.hpke"]["status"] == "error"
    assert checks["keys.hpke"]["message"] == f"{tmp_path / 'node.key'} does not exist"
    assert {"keys.hpke", "kdc.verification_key", "state"} <= set(checks)
    assert cli.main(["status", "-c", str(path)]) == 2


def test_group_readable_private_key_is_an_error(config: Config) -> None:
    assert config.keys.hpke is not None
    config.keys.hpke.chmod(0o644)
    check = only(run_checks(config), "keys.hpke")
    assert check.status == "error"
    assert check.message == (
        f"{config.keys.hpke} is mode 0644: group or others can read this private key"
    )
    assert check.fix.startswith(f"chmod 0600 {config.keys.hpke}")


def test_public_key_where_the_node_needs_its_private_key_is_an_error(config: Config) -> None:
    assert config.keys.signing is not None
    write_jose_public(config.keys.signing, JoseKey.generate(), use="sig")
    config.keys.signing.chmod(0o600)
    check = only(run_checks(config), "keys.signing")
    assert check.status == "error"
    assert "holds only a public JWK" in check.message


def test_verification_key_that_does_not_parse_is_an_error(config: Config) -> None:
    path = config.kdc.verification_key
    assert path is not None
    path.write_text("this is not a JWK\n")
    check = only(run_checks(config), "kdc.verification_key")
    assert check.status == "error"
    assert check.message.startswith(f"{path}: not JWK JSON")
    assert str(path) in check.fix


def test_verification_key_holding_the_kdcs_private_key_is_a_warning(config: Config) -> None:
    path = config.kdc.verification_key
    assert path is not None
    write_jose_private(path, JoseKey.generate(), use="sig")
    check = only(run_checks(config), "kdc.verification_key")
    assert check.status == "warning"
    assert "holds the KDC's private signing key" in check.message


def test_no_verification_key_without_allow_unsigned_is_an_error(config: Config) -> None:
    config = dataclasses.replace(config, kdc=dataclasses.replace(config.kdc, verification_key=None))
    check = only(run_checks(config), "kdc.verification_key")
    assert check.status == "error"
    assert "every distribution will be refused" in check.message


def test_allow_unsigned_is_a_warning_and_still_exit_0(tmp_path: Path, kdc_port: int) -> None:
    config = load_config(write_config(tmp_path, kdc_port, kdc={"allow_unsigned": True}))
    checks = run_checks(config)
    assert problems(checks) == [
        Check(
            "kdc.allow_unsigned",
            "warning",
            "distributions without the KDC's signature are accepted",
            "set kdc.verification_key to the KDC's signing public key and remove allow_unsigned",
        )
    ]
    assert doctor_command(config, as_json=True) == 0


def test_unwritable_state_directory_is_an_error(config: Config) -> None:
    with unwritable(config.state.parent):
        check = only(run_checks(config), "state")
    assert check.status == "error"
    # as root the fixture sets the immutable flag (EPERM), else it takes away the write bit
    assert check.message.startswith(f"{config.state}: its directory {config.state.parent} ")
    assert (
        "does not take new files (EPERM" in check.message or "is not writable by" in check.message
    )
    assert not config.state.exists()


def test_group_readable_state_database_is_an_error(config: Config) -> None:
    run_checks(config)  # creates it
    config.state.chmod(0o640)
    check = only(run_checks(config), "state")
    assert check.status == "error"
    assert check.message == (
        f"{config.state} is mode 0640: group or others can read the KRS journal"
    )
    assert check.fix == f"chmod 0600 {config.state}"


def test_state_database_that_is_not_sqlite_is_an_error(config: Config) -> None:
    config.state.write_bytes(b"not a database" * 100)
    config.state.chmod(0o600)
    check = only(run_checks(config), "state")
    assert check.status == "error"
    assert check.message == f"{config.state} is not an SQLite database (it begins with b'not a da')"
    assert check.fix.startswith("restore it (with its -wal file, if any) from a backup")
    assert config.state.read_bytes() == b"not a database" * 100


def test_unreachable_control_server_is_named(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    config = load_config(write_config(tmp_path, port))
    check = only(run_checks(config), "control_servers[0]")
    assert check.status == "error"
    assert check.message == f"127.0.0.1:{port}: connection refused (nothing listens on TCP)"
    assert f"127.0.0.1:{port} serves {CZ}" in check.fix


def test_control_server_for_another_zone_answers_refused(tmp_path: Path, kdc_port: int) -> None:
    config = load_config(write_config(tmp_path, kdc_port, control_zone="other.example."))
    check = only(run_checks(config), "control_servers[0]")
    assert check.message == f"127.0.0.1:{kdc_port}: SOA other.example. answered REFUSED"


def answer_without_aa(wire: bytes, source: str, udp: bool) -> bytes:
    """A resolver-like server: NOERROR with an SOA, but not authoritative."""
    query = dns.message.from_wire(wire)
    response = dns.message.make_response(query)
    response.flags &= ~dns.flags.AA
    response.answer.append(
        dns.rrset.from_text(CZ, 300, "IN", "SOA", f"ns.{CZ} hostmaster.{CZ} 1 3600 600 86400 300")
    )
    return response.to_wire()


def test_control_server_that_is_not_authoritative_is_an_error(tmp_path: Path) -> None:
    with dns_server(answer_without_aa) as port:
        config = load_config(write_config(tmp_path, port))
        check = only(run_checks(config), "control_servers[0]")
    assert check.message == f"127.0.0.1:{port}: not authoritative for {CZ} (no AA flag)"


def test_silent_control_server_times_out_after_two_seconds(tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        config = load_config(write_config(tmp_path, port))
        check = only(run_checks(config), "control_servers[0]")
    assert check.message == f"127.0.0.1:{port}: no answer within 2 s"


def test_notify_port_in_use_is_a_warning(config: Config) -> None:
    address = config.notify.listen[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((address.host, address.port))
        checks = run_checks(config)
    check = only(checks, "notify.listen")
    assert check.status == "warning"
    assert check.message == f"{address} (UDP) in use (is `krs run` already running?)"
    assert doctor_command(config, as_json=True) == 0


def test_metrics_port_in_use_is_a_warning(config: Config) -> None:
    assert config.metrics is not None
    with socket.socket() as taken:
        taken.bind((config.metrics.host, config.metrics.port))
        taken.listen()
        check = only(run_checks(config), "metrics")
    assert check.status == "warning"
    assert check.message == f"{config.metrics} (TCP) in use (is `krs run` already running?)"


def test_ipv6_loopback_listen_address_is_bound_over_udp_and_tcp(
    tmp_path: Path, kdc_port: int
) -> None:
    if not socket.has_ipv6 or not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    port = free_port()  # free on 127.0.0.1, and in practice on ::1 too
    path = write_config(tmp_path, kdc_port, notify={"listen": [f"[::1]:{port}"]})
    found = [c for c in run_checks(load_config(path)) if c.name == "notify.listen"]
    assert [(c.status, c.message) for c in found] == [
        ("ok", f"[::1]:{port} (UDP) can be bound"),
        ("ok", f"[::1]:{port} (TCP) can be bound"),
    ]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_listen_address_not_on_this_host_is_an_error(tmp_path: Path, kdc_port: int) -> None:
    path = write_config(tmp_path, kdc_port, notify={"listen": ["192.0.2.1:5355"]})
    checks = run_checks(load_config(path))
    found = [c for c in checks if c.name == "notify.listen"]
    assert [c.status for c in found] == ["error", "error"]
    assert found[0].message == "192.0.2.1:5355 (UDP): not an address of this host"


def test_no_zones_is_an_error(config: Config) -> None:
    config = dataclasses.replace(config, zones=frozenset())
    check = only(run_checks(config), "zones")
    assert check == Check(
        "zones", "error", "no zones configured", "list the zones this node serves"
    )


def test_adapter_problems_are_listed_with_their_fix(config: Config) -> None:
    keys = config.path.parent / "keys"
    keys.rmdir()
    check = only(run_checks(config), "adapter")
    assert check.status == "error"
    assert check.message == f"directory: key directory {keys} does not exist"
    assert check.fix == f"mkdir -m 0700 {keys}"


def test_every_problem_is_printed_at_once_and_exit_is_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = free_port()
    path = write_config(tmp_path, dead)
    (tmp_path / "node.key").chmod(0o644)
    (tmp_path / "kdc.pub").write_text("{}")
    (tmp_path / "keys").rmdir()
    assert cli.main(["doctor", "-c", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    failed = {c["name"]: c["message"] for c in report if c["status"] == "error"}
    assert set(failed) == {"keys.hpke", "kdc.verification_key", "adapter", "control_servers[0]"}
    assert "mode 0644" in failed["keys.hpke"]
    assert f"127.0.0.1:{dead}" in failed["control_servers[0]"]
    assert all(set(c) == {"name", "status", "message", "fix"} for c in report)

    assert cli.main(["doctor", "-c", str(path)]) == 1
    text = capsys.readouterr().out
    assert f"fix: chmod 0600 {tmp_path / 'node.key'}" in text
    assert text.rstrip().endswith("4 error(s), 0 warning(s)")


def test_text_output_has_one_line_per_check_and_the_fix_under_it() -> None:
    text = render(
        [
            Check("config", "ok", "/etc/krs/krs.yaml loads"),
            Check("keys.hpke", "error", "/etc/krs/node.key is mode 0644", "chmod 0600 x"),
            Check("kdc.allow_unsigned", "warning", "unsigned accepted"),
        ]
    )
    assert text.splitlines() == [
        "ok      config              /etc/krs/krs.yaml loads",
        "error   keys.hpke           /etc/krs/node.key is mode 0644",
        "                            fix: chmod 0600 x",
        "warning kdc.allow_unsigned  unsigned accepted",
        "3 checks: 1 error(s), 1 warning(s)",
    ]


def test_a_unit_whose_exec_start_names_a_missing_krs_is_a_warning_with_the_link_to_make(
    tmp_path: Path,
) -> None:
    # The shipped unit starts /usr/local/bin/krs; krs installed into a venv (/opt/krs) is not
    # there until linked (docs/operations.md, "Installing").
    from krs_plugin.receiver.doctor import check_units

    units = tmp_path / "system"
    units.mkdir()
    missing = tmp_path / "usr-local-bin" / "krs"
    (units / "krs.service").write_text(f"[Service]\nExecStart={missing} run -c /etc/krs/krs.yaml\n")
    (units / "other.service").write_text("[Service]\nExecStart=/nonexistent/thing\n")
    (check,) = check_units(units)
    assert check.status == "warning" and check.name == "systemd"
    assert check.message == (
        f"{units / 'krs.service'} starts {missing}, which does not exist (or is not executable)"
    )
    assert check.fix.startswith("ln -s ") and f" {missing} " in check.fix
    present = tmp_path / "krs"
    present.write_text("#!/bin/sh\n")
    present.chmod(0o755)
    (units / "krs.service").write_text(f"[Service]\nExecStart={present} run\n")
    assert [c.status for c in check_units(units)] == ["ok"]
    assert check_units(tmp_path / "none") == []
