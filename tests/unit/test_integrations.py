"""The files in integrations/ are what operators copy: their krs.yaml must load as ``krs run``
reads it, with adapter settings the adapter accepts, the server snippets must pass the server's
own checker, and the systemd units must start ``krs run`` with what it needs writable."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import dns.name
import pytest
import yaml

from krs_lab.ports import free_port
from krs_plugin.adapters import make_adapter
from krs_plugin.adapters.bind9 import Bind9Adapter
from krs_plugin.adapters.knot import KnotAdapter
from krs_plugin.adapters.nsd import NsdAdapter
from krs_plugin.adapters.powerdns import PowerDnsAdapter
from krs_plugin.config import load_config
from krs_plugin.kdc.cli import build_parser

INTEGRATIONS = Path(__file__).resolve().parents[2] / "integrations"
ADAPTERS = {
    "bind9": Bind9Adapter,
    "knot": KnotAdapter,
    "nsd": NsdAdapter,
    "powerdns": PowerDnsAdapter,
}
SERVER_UNITS = {
    "bind9": "named.service",
    "knot": "knot.service",
    "nsd": "nsd.service",
    "powerdns": "pdns.service",
}
# every sample krs.yaml: one per server, and PowerDNS's second method
SAMPLES = [(server, "krs.yaml") for server in sorted(ADAPTERS)] + [
    ("powerdns", "krs-pdnsutil.yaml")
]
ZONE = dns.name.from_text("example.com.")


def sample_config(server: str, name: str = "krs.yaml") -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((INTEGRATIONS / server / name).read_text())
    return config


@pytest.mark.parametrize(("server", "name"), SAMPLES)
def test_sample_krs_yaml_names_its_adapter_with_settings_it_accepts(server: str, name: str) -> None:
    config = sample_config(server, name)
    assert config["adapter"]["type"] == server
    ADAPTERS[server](config["adapter"]["settings"])  # raises ConfigError on an unknown key


@pytest.mark.parametrize(("server", "name"), SAMPLES)
def test_sample_krs_yaml_loads_as_krs_run_reads_it(server: str, name: str, tmp_path: Path) -> None:
    # load_config checks that the files krs.yaml names exist: the sample, moved under tmp_path
    # (/etc/krs and /var/lib/krs only), with those files in place.
    text = (INTEGRATIONS / server / name).read_text()
    for folder in ("/etc/krs/", "/var/lib/krs/"):
        text = text.replace(folder, f"{tmp_path}{folder}")
    raw = yaml.safe_load(text)
    for path in [*raw["keys"].values(), raw["kdc"]["verification_key"], raw["state"]]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    for path in [*raw["keys"].values(), raw["kdc"]["verification_key"]]:
        Path(path).write_text("")
    sample = tmp_path / "etc" / "krs" / "krs.yaml"
    sample.write_text(text)
    config = load_config(sample)
    assert config.adapter.type == server
    assert make_adapter(config).name == server


def read_unit(server: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string((INTEGRATIONS / server / "krs.service").read_text())
    return unit


@pytest.mark.parametrize("server", sorted(ADAPTERS))
def test_sample_unit_runs_krs_after_the_nameserver_with_its_state_writable(server: str) -> None:
    unit = read_unit(server)
    assert unit["Service"]["ExecStart"] == "/usr/local/bin/krs run -c /etc/krs/krs.yaml"
    assert SERVER_UNITS[server] in unit["Unit"]["After"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    config = sample_config(server)
    writable = [Path(p) for p in unit["Service"]["ReadWritePaths"].split()]
    state = Path(config["state"])
    assert any(state.is_relative_to(p) for p in writable), (state, writable)


def test_nsd_unit_lets_the_krs_write_the_keys_and_the_signed_zones() -> None:
    # ProtectSystem=strict: whatever the adapter writes must be listed, or every apply fails.
    unit = read_unit("nsd")
    assert unit["Service"]["ProtectSystem"] == "strict"
    writable = [Path(p) for p in unit["Service"]["ReadWritePaths"].split()]
    adapter = NsdAdapter(sample_config("nsd")["adapter"]["settings"])
    for path in (adapter.key_directory, adapter.signed_file(ZONE).parent):
        assert any(path.is_relative_to(p) for p in writable), (path, writable)


@pytest.mark.parametrize("server", sorted(ADAPTERS))
def test_sample_unit_passes_systemd_analyze_verify(server: str, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (part of systemd)")
    krs = shutil.which("krs") or str(Path(__file__).resolve().parents[2] / ".venv/bin/krs")
    if not Path(krs).exists():
        pytest.skip("no krs executable to stand in for /usr/local/bin/krs")
    unit = tmp_path / "krs.service"  # verify insists that ExecStart's binary exists
    text = (INTEGRATIONS / server / "krs.service").read_text()
    unit.write_text(text.replace("/usr/local/bin/krs", krs))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert str(unit) not in result.stderr, result.stderr  # unknown keys are only warnings


def test_knot_snippet_passes_knotc_conf_check() -> None:
    if shutil.which("knotc") is None:
        pytest.fail("knotc is not installed (apt-get install knot-dnsutils)")
    result = subprocess.run(
        ["knotc", "-c", str(INTEGRATIONS / "knot" / "knot.conf.snippet"), "conf-check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_nsd_snippet_passes_nsd_checkconf() -> None:
    checkconf = shutil.which("nsd-checkconf") or "/usr/sbin/nsd-checkconf"
    if not Path(checkconf).exists():
        pytest.fail("nsd-checkconf is not installed (apt-get install nsd)")
    snippet = INTEGRATIONS / "nsd" / "nsd.conf.snippet"
    result = subprocess.run([checkconf, str(snippet)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    zonefile = subprocess.run(
        [checkconf, "-z", "example.com", "-o", "zonefile", str(snippet)],
        capture_output=True,
        text=True,
    ).stdout.strip()
    adapter = NsdAdapter(sample_config("nsd")["adapter"]["settings"])
    assert Path(zonefile) == adapter.signed_file(ZONE)  # NSD serves the file the KRS signs


def pdns_snippet() -> dict[str, str]:
    """The settings of integrations/powerdns/pdns.conf.snippet (key=value, # comments)."""
    settings = {}
    for line in (INTEGRATIONS / "powerdns" / "pdns.conf.snippet").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def test_powerdns_samples_use_two_methods_against_the_snippets_api() -> None:
    api = PowerDnsAdapter(sample_config("powerdns")["adapter"]["settings"])
    util = PowerDnsAdapter(sample_config("powerdns", "krs-pdnsutil.yaml")["adapter"]["settings"])
    assert (api.store.how, util.store.how) == ("api", "pdnsutil")
    snippet = pdns_snippet()
    assert (snippet["api"], snippet["webserver"]) == ("yes", "yes")
    address = f"http://{snippet['webserver-address']}:{snippet['webserver-port']}"
    assert api.store.url == address  # type: ignore[attr-defined]
    assert snippet["webserver-address"] == "127.0.0.1"  # the API hands out private keys


def test_powerdns_unit_lets_pdnsutil_write_the_database_and_reach_the_socket() -> None:
    # ProtectSystem=strict: with method pdnsutil the KRS writes the backend's database
    unit = read_unit("powerdns")
    assert unit["Service"]["ProtectSystem"] == "strict"
    writable = [Path(p.lstrip("-")) for p in unit["Service"]["ReadWritePaths"].split()]
    snippet = pdns_snippet()
    for path in (Path(snippet["gsqlite3-database"]).parent, Path(snippet["socket-dir"])):
        assert path in writable, (path, writable)


def pdns_server() -> str:
    binary = shutil.which("pdns_server") or "/usr/sbin/pdns_server"
    if not Path(binary).exists():
        pytest.fail("pdns_server is not installed (apt-get install pdns-server)")
    return binary


def test_powerdns_snippet_passes_pdns_server_config_check(tmp_path: Path) -> None:
    shutil.copy(INTEGRATIONS / "powerdns" / "pdns.conf.snippet", tmp_path / "pdns.conf")
    result = subprocess.run(
        [pdns_server(), f"--config-dir={tmp_path}", "--config=check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_powerdns_snippet_starts_and_its_api_refuses_an_unknown_key(tmp_path: Path) -> None:
    # --config=check does not parse the hashed api-key; a start does (a bad hash ends pdns_server)
    shutil.copy(INTEGRATIONS / "powerdns" / "pdns.conf.snippet", tmp_path / "pdns.conf")
    schema = Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql")
    if shutil.which("sqlite3") is None or not schema.exists():
        pytest.fail("apt-get install pdns-backend-sqlite3 sqlite3")
    with schema.open("rb") as sql:
        subprocess.run(["sqlite3", str(tmp_path / "pdns.sqlite3")], stdin=sql, check=True)
    web = free_port()
    overrides = [  # what the snippet points at /var/lib, /run and port 53: here a temp directory
        f"--gsqlite3-database={tmp_path / 'pdns.sqlite3'}",
        f"--socket-dir={tmp_path}",
        "--local-address=127.0.0.1",
        f"--local-port={free_port()}",
        f"--webserver-port={web}",
        "--daemon=no",
        "--guardian=no",
        "--disable-syslog",
    ]
    log = tmp_path / "pdns.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [pdns_server(), f"--config-dir={tmp_path}", *overrides], stdout=out, stderr=out
        )
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{web}/api/v1/servers/localhost", headers={"X-API-Key": "guess"}
        )
        status = None
        deadline = time.monotonic() + 10
        while status is None and server.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(request, timeout=2)
                status = 200
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                time.sleep(0.05)
        assert status == 401, log.read_text()
    finally:
        server.terminate()
        server.wait(timeout=10)


# --- each snippet added to the server's Debian default configuration (issue 21, item 9) ---------


def debian_default(tmp_path: Path, folder: str) -> Path:
    """A copy of the packaged configuration folder (/etc/<folder>), its own paths pointed at
    the copy: what an operator has before adding a snippet."""
    source = Path("/etc") / folder
    if not source.is_dir():
        pytest.fail(f"{source} is missing: the server's Debian package is not installed")
    copy = tmp_path / folder
    shutil.copytree(source, copy)
    for path in copy.rglob("*.conf"):
        path.write_text(path.read_text().replace(f"{source}/", f"{copy}/"))
    return copy


def test_knot_snippet_appended_to_debians_knot_conf_passes_conf_check(tmp_path: Path) -> None:
    conf = debian_default(tmp_path, "knot") / "knot.conf"
    conf.write_text(conf.read_text() + (INTEGRATIONS / "knot" / "knot.conf.snippet").read_text())
    result = subprocess.run(
        ["knotc", "-c", str(conf), "conf-check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_bind9_snippet_appended_to_debians_named_conf_passes_named_checkconf(
    tmp_path: Path,
) -> None:
    version = subprocess.run(["named", "-v"], capture_output=True, text=True).stdout
    snippet = "named-9.20.conf.snippet" if " 9.20" in version else "named-9.18.conf.snippet"
    folder = debian_default(tmp_path, "bind")
    conf = folder / "named.conf"
    text = (INTEGRATIONS / "bind9" / snippet).read_text().replace("/etc/bind/", f"{folder}/")
    conf.write_text(conf.read_text() + text)
    result = subprocess.run(["named-checkconf", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nsd_snippet_in_debians_nsd_conf_d_passes_nsd_checkconf(tmp_path: Path) -> None:
    folder = debian_default(tmp_path, "nsd")
    (folder / "nsd.conf.d").mkdir(exist_ok=True)
    shutil.copy(INTEGRATIONS / "nsd" / "nsd.conf.snippet", folder / "nsd.conf.d" / "krs.conf")
    checkconf = shutil.which("nsd-checkconf") or "/usr/sbin/nsd-checkconf"
    result = subprocess.run([checkconf, str(folder / "nsd.conf")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    zonefile = subprocess.run(
        [checkconf, "-z", "example.com", "-o", "zonefile", str(folder / "nsd.conf")],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert zonefile == "/var/lib/nsd/signed/example.com.zone.signed"  # the include was read


def test_powerdns_snippet_appended_to_debians_pdns_conf_passes_config_check(
    tmp_path: Path,
) -> None:
    folder = debian_default(tmp_path, "powerdns")
    conf = folder / "pdns.conf"
    conf.write_text(
        conf.read_text() + (INTEGRATIONS / "powerdns" / "pdns.conf.snippet").read_text()
    )
    result = subprocess.run(
        [pdns_server(), f"--config-dir={folder}", "--config=check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the KDC's unit: integrations/kdc/krs-kdc.service ------------------------------------------

KDC_UNIT = INTEGRATIONS / "kdc" / "krs-kdc.service"


def read_kdc_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read_string(KDC_UNIT.read_text())
    return unit


def kdc_unit_for_verify(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary where this checkout has it (verify insists it exists)."""
    kdc = shutil.which("krs-kdc") or str(Path(__file__).resolve().parents[2] / ".venv/bin/krs-kdc")
    if not Path(kdc).exists():
        pytest.fail("no krs-kdc executable to stand in for /usr/local/bin/krs-kdc")
    unit = tmp_path / "krs-kdc.service"
    unit.write_text(KDC_UNIT.read_text().replace("/usr/local/bin/krs-kdc", kdc))
    return unit


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd)")
    return found


def test_kdc_unit_runs_serve_as_its_own_user_on_its_state_directory() -> None:
    service = read_kdc_unit()["Service"]
    assert service["User"] == service["Group"] == "krs-kdc"
    assert "DynamicUser" not in service  # operators run krs-kdc commands as the same user
    assert service["StateDirectory"] == "krs-kdc"
    assert service["StateDirectoryMode"] == "0700"
    assert service["Environment"] == "KRS_KDC_STATE=/var/lib/krs-kdc"  # = StateDirectory
    assert service["UMask"] == "0077"  # kdc.db holds every zone's private keys
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"  # only the state directory is writable
    assert "ReadWritePaths" not in service
    assert service["RestartPreventExitStatus"] == "2"  # no state: restarting will not help


def test_kdc_unit_starts_a_serve_command_line_the_parser_takes() -> None:
    service = read_kdc_unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/usr/local/bin/krs-kdc"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    # No capability at all, so the ports it listens on must be unprivileged.
    assert service["CapabilityBoundingSet"] == service["AmbientCapabilities"] == ""
    for listen in args.listen:
        assert int(listen.rpartition(":")[2]) >= 1024, listen


def test_kdc_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = kdc_unit_for_verify(tmp_path)
    result = subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert str(unit) not in result.stderr, result.stderr  # unknown keys are only warnings


def test_kdc_unit_is_rated_well_confined_by_systemd_analyze_security(tmp_path: Path) -> None:
    # exposure 0.0 (confined) to 10.0 (none); the unit is at 1.4 (systemd 252), "OK"; 2.0 at most
    unit = kdc_unit_for_verify(tmp_path)
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_kdc_sysusers_file_makes_the_units_user(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.fail("systemd-sysusers is not installed (apt-get install systemd)")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(INTEGRATIONS / "kdc" / "krs-kdc.sysusers")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    name, _, uid, _, _, home, shell = (tmp_path / "etc/passwd").read_text().split(":")
    assert name == read_kdc_unit()["Service"]["User"]
    assert int(uid) < 1000  # a system user
    assert home == "/var/lib/krs-kdc"
    assert shell.strip() == "/usr/sbin/nologin"


def test_every_metric_the_alerts_use_is_one_krs_run_exports() -> None:
    """A renamed metric would leave an alert that never fires: each krs_* name in the alert
    rules must be in the exposition of a fresh Metrics (with the state gauges)."""
    import re

    from krs_plugin.metrics import Metrics

    metrics = Metrics()
    metrics.watch_store(lambda: {})
    exported = set(re.findall(r"^# TYPE (krs_\w+) (\w+)", metrics.exposition().decode(), re.M))
    names = {name for name, _ in exported} | {
        f"{name}_total" for name, kind in exported if kind == "counter"
    }
    rules = yaml.safe_load((INTEGRATIONS / "bind9" / "prometheus-alerts.yaml").read_text())
    used = {
        name
        for rule in rules["groups"][0]["rules"]
        for name in re.findall(r"\bkrs_\w+", rule["expr"])
    }
    assert used and used <= names, used - names
    assert {"krs_poll_failures_consecutive", "krs_server_up", "krs_apply_failing"} <= used
