"""The ``krs`` command: the Key Receiver Service that runs next to a nameserver.

Exit codes follow STYLE.md: 0 ok, 1 operational failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
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
    return parser


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
