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
        help="seal a key distribution for a node as a KDC does, then receive and open it",
        description=(
            "Round trip on this machine: a KDC makes a KSK and a ZSK, seals them for one node "
            "(HPKE or JOSE, signed ES256), splits them into CHUNK records; the node reassembles, "
            "verifies, decrypts and validates them, and writes BIND key files."
        ),
    )
    demo.add_argument("--backend", choices=("hpke", "jose", "both"), default="both")
    demo.add_argument("--zone", default="example.com.")
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
        if args.command == "demo":
            from krs_plugin.demo import run_demo

            return run_demo(
                backends=("hpke", "jose") if args.backend == "both" else (args.backend,),
                zone=args.zone,
                algorithm=args.algorithm,
                keep=args.keep,
            )
        if args.command in ("fetch", "apply", "status", "keys", "run"):
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
