"""The man pages krs(1) and krs-kdc(1), made from the commands' own parsers.

Every command and subcommand, with its options and their help, comes from ``build_parser()`` of
``krs_plugin/cli.py`` and ``krs_plugin/kdc/cli.py`` (through ``krs_plugin/parsertree.py``); the
sections a parser cannot say (exit status, environment, files, see also) are written here. The
pages are committed under ``man/`` and installed with the wheel into ``share/man/man1``;
after changing a parser, regenerate them (a test fails until then)::

    python -m krs_plugin.manpage --output man/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from krs_plugin import __version__
from krs_plugin.cliout import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from krs_plugin.parsertree import Argument, Command, command_tree


@dataclass(frozen=True)
class Page:
    prog: str
    summary: str
    """The NAME line after the dash."""
    parser: Callable[[], argparse.ArgumentParser]
    description: tuple[str, ...]
    """Paragraphs after the parser's own description."""
    exit_status: tuple[tuple[int, str], ...]
    environment: tuple[tuple[str, str], ...]
    files: tuple[tuple[str, str], ...]
    see_also: tuple[str, ...]


def _krs_parser() -> argparse.ArgumentParser:
    from krs_plugin.cli import build_parser

    return build_parser()


def _kdc_parser() -> argparse.ArgumentParser:
    from krs_plugin.kdc.cli import build_parser

    return build_parser()


COMPLETION = (
    "Shell completion: {prog} completion bash prints a bash completion script for {prog}, made "
    "from the same parser as this page; install it with {prog} completion bash > "
    "/etc/bash_completion.d/{prog} (or source it from ~/.bashrc). {prog} completion zsh prints "
    "the same for zsh."
)

PAGES = {
    "krs": Page(
        prog="krs",
        summary="Key Receiver Service: installs DNSSEC keys pushed by a KDC into a nameserver",
        parser=_krs_parser,
        description=(
            "krs runs next to an authoritative nameserver (BIND 9, Knot DNS, NSD, PowerDNS). "
            "krs run listens for NOTIFY from the KDC, fetches each distribution from the control "
            "zone, checks its integrity and signature, decrypts it, installs the keys through the "
            "adapter named in krs.yaml, and confirms to the KDC. The other commands enroll a new "
            "node, show what the daemon did, and check a node before it runs.",
            "Every command but demo, enroll and completion reads krs.yaml (--config). With --json "
            "a command prints one JSON document instead of lines; errors are one line on "
            "standard error.",
            COMPLETION.format(prog="krs"),
        ),
        exit_status=(
            (EXIT_OK, "success; for doctor: no check failed (warnings allowed)"),
            (
                EXIT_FAILED,
                "an operational failure: a distribution refused or failed, no control-zone "
                "server answered, the KDC refused an enrollment, a doctor check failed",
            ),
            (
                EXIT_USAGE,
                "a usage or configuration error: a wrong command line, a krs.yaml that does not "
                "load, a missing key file, a damaged state database",
            ),
        ),
        environment=(
            ("KRS_CONFIG", "krs.yaml when --config is not given (default /etc/krs/krs.yaml)."),
        ),
        files=(
            ("/etc/krs/krs.yaml", "the configuration (docs/configuration.md)"),
            (
                "/etc/krs/*.privatekey",
                "the node's private keys (HPKE or JOSE, and the signing key), mode 0600",
            ),
            (
                "/var/lib/krs/krs.db",
                "the state database (the state key of krs.yaml): applied distributions, "
                "installed keys, the apply journal",
            ),
        ),
        see_also=("krs-kdc(1)", "named(8)", "knotd(8)", "nsd(8)", "pdns_server(1)", "sqlite3(1)"),
    ),
    "krs-kdc": Page(
        prog="krs-kdc",
        summary="Key Distribution Center: generates DNSSEC keys and pushes them to KRS nodes",
        parser=_kdc_parser,
        description=(
            "All state lives in one directory (--state, or $KRS_KDC_STATE): kdc.db, the SQLite "
            "database with every zone's private keys, the nodes and the distributions, and keys/ "
            "with the KDC's own keys. krs-kdc serve answers for the control zone and sends "
            "NOTIFY; the other commands change or show the state and may run beside it, as the "
            "same user.",
            "--state, an option of krs-kdc itself, goes before the command: krs-kdc --state "
            "/var/lib/krs-kdc key list. A refused command changes nothing.",
            'Back up kdc.db while serve runs through SQLite, with sqlite3 kdc.db "VACUUM INTO '
            "'/backup/kdc.db'\" (not a plain copy, nor the shell's .backup, which a busy KDC can "
            'keep from finishing), together with keys/; docs/kdc.md, "Backup and restore", '
            "has the recipe and the restore.",
            COMPLETION.format(prog="krs-kdc"),
        ),
        exit_status=(
            (EXIT_OK, "success"),
            (EXIT_FAILED, "an operational failure"),
            (
                EXIT_USAGE,
                "a usage or configuration error: a wrong command line, an unknown zone, node or "
                "key, a duplicate, a malformed key file, no or a damaged state database",
            ),
        ),
        environment=(
            (
                "KRS_KDC_STATE",
                "the state directory when --state is not given (default ./kdc-state).",
            ),
        ),
        files=(
            ("STATE/kdc.db", "the state database (SQLite in WAL mode, 0600): back it up"),
            (
                "STATE/keys/",
                "the KDC's keys (0700): kdc.signing.privatekey signs every distribution, its "
                ".pubkey is every KRS's verification key; kdc.hpke and kdc.jose for enrollment",
            ),
            ("/var/lib/krs-kdc", "the state directory of the systemd unit krs-kdc.service"),
        ),
        see_also=("krs(1)", "sqlite3(1)", "systemd.exec(5)"),
    ),
}


def render(page: Page) -> str:
    tree = command_tree(page.parser())
    lines = [
        f'.\\" Made by python -m krs_plugin.manpage from the parser of {page.prog}: do not edit.',
        f'.TH {_quoted(page.prog.upper())} 1 "" "krs-plugin {__version__}" "User Commands"',
        ".SH NAME",
        f"{_text(page.prog)} \\- {_text(page.summary)}",
        ".SH SYNOPSIS",
        ".nh",
        ".ad l",
    ]
    leaves = [c for c in tree.walk() if not c.subcommands]
    for command in (tree, *leaves):
        lines += [f".SY {_quoted(command.name)}", _synopsis(command, top=command is tree), ".YS"]
    lines += [".ad", ".hy", ".SH DESCRIPTION", _text(tree.description)]
    for paragraph in page.description:
        lines += [".PP", _text(paragraph)]
    lines += [".SH OPTIONS", *_arguments(tree)]
    lines.append(".SH COMMANDS")
    for command in tree.walk()[1:]:
        lines.append(f".SS {_quoted(command.name)}")
        lines.append(_text(_sentence(command.description or command.help)))
        if command.aliases:
            lines += [".PP", _text("Also: " + ", ".join(command.aliases) + ".")]
        if command.subcommands:
            names = ", ".join(s.path[-1] for s in command.subcommands)
            lines += [".PP", _text(f"Actions: {names}.")]
        lines += _arguments(command)
    lines.append(".SH EXIT STATUS")
    for code, text in page.exit_status:
        lines += [".TP", f".B {code}", _text(text[0].upper() + text[1:] + ".")]
    lines.append(".SH ENVIRONMENT")
    for name, text in page.environment:
        lines += [".TP", f".B {name}", _text(text)]
    lines.append(".SH FILES")
    for name, text in page.files:
        lines += [".TP", f".I {_text(name)}", _text(text[0].upper() + text[1:] + ".")]
    lines += [".SH SEE ALSO", ",\n".join(_reference(r) for r in page.see_also)]
    return "\n".join(lines) + "\n"


def _synopsis(command: Command, *, top: bool = False) -> str:
    """One line: the command, its required options bare, the others in brackets."""
    parts = []
    for argument in command.options:
        if "--help" in argument.flags or (argument.flags == ("--version",) and not top):
            continue
        usage = _usage(argument)
        parts.append(usage if argument.required else f"[{usage}]")
    for argument in command.positionals:
        usage = f"\\fI{_text(argument.metavar)}\\fR"
        if argument.nargs in ("+", "*"):
            usage += "\\ ..."
        parts.append(usage if argument.required else f"[{usage}]")
    if command.subcommands:
        parts.append("\\fICOMMAND\\fR\\ [\\fIOPTION\\fR\\ ...]" if top else "\\fIACTION\\fR")
    return " ".join(parts)


def _usage(argument: Argument) -> str:
    """``--zone ZONE`` with its parts kept on one line."""
    flag = max(argument.flags, key=len)
    usage = f"\\fB{_text(flag)}\\fR"
    if argument.takes_value:
        usage += f"\\ {_value(argument)}"
        if argument.nargs in ("+", "*"):
            usage += "\\ ..."
    return usage


def _value(argument: Argument) -> str:
    if argument.choices and not argument.metavar.startswith("{"):
        return f"\\fI{_text(argument.metavar)}\\fR"
    if argument.choices:
        return "{" + "|".join(f"\\fB{_text(c)}\\fR" for c in argument.choices) + "}"
    return f"\\fI{_text(argument.metavar)}\\fR"


def _arguments(command: Command) -> list[str]:
    lines: list[str] = []
    for argument in (*command.positionals, *command.options):
        if "--help" in argument.flags and len(command.path) > 1:
            continue  # every command takes -h; said once, under OPTIONS
        if argument.flags:
            head = ", ".join(f"\\fB{_text(f)}\\fR" for f in argument.flags)
            if argument.takes_value:
                head += f" {_value(argument)}"
                if argument.nargs in ("+", "*"):
                    head += " ..."
        else:
            head = f"\\fI{_text(argument.metavar)}\\fR"
        text = argument.help
        if argument.flags == ("-h", "--help"):
            text = f"print the help of {command.path[0]}, or of a command after it, and exit"
        text = _sentence(text) if text else ""
        if argument.choices and argument.metavar and not argument.metavar.startswith("{"):
            text += f" One of: {', '.join(argument.choices)}."
        if argument.default:
            text += " " + _sentence(f"Default: {argument.default}")
        if argument.repeatable and "repeatable" not in argument.help:
            text += " May be given more than once."
        if argument.required and argument.flags:
            text += " Required."
        lines += [".TP", head]
        if text.strip():
            lines.append(_text(text.strip()))
    return lines


def _sentence(text: str) -> str:
    """``text`` with a capital and a full stop; a first word that is a name (krs.yaml,
    host:port, --offline) is kept as it is."""
    first = text.split(" ", 1)[0]
    if first.isalpha() and first.islower():
        text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _reference(ref: str) -> str:
    name, _, section = ref.partition("(")
    return f".BR {_text(name)} ({section}"


def _quoted(text: str) -> str:
    return '"' + _text(text).replace('"', "\\(dq") + '"'


def _text(text: str) -> str:
    """Roff for one line of running text: backslashes, hyphens and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def write_pages(output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for prog, page in PAGES.items():
        path = output / f"{prog}.1"
        path.write_text(render(page))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m krs_plugin.manpage",
        description="Write krs.1 and krs-kdc.1 from the commands' parsers.",
    )
    parser.add_argument("--output", "-o", default="man", help="folder (default man/)")
    args = parser.parse_args(argv)
    for path in write_pages(Path(args.output)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
