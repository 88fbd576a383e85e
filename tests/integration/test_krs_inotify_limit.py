"""`krs run` on a host where this user has no inotify instance left (fs.inotify.max_user_instances
reached by many processes): it runs, says so once, and still sees a krs.yaml change (issue 21,
item 10). inotify_init1 is made to fail with EMFILE in the krs process only (a sitecustomize on
its PYTHONPATH), since the real limit is per user and would hit every process of that user."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest
from daemonkit import CZ, Deployment, http_get, wait_until
from netutil import free_port

from krs_plugin.protocol import notify_name

pytestmark = pytest.mark.integration

NO_INOTIFY = """
import errno, os
import inotify_simple


def _refuse(self, *args, **kwargs):
    raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))


inotify_simple.INotify.__init__ = _refuse
"""


def test_krs_run_without_inotify_polls_krs_yaml_and_picks_up_a_change(tmp_path: Path) -> None:
    patch = tmp_path / "no-inotify"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(NO_INOTIFY)
    deployment = Deployment(tmp_path / "node")
    try:
        metrics_port = free_port()
        port = deployment.notify_port
        deployment.write_config(
            metrics=f"127.0.0.1:{metrics_port}",
            notify={"listen": [f"127.0.0.1:{port}"], "allowed_sources": ["127.0.0.2/32"]},
        )
        path = os.pathsep.join(filter(None, [str(patch), os.environ.get("PYTHONPATH")]))
        process = deployment.start_krs(env={"PYTHONPATH": path})
        assert process.poll() is None, deployment.log("krs")

        def rcode() -> int:
            query = dns.message.make_query(notify_name("00000001", CZ), "SOA")
            query.set_opcode(dns.opcode.NOTIFY)
            return int(dns.query.udp(query, "127.0.0.1", port=port, timeout=5).rcode())

        def last_reload() -> dict[str, object]:
            health: dict[str, dict[str, object]] = json.loads(http_get(metrics_port, "/healthz")[1])
            return health["last_reload"]

        assert rcode() == dns.rcode.REFUSED
        deployment.write_config(
            notify={"listen": [f"127.0.0.1:{port}"], "allowed_sources": ["127.0.0.0/8"]}
        )
        wait_until(lambda: last_reload().get("result") == "applied", 15, "the polled reload")
        assert rcode() == dns.rcode.NOERROR
        log = deployment.log("krs")
        assert log.count("inotify is not available") == 1, log
        assert "fs.inotify.max_user_instances" in log and "sysctl" in log
        assert "Traceback" not in log
    finally:
        deployment.close()
