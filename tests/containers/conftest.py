"""Fixtures of the container tier: images built with docker/build (as an operator builds them),
one KDC container and one nameserver/KRS pair per server, all removed when the tier is done
(package scope: not kept running through the rest of the suite).

Without a Docker engine the tier is skipped with the reason, unless KRS_REQUIRE_CONTAINERS is set
(``./run tests`` and so CI set it): then every test of the tier fails, saying why.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.matrix import SERVERS, Kdc, Pair

PROJECT = Path(__file__).resolve().parents[2]
PREFIX = f"krs-plugin-test-{secrets.token_hex(3)}"
BROKEN: dict[str, str] = {}  # server -> why its pair did not start


def _unavailable(reason: str) -> None:
    if os.environ.get("KRS_REQUIRE_CONTAINERS"):
        pytest.fail(f"the container tier is required here and cannot run: {reason}")
    pytest.skip(f"no container tier: {reason}")


@pytest.fixture(scope="package")
def docker_client() -> Iterator[object]:
    try:
        import docker
    except ImportError:
        _unavailable("the docker SDK is not installed (pip install -e '.[test]')")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises several kinds; all mean "no engine"
        _unavailable(f"no Docker engine answers ({exc}); start dockerd (docs/containers.md)")
    yield client
    client.close()


@pytest.fixture(scope="package")
def images(docker_client: object) -> Iterator[dict[str, str]]:
    """Every image, built by docker/build under a prefix of this run; removed afterwards with
    whatever else the build made (a local base image, the install stages)."""
    import docker

    client: docker.DockerClient = docker_client  # type: ignore[assignment]
    before = {image.id for image in client.images.list(all=True)}
    try:
        built = subprocess.run(
            [str(PROJECT / "docker" / "build"), "--prefix", PREFIX, "--tag", "test"],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if built.returncode != 0:
            pytest.fail(f"docker/build failed ({built.returncode}):\n{built.stderr}")
        names = {line.split("/")[-1].split(":")[0]: line for line in built.stdout.split()}
        yield names
    finally:
        for image in client.images.list(all=True):
            tags = image.tags
            if image.id not in before and (not tags or any(t.startswith(PREFIX) for t in tags)):
                # a parent of another removed image may be gone already
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(image.id, force=True)


@pytest.fixture(scope="package")
def kdc(docker_client: object, images: dict[str, str]) -> Iterator[Kdc]:
    center = Kdc(docker_client, images["kdc"], f"{PREFIX}-kdc")  # type: ignore[arg-type]
    try:
        center.start()
        yield center
    finally:
        center.close()


@pytest.fixture(scope="package")
def pairs(kdc: Kdc) -> Iterator[dict[str, Pair]]:
    """Pairs started on first use (``pair`` fixture), removed at the end before the KDC."""
    started: dict[str, Pair] = {}
    try:
        yield started
    finally:
        for pair in started.values():
            pair.close()


@pytest.fixture(params=sorted(SERVERS))
def pair(
    request: pytest.FixtureRequest,
    pairs: dict[str, Pair],
    kdc: Kdc,
    docker_client: object,
    images: dict[str, str],
) -> Pair:
    name = request.param
    if name in BROKEN:
        pytest.fail(f"the {name} pair did not start (see the first {name} test): {BROKEN[name]}")
    if name not in pairs:
        pairs[name] = Pair(docker_client, SERVERS[name], images, PREFIX, kdc)  # type: ignore[arg-type]
        try:
            pairs[name].start()
        except Exception as exc:
            BROKEN[name] = str(exc).splitlines()[0]
            raise
    return pairs[name]
