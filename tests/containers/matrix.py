"""The container matrix, driven with the docker SDK: the KDC image, and for each nameserver its
image with the KRS image beside it as a sidecar, sharing only the volumes named in ``SERVERS``.

Everything runs with host networking on loopback ports allocated here; every container and volume
made here carries ``PREFIX`` in its name and is removed by ``close()``. The KRS joins the KDC the
way an operator's node does: with an enrollment package, copied into its container before start.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import docker
import docker.errors
import yaml
from docker.models.containers import Container

from krs_lab.ports import free_port
from tests.adapters.servers import Served

HOST = "127.0.0.1"
CONTROL_ZONE = "kdc.example."
SHARED_UID = 5353  # the KRS and the nameserver user in every image of docker/
SCENARIOS = ("zsk", "ksk", "roll", "delete", "refused")


class MatrixError(Exception):
    pass


def wait_until(predicate: Callable[[], Any], timeout: float, what: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise MatrixError(f"timed out waiting for {what()}")
        time.sleep(0.2)


def tar_of(files: dict[str, bytes], uid: int = SHARED_UID, mode: int = 0o600) -> bytes:
    """A tar stream of ``files`` owned by ``uid``: put_archive keeps owner and mode."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid, info.mode = len(data), uid, uid, mode
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass(frozen=True)
class Mount:
    """A volume the nameserver and its KRS share; ``krs_read_only`` when the KRS only reads it."""

    name: str
    path: str
    krs_read_only: bool


@dataclass(frozen=True)
class ServerSpec:
    name: str
    mounts: tuple[Mount, ...]
    ports: tuple[str, ...]  # environment variables of the server image that take a port
    adapter: Callable[[dict[str, int]], dict[str, Any]]


SERVERS: dict[str, ServerSpec] = {
    "bind9": ServerSpec(
        "bind9",
        (
            Mount("keys", "/var/lib/bind/keys", False),
            Mount("rndc", "/etc/bind/rndc", True),
            Mount("conf", "/etc/bind/conf", True),  # named.conf: the dnssec-policy on 9.20
        ),
        ("DNS_PORT", "RNDC_PORT"),
        lambda p: {
            "type": "bind9",
            "settings": {
                "key_directory": "/var/lib/bind/keys",
                "server": f"{HOST}:{p['DNS_PORT']}",
                "named_conf": "/etc/bind/conf/named.conf",
                "rndc": {
                    "key_file": "/etc/bind/rndc/rndc.key",
                    "server": HOST,
                    "port": p["RNDC_PORT"],
                },
            },
        },
    ),
    "knot": ServerSpec(
        "knot",
        (
            Mount("config", "/etc/knot", True),
            Mount("kasp", "/var/lib/knot/kasp", False),
            Mount("run", "/run/knot", False),
        ),
        ("DNS_PORT",),
        lambda p: {
            "type": "knot",
            "settings": {"config": "/etc/knot/knot.conf", "server": f"{HOST}:{p['DNS_PORT']}"},
        },
    ),
    "nsd": ServerSpec(
        "nsd",
        (
            Mount("config", "/etc/nsd", True),
            Mount("signed", "/var/lib/nsd/signed", False),
            Mount("run", "/run/nsd", False),
        ),
        ("DNS_PORT",),
        lambda p: {
            "type": "nsd",
            "settings": {
                "config": "/etc/nsd/nsd.conf",
                "server": f"{HOST}:{p['DNS_PORT']}",
                "key_directory": "/var/lib/krs/keys",
                "unsigned_file": "/etc/nsd/unsigned/{zone}zone",
                "signed_file": "/var/lib/nsd/signed/{zone}zone.signed",
            },
        },
    ),
    "powerdns": ServerSpec(
        "powerdns",
        (Mount("api", "/etc/powerdns/api", True),),
        ("DNS_PORT", "API_PORT"),
        lambda p: {
            "type": "powerdns",
            "settings": {
                "method": "api",
                "api_url": f"http://{HOST}:{p['API_PORT']}",
                "api_key_file": "/etc/powerdns/api/api.key",
                "server": f"{HOST}:{p['DNS_PORT']}",
            },
        },
    ),
}


def zones_of(server: str) -> list[str]:
    """One zone per scenario and server, so that every test starts from its own state."""
    return [f"{scenario}.{server}.test." for scenario in SCENARIOS]


def run_checked(container: Container, *argv: str) -> str:
    result = container.exec_run(list(argv), demux=True)
    out, err = (part.decode() if part else "" for part in result.output)
    if result.exit_code != 0:
        raise MatrixError(f"{' '.join(argv)} in {container.name}: exit {result.exit_code}: {err}")
    return out


@dataclass
class Kdc:
    """``krs-kdc serve`` in the kdc image; commands run in it with ``docker exec``."""

    client: docker.DockerClient
    image: str
    name: str
    port: int = field(default_factory=free_port)
    container: Container | None = None
    starts: int = 0  # "krs-kdc serving" lines seen: one more after each start

    def start(self) -> None:
        if self.container is None:
            self.container = self.client.containers.run(
                self.image,
                name=self.name,
                detach=True,
                network_mode="host",
                environment={
                    "KDC_LISTEN": f"{HOST}:{self.port}",
                    "KDC_CONTROL_ZONE": CONTROL_ZONE,
                },
            )
        else:
            self.container.start()
        self.wait_serving()

    def wait_serving(self) -> None:
        assert self.container is not None
        container = self.container

        def serving() -> bool:
            container.reload()
            if container.status == "exited":
                raise MatrixError(f"{self.name} exited: {self.logs()}")
            return self.logs().count("krs-kdc serving") > self.starts

        wait_until(serving, 60, lambda: f"{self.name} to serve: {self.logs()}")
        self.starts += 1

    def stop(self) -> None:
        assert self.container is not None
        self.container.stop(timeout=10)

    def logs(self) -> str:
        assert self.container is not None
        return self.container.logs().decode(errors="replace")

    def __call__(self, *args: str) -> Any:
        assert self.container is not None
        return json.loads(run_checked(self.container, "krs-kdc", "--json", *args))

    def generate(self, zone: str, role: str) -> int:
        return int(self("key", "generate", "--zone", zone, "--role", role)["key_tag"])

    def distribute(self, zone: str) -> str:
        return str(self("distribute", "--zone", zone)["distribution_id"])

    def wait_confirmed(self, dist_id: str, why: Callable[[], str], timeout: float = 60) -> None:
        def confirmed() -> bool:
            for row in self("distribution", "list"):
                if row["id"] == dist_id:
                    if row["status"] not in ("pending", "notified", "confirmed"):
                        raise MatrixError(f"distribution {dist_id}: {row}\n{why()}")
                    return bool(row["status"] == "confirmed")
            return False

        wait_until(confirmed, timeout, lambda: f"{dist_id} to be confirmed:\n{why()}")

    def close(self) -> None:
        if self.container is not None:
            self.container.remove(force=True, v=True)


@dataclass
class Pair:
    """A nameserver container and its KRS sidecar, sharing the volumes of its ``ServerSpec``."""

    client: docker.DockerClient
    spec: ServerSpec
    images: dict[str, str]
    prefix: str
    kdc: Kdc
    node_id: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    notify_port: int = field(default_factory=free_port)
    server: Container | None = None
    krs: Container | None = None
    volumes: list[str] = field(default_factory=list)

    @property
    def dns_port(self) -> int:
        return self.ports["DNS_PORT"]

    def start(self) -> None:
        self.node_id = f"ns1.{self.spec.name}.example."
        for variable in self.spec.ports:
            self.ports[variable] = free_port()
        for mount in self.spec.mounts:
            volume = self.client.volumes.create(f"{self.prefix}-{self.spec.name}-{mount.name}")
            self.volumes.append(str(volume.name))
        zones = zones_of(self.spec.name)
        self.server = self.client.containers.run(
            self.images[self.spec.name],
            name=f"{self.prefix}-{self.spec.name}",
            detach=True,
            network_mode="host",
            environment={"ZONES": " ".join(zones), **{k: str(v) for k, v in self.ports.items()}},
            volumes={
                v: {"bind": m.path, "mode": "rw"}
                for v, m in zip(self.volumes, self.spec.mounts, strict=True)
            },
        )
        wait_until(self._healthy, 60, lambda: f"{self.spec.name} to be healthy: {self.logs()}")
        for zone in zones:
            self.kdc("zone", "add", zone)
            self.kdc.generate(zone, "KSK")
            self.kdc.generate(zone, "ZSK")
        self.kdc(
            "enroll", "create", "--node", self.node_id, "--zones", *zones,
            "--kdc-address", f"{HOST}:{self.kdc.port}", "--output", "/tmp/node.enroll",
        )  # fmt: skip
        assert self.kdc.container is not None
        enroll = run_checked(self.kdc.container, "cat", "/tmp/node.enroll").encode()
        run_checked(self.kdc.container, "rm", "/tmp/node.enroll")
        self.krs = self.client.containers.create(
            self.images["krs"],
            name=f"{self.prefix}-{self.spec.name}-krs",
            network_mode="host",
            environment={"KRS_NOTIFY": f"{HOST}:{self.notify_port}"},
            volumes={
                v: {"bind": m.path, "mode": "ro" if m.krs_read_only else "rw"}
                for v, m in zip(self.volumes, self.spec.mounts, strict=True)
            },
        )
        adapter = yaml.safe_dump(self.spec.adapter(self.ports)).encode()
        self.krs.put_archive(
            "/etc/krs", tar_of({"enroll/node.enroll": enroll, "adapter.yaml": adapter})
        )
        self.krs.start()
        # The first distribution (queued at enrollment) carries every zone's KSK and ZSK.
        wait_until(
            self._all_zones_signed, 90, lambda: f"first keys on {self.spec.name}: {self.logs()}"
        )

    def _healthy(self) -> bool:
        assert self.server is not None
        self.server.reload()
        if self.server.status == "exited":
            raise MatrixError(f"{self.spec.name} exited: {self.logs()}")
        return bool(self.server.attrs["State"].get("Health", {}).get("Status") == "healthy")

    def _all_zones_signed(self) -> bool:
        assert self.krs is not None
        self.krs.reload()
        if self.krs.status == "exited":
            raise MatrixError(f"the KRS of {self.spec.name} exited: {self.logs()}")
        try:
            return all(len(self.served(zone).soa_signers) == 1 for zone in zones_of(self.spec.name))
        except (OSError, dns.exception.DNSException):
            return False

    def served(self, zone: str) -> Served:
        return Served(HOST, self.dns_port, zone)

    def status(self) -> list[dict[str, Any]]:
        assert self.krs is not None
        rows: list[dict[str, Any]] = json.loads(
            run_checked(self.krs, "krs", "status", "-c", "/var/lib/krs/krs.yaml", "--json")
        )
        return rows

    def logs(self) -> str:
        parts = []
        for container in (self.server, self.krs):
            if container is not None:
                parts.append(f"--- {container.name}\n{container.logs().decode(errors='replace')}")
        return "\n".join(parts)

    def close(self) -> None:
        for container in (self.krs, self.server):
            if container is not None:
                container.remove(force=True, v=True)
        for volume in self.volumes:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.volumes.get(volume).remove(force=True)
