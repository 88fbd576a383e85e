"""docker/compose.yaml as an operator runs it: one `up`, and the four nameservers serve the KDC's
keys, validly signed; one distribution then reaches all four (the multi-signer case). Once per
Debian base of the tier (``suite``), with that base's images (``KRS_IMAGE_TAG=test-<suite>``).

The compose file binds fixed loopback ports (docs/containers.md); the test says which one is
taken rather than failing somewhere inside compose.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator

import dns.exception
import pytest

from tests.adapters.servers import Served
from tests.containers.conftest import PREFIX, PROJECT
from tests.containers.matrix import HOST, wait_until

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1500)]

COMPOSE_FILE = PROJECT / "docker" / "compose.yaml"
DNS_PORTS = {"bind9": 5301, "knot": 5302, "nsd": 5303, "powerdns": 5304}
OTHER_PORTS = (5311, 5312, 5313, 5314, 5354, 8081, 9531)
ZONE = "example.com."


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if probe.returncode == 0:
        return ["docker", "compose"]
    message = "neither docker-compose nor the docker compose plugin is installed"
    if os.environ.get("KRS_REQUIRE_CONTAINERS"):
        pytest.fail(message)
    pytest.skip(message)


def port_taken(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((HOST, port))
            except OSError:
                return True
    return False


class Compose:
    def __init__(self, command: list[str], images: dict[str, str], suite: str) -> None:
        self.argv = [*command, "-p", f"{PREFIX}-compose-{suite}", "-f", str(COMPOSE_FILE)]
        tag = f"test-{suite}"
        self.env = {**os.environ, "KRS_IMAGE_PREFIX": PREFIX, "KRS_IMAGE_TAG": tag}
        assert images["krs"] == f"{PREFIX}/krs:{tag}"

    def __call__(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)}: {done.returncode}\n{done.stderr}")
        return done.stdout

    def kdc(self, *args: str) -> object:
        return json.loads(self("exec", "-T", "kdc", "krs-kdc", "--json", *args))


@pytest.fixture(scope="module")
def compose(images: dict[str, str], suite: str) -> Iterator[Compose]:
    taken = [p for p in (*DNS_PORTS.values(), *OTHER_PORTS) if port_taken(p)]
    if taken:
        pytest.fail(f"docker/compose.yaml needs 127.0.0.1 ports {taken}, which are in use")
    project = Compose(compose_command(), images, suite)
    try:
        project("up", "-d")
        yield project
    finally:
        project("down", "-v", "--remove-orphans")


def served_everywhere() -> dict[str, Served]:
    return {name: Served(HOST, port, ZONE) for name, port in DNS_PORTS.items()}


def test_one_up_and_every_server_serves_the_kdcs_keys(compose: Compose) -> None:
    keys = compose.kdc("key", "list", "--zone", ZONE)
    assert isinstance(keys, list)
    tags = {int(k["key_tag"]) for k in keys}
    ksk = {int(k["key_tag"]) for k in keys if k["role"] == "KSK"}
    zsk = tags - ksk

    def all_signed() -> dict[str, Served] | None:
        try:
            now = served_everywhere()
        except (OSError, dns.exception.DNSException):
            return None
        return now if all(s.soa_signers == zsk for s in now.values()) else None

    now = wait_until(all_signed, 120, lambda: compose("logs", "--tail", "30"))
    for name, served in now.items():
        assert served.tags == tags, name
        assert served.dnskey_signers == ksk, name

    # One distribution, four servers: a new ZSK signs everywhere.
    new = int(compose.kdc("key", "generate", "--zone", ZONE, "--role", "ZSK")["key_tag"])  # type: ignore[index]
    compose.kdc("distribute", "--zone", ZONE)

    def new_key_signs() -> bool:
        return all(s.soa_signers == zsk | {new} for s in served_everywhere().values())

    wait_until(new_key_signs, 60, lambda: compose("logs", "--tail", "30"))


def test_compose_and_adapter_files_name_only_loopback_addresses() -> None:
    files = [COMPOSE_FILE, *sorted((PROJECT / "docker" / "adapters").glob("*.yaml"))]
    ipv4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
    addresses = {a for f in files for a in ipv4.findall(f.read_text())}
    assert addresses and all(a.startswith("127.") for a in addresses), addresses
