"""The commands of an ``argparse`` parser as plain data, for the man pages and shell completion.

``command_tree(build_parser())`` walks the parser and every nested subparser and returns one
:class:`Command` per command, with its options, positional arguments and subcommands, their help
expanded as ``--help`` would print it. Nothing here depends on the terminal or on defaults read
from the environment, so the man pages and completion scripts made from it are the same wherever
they are generated (``krs_plugin/manpage.py``, ``krs_plugin/completion.py``).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Argument:
    """One option (``flags`` set) or positional argument (``flags`` empty)."""

    flags: tuple[str, ...]
    """Option strings, short ones first: ``("-c", "--config")``; empty for a positional."""
    metavar: str
    """What the value is called (``CONFIG``, ``zone``); empty for an option without a value."""
    help: str
    choices: tuple[str, ...]
    nargs: str
    """``""`` for no value, ``"1"`` for one, else argparse's ``?``, ``*``, ``+`` or a count."""
    required: bool
    repeatable: bool
    default: str
    """The default worth printing (a number, a word), or ``""``."""

    @property
    def takes_value(self) -> bool:
        return self.nargs != ""


@dataclass(frozen=True)
class Command:
    path: tuple[str, ...]
    """``("krs-kdc", "key", "generate")``; the program alone for the top level."""
    help: str
    """The one line its parent lists it with (empty at the top level)."""
    description: str
    options: tuple[Argument, ...]
    positionals: tuple[Argument, ...]
    subcommands: tuple[Command, ...]
    aliases: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return " ".join(self.path)

    def walk(self) -> list[Command]:
        """This command and every command under it, depth first, in the parser's order."""
        found = [self]
        for sub in self.subcommands:
            found.extend(sub.walk())
        return found


def command_tree(parser: argparse.ArgumentParser) -> Command:
    return _command(parser, (parser.prog,), help="")


def _command(parser: argparse.ArgumentParser, path: tuple[str, ...], help: str) -> Command:
    options: list[Argument] = []
    positionals: list[Argument] = []
    subcommands: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subcommands.extend(_subcommands(action, path))
        elif action.help == argparse.SUPPRESS:
            continue
        elif action.option_strings:
            options.append(_argument(action, parser.prog))
        else:
            positionals.append(_argument(action, parser.prog))
    return Command(
        path=path,
        help=help,
        description=_clean(parser.description or ""),
        options=tuple(options),
        positionals=tuple(positionals),
        subcommands=tuple(subcommands),
    )


def _subcommands(action: argparse._SubParsersAction[Any], path: tuple[str, ...]) -> list[Command]:
    helps = {choice.dest: _clean(choice.help or "") for choice in action._choices_actions}
    names: dict[int, list[str]] = {}
    parsers: dict[int, argparse.ArgumentParser] = {}
    for name, sub in action.choices.items():  # aliases map to the same parser
        names.setdefault(id(sub), []).append(name)
        parsers[id(sub)] = sub
    commands = []
    for key, (name, *aliases) in names.items():
        command = _command(parsers[key], (*path, name), helps.get(name, ""))
        commands.append(replace(command, aliases=tuple(aliases)))
    return commands


def _argument(action: argparse.Action, prog: str) -> Argument:
    flags = tuple(sorted(action.option_strings, key=lambda f: (f.startswith("--"), f)))
    if action.nargs == 0:
        nargs = ""
    elif action.nargs is None:
        nargs = "1"
    else:
        nargs = str(action.nargs)
    choices = tuple(str(c) for c in action.choices) if action.choices else ()
    if not nargs:
        metavar = ""
    elif isinstance(action.metavar, str):
        metavar = action.metavar
    elif choices:
        metavar = "{" + ",".join(choices) + "}"
    else:
        metavar = action.dest.upper() if action.option_strings else action.dest
    return Argument(
        flags=flags,
        metavar=metavar,
        help=_expand(action, prog),
        choices=choices,
        nargs=nargs,
        required=bool(action.required) if action.option_strings else nargs not in ("?", "*"),
        repeatable=isinstance(action, argparse._AppendAction),
        default=_default(action),
    )


def _expand(action: argparse.Action, prog: str) -> str:
    """The help text as ``--help`` prints it (``%(default)s`` and the like filled in)."""
    text = action.help or ""
    if "%" in text:
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = prog
        if params.get("choices") is not None:
            params["choices"] = ", ".join(str(c) for c in params["choices"])
        text = text % params
    return _clean(text)


def _default(action: argparse.Action) -> str:
    """A default to print: numbers and words the option falls back to; not one the help text
    already states, and none that comes from the environment (the help says where it comes
    from), so the same parser always gives the same page."""
    value = action.default
    if action.nargs == 0 or value is None or value is argparse.SUPPRESS or value == []:
        return ""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    help_text = (action.help or "").lower()
    # "(30)", "(1s)", "(15m, 2h, 1d)" with the default first: the help says it already
    if "default" in help_text or re.search(rf"\({re.escape(text.lower())}[a-z]*[),]", help_text):
        return ""
    return text


def _clean(text: str) -> str:
    return " ".join(text.split())
