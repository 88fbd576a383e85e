"""The ``krs-kdc`` command: the Python Key Distribution Center (commands arrive with issue 3)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from krs_plugin import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="krs-kdc",
        description=(
            "Key Distribution Center: generates DNSSEC keys, seals them per node, publishes them "
            "as CHUNK records in a control zone and sends NOTIFY. The KDC's commands (init, zone, "
            "node, key, distribute, serve) are not implemented yet; `krs demo` shows the "
            "distribution format end to end."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    build_parser().print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
