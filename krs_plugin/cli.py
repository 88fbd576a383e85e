"""The ``krs`` command: the Key Receiver Service that runs next to a nameserver.

Exit codes follow STYLE.md: 0 ok, 1 operational failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from krs_plugin import __version__
from krs_plugin.errors import ConfigError, KrsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="krs",
        description=(
            "Key Receiver Service: receives DNSSEC keys pushed by a KDC and installs them into "
            "the nameserver next to it (BIND9, Knot, NSD, PowerDNS)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="the main job: a KDC distributes a KSK and a ZSK to a KRS that installs them in BIND",
        description=(
            "Starts a KDC (krs-kdc serve), a BIND 9 (named, from the OS packages) and a KRS "
            "(krs run) on loopback; the KDC distributes a KSK and a ZSK, the KRS installs them "
            "into BIND, and the served DNSKEY set is printed and validated. Without named, the "
            "keys go to a folder (directory adapter). --offline runs the in-memory round trip "
            "of both backends instead, without any process or network."
        ),
    )
    demo.add_argument("--backend", choices=("hpke", "jose", "both"), default=None)
    demo.add_argument("--zone", default="example.com.")
    demo.add_argument("--server", choices=("auto", "bind9", "knot", "directory"), default="auto")
    demo.add_argument("--offline", action="store_true", help="in-memory round trip only")
    demo.add_argument("--algorithm", type=int, default=13, choices=(8, 13, 14, 15, 16))
    demo.add_argument(
        "--keep", metavar="DIR", help="write the demo's files here instead of a temporary folder"
    )
    for name, text in (
        ("fetch", "fetch one distribution now, check it, apply it and record the outcome"),
        ("apply", "fetch and check one distribution and show what applying it would change"),
    ):
        p = commands.add_parser(name, help=text, description=text)
        p.add_argument("distribution_id")
        _config_option(p)
        _json_option(p)
        if name == "apply":
            p.add_argument(
                "--dry-run",
                action="store_true",
                required=True,
                help="only show the plan (the daemon applies)",
            )
    p = commands.add_parser(
        "enroll",
        help="join a KDC with a bootstrap package: make this node's keys and write krs.yaml",
        description=(
            "Reads the package from krs-kdc enroll create, makes the node's keys (0600), sends "
            "the SIG(0)-signed enrollment UPDATE to the KDC over TCP, and on success writes the "
            "keys, the KDC's verification key and krs.yaml into --dir; krs run starts next. "
            "Nothing is written when the KDC refuses."
        ),
    )
    p.add_argument("package", help="the <node>.enroll file")
    p.add_argument("--dir", default="/etc/krs", help="where keys, krs.yaml and state go")
    p.add_argument("--config", "-c", help="krs.yaml to write (default DIR/krs.yaml)")
    p.add_argument(
        "--notify",
        help="host:port the KDC sends NOTIFY to (default: this host's address "
        "toward the KDC, port 5355)",
    )
    p.add_argument("--adapter-config", help="YAML file with krs.yaml's adapter: section")
    p.add_argument(
        "--kdc-verification-key", help="the KDC's signing key, for a package without one"
    )
    _json_option(p)
    p = commands.add_parser(
        "run", help="run the KRS daemon: NOTIFY listener, fetch, apply, confirm"
    )
    _config_option(p)
    p = commands.add_parser("status", help="recent distributions and their outcome")
    _config_option(p)
    _json_option(p)
    p = commands.add_parser("keys", help="keys installed per zone")
    p.add_argument("zone", nargs="?")
    _config_option(p)
    _json_option(p)
    p = commands.add_parser(
        "doctor",
        help="check key files, state, control servers, listen addresses and the adapter",
        description=(
            "Preflight for krs run: prints every problem at once. Exit 0 when nothing is wrong "
            "(warnings allowed), 1 when a check fails, 2 when krs.yaml does not load."
        ),
    )
    _config_option(p)
    _json_option(p)
    return parser


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        default=os.environ.get("KRS_CONFIG", "/etc/krs/krs.yaml"),
        help="krs.yaml (default $KRS_CONFIG or /etc/krs/krs.yaml)",
    )


def _json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo" and args.offline:
            from krs_plugin.demo import run_demo

            backend = args.backend or "both"
            return run_demo(
                backends=("hpke", "jose") if backend == "both" else (backend,),
                zone=args.zone,
                algorithm=args.algorithm,
                keep=args.keep,
            )
        if args.command == "demo":
            from krs_plugin.lab.mainjob import run_main_job

            backends = ("hpke", "jose") if args.backend == "both" else (args.backend or "hpke",)
            return max(
                run_main_job(backend=b, zone=args.zone, server=args.server, keep=args.keep)
                for b in backends
            )
        if args.command == "enroll":
            from krs_plugin.receiver.enroll import enroll_command

            return enroll_command(args)
        if args.command in ("fetch", "apply", "status", "keys", "run", "doctor"):
            from krs_plugin.receiver.commands import run_command

            return run_command(args)
    except ConfigError as exc:
        print(f"krs: configuration error: {exc}", file=sys.stderr)
        return 2
    except KrsError as exc:
        print(f"krs: {exc}", file=sys.stderr)
        return 1
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
