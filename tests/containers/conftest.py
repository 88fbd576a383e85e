"""Fixtures of the container tier: images built with docker/build (as an operator builds them),
one KDC container and one nameserver/KRS pair per server, for each Debian base of
``KRS_CONTAINER_SUITES`` (default: bookworm and trixie, Debian 12 and 13). Each base's images,
KDC and pairs are package-scoped fixtures of that base: removed when its tests are done, before the
next base is built, so only one set runs at a time and nothing is kept through the rest of the
suite. At the very end the tier checks that no container, volume or image of this run is left.

``KRS_CONTAINER_SUITES=forky`` runs the same table against Debian testing (the "next" tier,
docs/containers.md); it is not part of the default run, as testing's packages move.

Without a Docker engine the tier is skipped with the reason, unless KRS_REQUIRE_CONTAINERS is set
(``./run tests`` and so CI set it): then every test of the tier fails, saying why.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.matrix import SERVERS, Kdc, Pair

PROJECT = Path(__file__).resolve().parents[2]
PREFIX = f"krs-plugin-test-{secrets.token_hex(3)}"
DEFAULT_SUITES = ("bookworm", "trixie")
SUITES = tuple(os.environ.get("KRS_CONTAINER_SUITES", "").split()) or DEFAULT_SUITES
BROKEN: dict[tuple[str, str], str] = {}  # (suite, server) -> why its pair did not start


def _unavailable(reason: str) -> None:
    if os.environ.get("KRS_REQUIRE_CONTAINERS"):
        pytest.fail(f"the container tier is required here and cannot run: {reason}")
    pytest.skip(f"no container tier: {reason}")


def volume_names(client: object) -> set[str]:
    import docker

    engine: docker.DockerClient = client  # type: ignore[assignment]
    return {str(v.name) for v in engine.volumes.list()}


def leftovers(client: object, volumes_before: set[str]) -> list[str]:
    """Every container, volume and image whose name carries this run's PREFIX, and every
    anonymous volume (an image's VOLUME of a container removed without its volumes) made since
    the tier started."""
    import docker

    engine: docker.DockerClient = client  # type: ignore[assignment]
    found = [f"container {c.name}" for c in engine.containers.list(all=True) if PREFIX in c.name]
    found += [
        f"volume {name}"
        for name in volume_names(client) - volumes_before
        if PREFIX in name or re.fullmatch(r"[0-9a-f]{64}", name)
    ]
    tags = [tag for image in engine.images.list(all=True) for tag in image.tags]
    found += [f"image {tag}" for tag in tags if PREFIX in tag]
    return found


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
    volumes_before = volume_names(client)
    yield client
    left = leftovers(client, volumes_before)
    client.close()
    assert not left, f"the container tier left behind: {left}"


@pytest.fixture(scope="package", params=SUITES)
def suite(request: pytest.FixtureRequest) -> str:
    """The Debian base of the images: bookworm, trixie (default), forky (the next tier)."""
    return str(request.param)


@pytest.fixture(scope="package")
def images(docker_client: object, suite: str) -> Iterator[dict[str, str]]:
    """Every image on ``suite``, built by docker/build under a prefix of this run and the tag
    ``test-<suite>``; removed afterwards with whatever else the build made (a local base image,
    the install stages)."""
    import docker

    client: docker.DockerClient = docker_client  # type: ignore[assignment]
    before = {image.id for image in client.images.list(all=True)}
    try:
        built = subprocess.run(
            [
                str(PROJECT / "docker" / "build"),
                *("--suite", suite, "--prefix", PREFIX, "--tag", f"test-{suite}"),
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if built.returncode != 0:
            why = f"({built.returncode}):\n{built.stderr}"
            pytest.fail(f"docker/build --suite {suite} failed {why}")
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
def kdc(docker_client: object, images: dict[str, str], suite: str) -> Iterator[Kdc]:
    center = Kdc(docker_client, images["kdc"], f"{PREFIX}-{suite}-kdc")  # type: ignore[arg-type]
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
    suite: str,
    pairs: dict[str, Pair],
    kdc: Kdc,
    docker_client: object,
    images: dict[str, str],
) -> Pair:
    name = request.param
    if (suite, name) in BROKEN:
        pytest.fail(
            f"the {name} pair on {suite} did not start (see its first test): {BROKEN[suite, name]}"
        )
    if name not in pairs:
        pairs[name] = Pair(docker_client, SERVERS[name], images, f"{PREFIX}-{suite}", kdc)  # type: ignore[arg-type]
        try:
            pairs[name].start()
        except Exception as exc:
            BROKEN[suite, name] = str(exc).splitlines()[0]
            raise
    return pairs[name]
