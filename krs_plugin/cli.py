"""The ``krs`` command: the Key Receiver Service that runs next to a nameserver.

Output and exit codes as in ``krs_plugin/cliout.py`` (docs/operations.md): 0 ok, 1 operational
failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from krs_plugin import __version__
from krs_plugin.cliout import add_json_option, error_exit
from krs_plugin.completion import SHELLS, completion_script
from krs_plugin.errors import ConfigError, KrsError
from krs_plugin.receiver.trustcli import add_parsers as add_trust_parsers

LIVE_DEMO_ELSEWHERE = (
    "krs demo: the live demo (a KDC, named or knotd and krs run on loopback) is not part of "
    "krs-plugin: run krs-demo, from the krs-plugin-lab distribution (lab/ in the source tree; "
    "./run demo installs and runs it). krs demo --offline runs the in-memory round trip."
)


def demo_backends(choice: str) -> tuple[str, ...]:
    """The backends a demo's ``--backend`` names: one, ``both`` (hpke, jose) or ``all``."""
    return {"both": ("hpke", "jose"), "all": ("hpke", "jose", "hpke-pq")}.get(choice, (choice,))


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both demos take (``krs demo --offline`` and the lab's ``krs-demo``)."""
    # both: hpke and jose (as before hpke-pq existed); all: the three (docs/development.md)
    parser.add_argument(
        "--backend", choices=("hpke", "jose", "hpke-pq", "both", "all"), default=None
    )
    parser.add_argument("--zone", default="example.com.")
    parser.add_argument("--algorithm", type=int, default=13, choices=(8, 13, 14, 15, 16))
    parser.add_argument(
        "--keep", metavar="DIR", help="write the demo's files here instead of a temporary folder"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="krs",
        description=(
            "Key Receiver Service: receives DNSSEC keys pushed by a KDC and installs them into "
            "the nameserver next to it (BIND9, Knot, NSD, PowerDNS)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_json_option(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="the in-memory round trip of a distribution (--offline); the live demo is krs-demo",
        description=(
            "--offline runs the in-memory round trip of both backends: a KDC seals, signs and "
            "splits a KSK and a ZSK, the records go through DNS wire form, the node checks and "
            "opens them and writes BIND key files; no process, no network. The live demo (a "
            "KDC, named or knotd and krs run on loopback) is krs-demo, from krs-plugin-lab, "
            "which operators do not install: ./run demo in the source tree installs and runs it."
        ),
    )
    add_demo_arguments(demo)
    demo.add_argument("--offline", action="store_true", help="in-memory round trip (required)")
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
            "keys, the KDC's verification key and krs.yaml into --dir and the state into "
            "--state-dir; krs doctor checks the node next, then start the service. "
            "Nothing is written when the KDC refuses."
        ),
    )
    p.add_argument("package", help="the <node>.enroll file")
    p.add_argument("--dir", default="/etc/krs", help="where the keys and krs.yaml go")
    p.add_argument(
        "--state-dir",
        default="/var/lib/krs",
        help="where krs.db goes (default /var/lib/krs, which the shipped krs.service keeps "
        "writable; /etc is read-only under it)",
    )
    p.add_argument("--config", "-c", help="krs.yaml to write (default DIR/krs.yaml)")
    p.add_argument(
        "--notify",
        help="host:port the KDC sends NOTIFY to (default: this host's address "
        "toward the KDC, port 5355)",
    )
    p.add_argument(
        "--adapter",
        choices=("bind9", "knot", "nsd", "powerdns", "directory"),
        help="the nameserver to install keys into, with the paths of its Debian package "
        "(default: directory, a folder no nameserver loads)",
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
    p = commands.add_parser(
        "rekey",
        help="rotate this node's keys (sealing, signing, SIG(0)) without enrolling again",
        description=(
            "Make new node keys, send their public halves to the KDC in an UPDATE signed with "
            "the current SIG(0) key, and switch to them once the KDC answers NOERROR; the old "
            "keys are destroyed once a distribution sealed to the new ones opened. Safe to run "
            "again and beside krs run (docs/operations.md, 'Rotating the node's keys')."
        ),
    )
    p.add_argument(
        "--status", action="store_true", help="show the keys and rotation, change nothing"
    )
    p.add_argument(
        "--backend",
        choices=("hpke", "jose", "hpke-pq"),
        help="move to this backend's key (default: keep the node's backend; docs/enrollment.md "
        "section 7)",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the KDC")
    _config_option(p)
    _json_option(p)
    p = commands.add_parser("status", help="recent distributions and their outcome")
    _config_option(p)
    _json_option(p)
    add_trust_parsers(commands, _config_option, _json_option)  # receiver/trustcli.py
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
    p = commands.add_parser(
        "completion",
        help="print the shell completion script of krs",
        description="print the shell completion script of krs",
    )
    p.add_argument("shell", choices=SHELLS, help="bash, or zsh (through its bashcompinit)")
    return parser


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        default=os.environ.get("KRS_CONFIG", "/etc/krs/krs.yaml"),
        help="krs.yaml (default $KRS_CONFIG or /etc/krs/krs.yaml)",
    )


def _json_option(p: argparse.ArgumentParser) -> None:
    add_json_option(p)  # also before the command: krs --json status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "demo" and not args.offline:
        # Options of the live demo (--server) included: say where it went, not "unrecognized".
        print(LIVE_DEMO_ELSEWHERE, file=sys.stderr)
        return 2
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "completion":
        sys.stdout.write(completion_script(build_parser(), args.shell))
        return 0
    try:
        if args.command == "demo":
            from krs_plugin.demo import run_demo

            backend = args.backend or "both"
            return run_demo(
                backends=demo_backends(backend),
                zone=args.zone,
                algorithm=args.algorithm,
                keep=args.keep,
            )
        if args.command == "enroll":
            from krs_plugin.receiver.enroll import enroll_command

            return enroll_command(args)
        if args.command == "rekey":
            from krs_plugin.receiver.rekeycli import rekey_command

            return rekey_command(args)
        if args.command in ("kdc-keys", "trust-kdc-key"):
            from krs_plugin.receiver import trustcli

            if args.command == "kdc-keys":
                return trustcli.kdc_keys_command(args)
            return trustcli.trust_command(args)
        if args.command in ("fetch", "apply", "status", "keys", "run", "doctor"):
            from krs_plugin.receiver.commands import run_command

            return run_command(args)
    except KrsError as exc:
        return error_exit("krs", exc, (ConfigError,), usage_label="configuration error: ")
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
