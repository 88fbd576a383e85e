"""What only the PowerDNS adapter does, against a real pdns_server, through the HTTP API and through
pdnsutil: ``check()`` tells an operator why pushed keys would not be served (and apply refuses the
same before writing), ``maintain()`` carries out the key timing PowerDNS has no notion of, and
neither the API key nor a private key reaches a log line or an error message.

The backend without DNSSEC storage is made the two ways an operator gets it: the bind backend
without ``bind-dnssec-db``, gsqlite3 with ``gsqlite3-dnssec=no`` (docs/servers/powerdns-lab-notes.md
§8)."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import dns.name
import pytest

from krs_lab.deployment import wait_until
from krs_lab.powerdns import Backend, PowerDnsLab
from krs_plugin.adapters.base import KeyPlan, PlannedKey
from krs_plugin.adapters.powerdns import IDLE_WAIT, PowerDnsAdapter
from krs_plugin.adapters.transaction import apply_atomically
from krs_plugin.dnssec import DnssecKey
from krs_plugin.errors import AdapterError
from tests.adapters.servers import ZONES, Served
from tests.adapters.test_scenarios import install, key, now_timing

pytestmark = pytest.mark.integration

ZONE = ZONES[0]
NAME = dns.name.from_text(ZONE)
METHODS = ("api", "pdnsutil")

Start = Callable[..., PowerDnsLab]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``start(backend="gsqlite3", **pdns_conf)``: a running pdns_server, stopped after the test."""
    labs: list[PowerDnsLab] = []

    def started(backend: Backend = "gsqlite3", **extra: str) -> PowerDnsLab:
        lab = PowerDnsLab(tmp_path / f"pdns{len(labs)}", ZONES, backend, extra_settings=extra)
        labs.append(lab)
        lab.start()
        return lab

    yield started
    for lab in labs:
        lab.stop()


@pytest.fixture
def pdns(start: Start) -> PowerDnsLab:
    return start()


def adapter(lab: PowerDnsLab, method: str, *zones: str, **changes: object) -> PowerDnsAdapter:
    """The adapter for ``lab`` reached by ``method``, for ``zones`` (all of the lab's if none)."""
    lab_settings = lab.adapter_settings()
    settings: dict[str, object] = {"method": method, "server": lab_settings["server"]}
    names = ("api_url", "api_key_file") if method == "api" else ("pdnsutil", "pdns_control")
    settings.update({name: lab_settings[name] for name in names})
    settings.update(verify_timeout=3, **changes)
    return PowerDnsAdapter(settings, zones=[dns.name.from_text(z) for z in zones or ZONES])


def served(lab: PowerDnsLab) -> Served:
    return Served(lab.host, lab.port, ZONE)


def flags(lab: PowerDnsLab, tag: int) -> tuple[bool, bool]:
    """(active, published) of the key with ``tag``, as PowerDNS stores it."""
    (found,) = [k for k in lab.cryptokeys(ZONE) if k["tag"] == tag]
    return found["active"], found["published"]


# --- check() ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_a_zone_ready_for_keys_passes(pdns: PowerDnsLab, method: str) -> None:
    assert adapter(pdns, method).check() == []


def test_an_api_that_does_not_answer_is_reported(pdns: PowerDnsLab) -> None:
    pdns.stop()
    (problem,) = adapter(pdns, "api").check()
    assert (
        problem.what == f"powerdns: the API at {pdns.api_url} does not answer: Connection refused"
    )
    assert "webserver=yes and api=yes" in problem.fix


def test_a_wrong_api_key_is_reported_and_refused(pdns: PowerDnsLab, tmp_path: Path) -> None:
    wrong = secrets.token_urlsafe(24)
    key_file = tmp_path / "wrong.key"
    key_file.write_text(wrong + "\n")
    node = adapter(pdns, "api", api_key_file=str(key_file))
    (problem,) = node.check()
    assert problem.what == (
        f"powerdns API: server status: 401 Unauthorized, PowerDNS refuses the API key in {key_file}"
    )
    assert problem.fix == f"put the api-key from pdns.conf into {key_file}"
    with pytest.raises(AdapterError, match=r"401 Unauthorized.*nothing was changed"):
        node.apply(NAME, install((key("CSK"), "CSK")))
    assert pdns.cryptokeys(ZONE) == []


def test_a_missing_api_key_file_is_reported(pdns: PowerDnsLab, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.key"
    (problem,) = adapter(pdns, "api", api_key_file=str(missing)).check()
    assert problem.what == (
        f"powerdns: cannot read the API key file {missing}: No such file or directory"
    )
    assert "chmod 600" in problem.fix


def test_a_webserver_without_the_api_is_reported(start: Start) -> None:
    lab = start(api="no")
    node = adapter(lab, "api")
    (problem,) = node.check()
    assert problem.what == (
        f"powerdns: {lab.api_url} answers, but /api/v1/servers/localhost is not there (HTTP 404)"
    )
    assert "api=yes" in problem.fix
    # and apply does not take the 404 for a zone PowerDNS does not serve
    with pytest.raises(AdapterError, match="server status: HTTP 404") as failure:
        node.apply(NAME, install((key("CSK"), "CSK")))
    assert "does not serve" not in str(failure.value)


@pytest.mark.parametrize("tool", ["pdnsutil", "pdns_control"])
def test_missing_tools_are_reported(pdns: PowerDnsLab, tool: str) -> None:
    (problem,) = adapter(pdns, "pdnsutil", **{tool: f"/nonexistent/{tool}"}).check()
    assert problem.what.startswith(f"/nonexistent/{tool} not found: apt-get install pdns-server")
    assert "apt-get install pdns-server" in problem.fix


def test_a_control_socket_that_does_not_answer_is_reported(pdns: PowerDnsLab) -> None:
    pdns.stop()  # pdnsutil still reads the backend; pdns_control has no server to talk to
    (problem,) = adapter(pdns, "pdnsutil").check()
    assert problem.what.startswith("pdns_control rping: Fatal error: Unable to connect")
    assert "control socket" in problem.fix


@pytest.mark.parametrize("method", METHODS)
def test_a_zone_powerdns_does_not_serve_is_reported(pdns: PowerDnsLab, method: str) -> None:
    (problem,) = adapter(pdns, method, ZONE, "other.example.").check()
    assert problem.what == "PowerDNS does not serve zone other.example."
    assert "pdnsutil create-zone" in problem.fix


NO_DNSSEC_STORAGE: Mapping[str, tuple[Backend, dict[str, str]]] = {
    "bind-without-dnssec-db": ("bind", {"bind-dnssec-db": ""}),
    "gsqlite3-dnssec-no": ("gsqlite3", {"gsqlite3-dnssec": "no"}),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", sorted(NO_DNSSEC_STORAGE))
def test_a_backend_without_dnssec_storage_is_reported_and_refused(
    start: Start, backend: str, method: str
) -> None:
    # Such a backend lists no keys (like any unsigned zone) and only refuses at the first key.
    kind, settings = NO_DNSSEC_STORAGE[backend]
    lab = start(kind, **settings)
    node = adapter(lab, method, ZONE)
    (problem,) = node.check()
    assert problem.what == (
        f"PowerDNS cannot store DNSSEC keys for zone {ZONE}: its backend runs without DNSSEC "
        "storage"
    )
    assert "bind-dnssec-db" in problem.fix and "gsqlite3-dnssec=yes" in problem.fix
    with pytest.raises(AdapterError, match=r"no DNSSEC storage.*nothing was changed"):
        node.apply(NAME, install((key("CSK"), "CSK")))
    assert lab.cryptokeys(ZONE) == []
    assert node.store.get_meta(NAME, "X-KRS-KEY-TIMING") == []


@pytest.mark.parametrize("method", METHODS)
def test_a_presigned_zone_is_reported_with_its_fix(pdns: PowerDnsLab, method: str) -> None:
    pdns.pdnsutil("set-presigned", ZONE)
    (problem,) = adapter(pdns, method).check()
    assert problem.what == (
        f"zone {ZONE} is marked PRESIGNED: PowerDNS serves it as stored and will not sign it "
        "with the pushed keys"
    )
    assert problem.fix == f"pdnsutil unset-presigned {ZONE}"
    pdns.pdnsutil("unset-presigned", ZONE)
    assert adapter(pdns, method).check() == []


# --- maintain(): the payload's timing, carried out ------------------------------------------------


def maintain_until(node: PowerDnsAdapter, due: int) -> float:
    """``node.maintain()``, checked to ask to be called again at ``due`` (maintain() counts in
    whole seconds of the time it ran at, so up to a second late, never early)."""
    before = time.time()
    wait = node.maintain()
    assert due - time.time() <= wait < due - before + 1
    return wait


def sleep_as_krs_run(wait: float) -> None:
    """What ``krs run`` does between two maintain() calls (a test's few seconds at most)."""
    assert wait < 10
    time.sleep(wait)


@pytest.mark.parametrize("method", METHODS)
def test_maintain_activates_a_published_key_at_its_activate_time(
    pdns: PowerDnsLab, method: str
) -> None:
    node = adapter(pdns, method)
    ksk, old, new = key("KSK"), key("ZSK"), key("ZSK")
    node.apply(NAME, install((ksk, "KSK"), (old, "ZSK")))
    activate = int(time.time()) + 3
    node.apply(NAME, KeyPlan(NAME, (PlannedKey(new, "ZSK", now_timing(activate=activate)),)))

    # published ahead of use: served in the DNSKEY RRset, signing nothing
    assert flags(pdns, new.key_tag) == (False, True)
    now = served(pdns)
    assert now.tags == {ksk.key_tag, old.key_tag, new.key_tag}
    assert now.soa_signers == {old.key_tag} and now.dnskey_signers == {ksk.key_tag}

    wait = maintain_until(node, activate)  # changes nothing yet, and says when to come back
    assert flags(pdns, new.key_tag) == (False, True)

    sleep_as_krs_run(wait)
    assert node.maintain() == IDLE_WAIT  # nothing else is due
    assert flags(pdns, new.key_tag) == (True, True)
    # its RRSIG over the SOA is served and validates (dnspython) against the served DNSKEYs
    wait_until(lambda: new.key_tag in served(pdns).soa_signers, 3, "the SOA signed by the new key")
    now = served(pdns)
    assert now.soa_signers == {old.key_tag, new.key_tag}
    assert now.dnskey_signers == {ksk.key_tag}


@pytest.mark.parametrize("method", METHODS)
def test_maintain_deletes_a_retired_key_at_its_delete_time(pdns: PowerDnsLab, method: str) -> None:
    node = adapter(pdns, method)
    ksk, old, new = key("KSK"), key("ZSK"), key("ZSK")
    node.apply(NAME, install((ksk, "KSK"), (old, "ZSK"), (new, "ZSK")))
    delete_at = int(time.time()) + 3
    node.apply(NAME, KeyPlan(NAME, retire=(old.key_tag,), retire_delete_at=delete_at))

    # retired: still served, no longer signing, until its delete time
    assert flags(pdns, old.key_tag) == (False, True)
    now = served(pdns)
    assert now.tags == {ksk.key_tag, old.key_tag, new.key_tag}
    assert now.soa_signers == {new.key_tag}

    wait = maintain_until(node, delete_at)
    assert old.key_tag in {k["tag"] for k in pdns.cryptokeys(ZONE)}

    sleep_as_krs_run(wait)
    assert node.maintain() == IDLE_WAIT
    assert old.key_tag not in {k["tag"] for k in pdns.cryptokeys(ZONE)}
    assert old.key_tag not in {k.key_tag for k in node.current_keys(NAME)}
    wait_until(lambda: old.key_tag not in served(pdns).tags, 3, "the deleted key gone from DNS")
    now = served(pdns)
    assert now.tags == {ksk.key_tag, new.key_tag}
    assert now.soa_signers == {new.key_tag} and now.dnskey_signers == {ksk.key_tag}


# --- secrets ------------------------------------------------------------------------------------


def private_parts(*keys: DnssecKey) -> list[str]:
    """The base64 of each key's private part, as it appears in the text given to PowerDNS."""
    return [
        line.split(":", 1)[1].strip()
        for k in keys
        for line in k.to_bind_private().splitlines()
        if line.startswith("PrivateKey:")
    ]


def error_texts(error: BaseException) -> str:
    """The error and every error it was raised from, as text."""
    texts = []
    current: BaseException | None = error
    while current is not None:
        texts.append(f"{type(current).__name__}: {current} {current.args!r}")
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


@pytest.mark.parametrize("method", METHODS)
def test_api_key_and_private_keys_stay_out_of_logs_and_errors(
    pdns: PowerDnsLab,
    method: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    node = adapter(pdns, method)
    ksk, zsk, later, csk = key("KSK"), key("ZSK"), key("ZSK"), key("CSK")
    node.apply(NAME, install((ksk, "KSK"), (zsk, "ZSK")))
    # far enough ahead that the apply (seconds with pdnsutil on a loaded machine) ends before it:
    # maintain() must be what activates the key
    activate = int(time.time()) + 4
    node.apply(NAME, KeyPlan(NAME, (PlannedKey(later, "ZSK", now_timing(activate=activate)),)))
    assert time.time() < activate, "the apply took longer than the activation delay"
    secrets_seen = [pdns.api_key(), *private_parts(ksk, zsk, later, csk)]
    time.sleep(max(0.0, activate - time.time()))
    assert node.maintain() == IDLE_WAIT
    assert f"key {later.key_tag} now active" in caplog.text
    errors: list[BaseException] = []
    outputs: dict[str, str] = {}

    # a failed apply rolled back: the snapshot (private keys included) goes back into PowerDNS
    # (the failure made here: a zone marked PRESIGNED is refused before anything is written)
    real_publish, failed = PowerDnsAdapter._publish, []

    def publish_fails_once(self: PowerDnsAdapter, zone: dns.name.Name) -> None:
        real_publish(self, zone)
        if not failed:
            failed.append(zone)
            raise AdapterError("rectify refused (test)")

    with monkeypatch.context() as patched:
        patched.setattr(PowerDnsAdapter, "_publish", publish_fails_once)
        back = "rolled back: PowerDNS serves the previous keys again"
        with pytest.raises(AdapterError, match=back) as rolled_back:
            apply_atomically(node, [install((csk, "CSK"), remove=(zsk.key_tag,))])
    errors.append(rolled_back.value)
    assert served(pdns).tags == {ksk.key_tag, zsk.key_tag, later.key_tag}
    pdns.pdnsutil("set-presigned", ZONE)
    with pytest.raises(AdapterError, match=r"marked PRESIGNED.*nothing was changed") as refused:
        apply_atomically(node, [install((csk, "CSK"), remove=(zsk.key_tag,))])
    errors.append(refused.value)
    pdns.pdnsutil("unset-presigned", ZONE)

    if method == "api":  # a wrong API key, in check() and apply
        wrong = "wrong-" + secrets.token_urlsafe(24)
        wrong_file = tmp_path / "wrong.key"
        wrong_file.write_text(wrong + "\n")
        secrets_seen.append(wrong)
        wrong_key = adapter(pdns, method, api_key_file=str(wrong_file))
        (problem,) = wrong_key.check()
        with pytest.raises(AdapterError, match="401 Unauthorized") as refused:
            wrong_key.apply(NAME, install((csk, "CSK")))
        errors.append(refused.value)
        assert wrong_key.maintain() > 0
        assert "applying key timing failed: powerdns API" in caplog.text
        outputs.update({"check() problem": problem.what, "check() fix": problem.fix})

    outputs["log"] = caplog.text
    outputs.update({f"error {n}": error_texts(e) for n, e in enumerate(errors, 1)})
    # (names only in the failure message: pytest's diff of a secret against the whole log
    # would take minutes, and print the secret)
    leaks = [f"secret {n} in {where}" for n, secret in enumerate(secrets_seen)
             for where, text in outputs.items() if secret in text]  # fmt: skip
    assert leaks == []
    assert {k["tag"] for k in pdns.cryptokeys(ZONE)} == {ksk.key_tag, zsk.key_tag, later.key_tag}


@pytest.mark.parametrize("method", ["api", "pdnsutil"])
def test_unexpected_output_after_a_write_is_rolled_back(
    pdns: PowerDnsLab, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PowerDNS stored the key, then answered something the adapter cannot read: the key must
    # not stay behind half-installed.
    pdns_adapter = adapter(pdns, method, ZONES[0])
    csk = key("CSK")
    pdns_adapter.apply(NAME, install((csk, "CSK")))
    real_add = pdns_adapter.store.add

    def add_then_garble(*args: object, **kwargs: object) -> object:
        real_add(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyError("dnskey")

    monkeypatch.setattr(pdns_adapter.store, "add", add_then_garble)
    with pytest.raises(AdapterError, match=r"step 'write key \d+' failed: 'dnskey'; rolled back"):
        apply_atomically(pdns_adapter, [install((key("ZSK"), "ZSK"))])
    assert {k.tag for k in pdns_adapter.store.keys(NAME)} == {csk.key_tag}
    assert served(pdns).tags == {csk.key_tag}


def test_maintain_purges_again_when_its_purge_failed(
    pdns: PowerDnsLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The flags changed but the caches were not purged: the next maintain() must purge, or the
    # old key set is served until the caches expire.
    node = adapter(pdns, "api")
    ksk, new = key("KSK"), key("ZSK")
    node.apply(NAME, install((ksk, "KSK")))
    activate = int(time.time()) + 2
    node.apply(NAME, KeyPlan(NAME, (PlannedKey(new, "ZSK", now_timing(activate=activate)),)))
    served(pdns)  # the packet cache now holds the DNSKEY answer without the new key signing
    sleep_as_krs_run(maintain_until(node, activate))
    real_refresh = node.store.refresh
    monkeypatch.setattr(
        node.store, "refresh", lambda zone: (_ for _ in ()).throw(AdapterError("down"))
    )
    assert node.maintain() <= 60  # failed, comes back
    assert flags(pdns, new.key_tag) == (True, True)
    monkeypatch.setattr(node.store, "refresh", real_refresh)
    node.maintain()
    wait_until(lambda: new.key_tag in served(pdns).soa_signers, 3, "the SOA signed by the new key")
