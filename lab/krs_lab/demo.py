"""``krs-demo``: the live demo, the README's main job (``./run demo``).

A KDC, a BIND 9 or a knotd and a KRS on this machine's loopback (krs_lab.mainjob). It lives in
krs-plugin-lab, not in the krs-plugin wheel operators install; ``--offline`` runs the core's
in-memory round trip (``krs demo --offline``, krs_plugin.demo) with the same options.

Exit codes as krs's (docs/operations.md): 0 ok, 1 operational failure, 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from krs_plugin import __version__
from krs_plugin.cli import add_demo_arguments, demo_backends
from krs_plugin.cliout import error_exit
from krs_plugin.errors import ConfigError, KrsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="krs-demo",
        description=(
            "The main job: starts a KDC (krs-kdc serve), a BIND 9 (named, from the OS packages) "
            "and a KRS (krs run) on loopback; the KDC distributes a KSK and a ZSK, the KRS "
            "installs them into BIND, and the served DNSKEY set is printed and validated. "
            "Without named, the keys go to a folder (directory adapter). --offline runs the "
            "in-memory round trip of both backends instead, without any process or network."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_demo_arguments(parser)
    parser.add_argument("--server", choices=("auto", "bind9", "knot", "directory"), default="auto")
    parser.add_argument("--offline", action="store_true", help="in-memory round trip only")
    parser.add_argument(
        "--custody",
        choices=("file", "pkcs11"),
        default="file",
        help="where the KDC keeps its signing key and KEK: a file (default), or a SoftHSM2 "
        "token made for the demo (docs/security.md, 'Key custody')",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.offline:
            from krs_plugin.demo import run_demo

            return run_demo(
                backends=demo_backends(args.backend or "both"),
                zone=args.zone,
                algorithm=args.algorithm,
                keep=args.keep,
            )
        from krs_lab.mainjob import run_main_job
        from krs_lab.softhsm import LAB_CUSTODY, available

        if args.custody == "pkcs11":
            problem = available()
            if problem is not None:
                raise ConfigError(f"--custody pkcs11: {problem}")
            os.environ[LAB_CUSTODY] = "pkcs11"  # every KDC of the lab (krs_lab/softhsm.py)

        backends = demo_backends(args.backend or "hpke")
        return max(
            run_main_job(backend=b, zone=args.zone, server=args.server, keep=args.keep)
            for b in backends
        )
    except KrsError as exc:
        return error_exit("krs-demo", exc, (ConfigError,), usage_label="configuration error: ")


if __name__ == "__main__":
    sys.exit(main())
