"""Shell completion for ``krs`` and ``krs-kdc``, made from their parsers.

``krs completion bash`` prints a bash script: the commands, subcommands, options and choices
of the parser it was made from, written out as ``case`` tables, so a TAB runs no Python. Values
with no choices (a zone, a file) fall back to bash's file-name completion. ``completion zsh``
prints the same script behind zsh's ``bashcompinit``. The scripts are committed under
``completions/`` and installed with the wheel into ``share/bash-completion/completions``,
regenerated with ``python -m krs_plugin.completion --output completions/``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from krs_plugin.parsertree import command_tree

SHELLS = ("bash", "zsh")


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    if shell not in SHELLS:
        raise ValueError(f"no completion for shell {shell!r} (one of: {', '.join(SHELLS)})")
    script = bash_script(parser)
    if shell == "zsh":
        return (
            "# zsh: source this after compinit (autoload -U compinit && compinit).\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + script
        )
    return script


def bash_script(parser: argparse.ArgumentParser) -> str:
    tree = command_tree(parser)
    prog = tree.name
    fn = "_" + re.sub(r"\W", "_", prog)
    commands, options, takes_value, choices = [], [], [], []
    for command in tree.walk():
        key = " ".join(command.path[1:])
        if command.subcommands:
            names = [s.path[-1] for s in command.subcommands]
            names += [a for s in command.subcommands for a in s.aliases]
            commands.append(f"        {_q(key)}) echo {_q(' '.join(names))} ;;")
        flags = [f for a in command.options for f in a.flags]
        if flags:
            options.append(f"        {_q(key)}) echo {_q(' '.join(flags))} ;;")
        for argument in command.options:
            if argument.takes_value:
                takes_value += [_q(f"{key}|{flag}") for flag in argument.flags]
            if argument.choices:
                words = " ".join(argument.choices)
                for flag in argument.flags:
                    choices.append(f"        {_q(f'{key}|{flag}')}) echo {_q(words)} ;;")
        for number, argument in enumerate(command.positionals):
            if argument.choices:
                words = " ".join(argument.choices)
                choices.append(f"        {_q(f'{key}|#{number}')}) echo {_q(words)} ;;")
    value_cases = "|".join(takes_value) or "''"
    return f"""\
# bash completion for {prog}, made by `{prog} completion bash` from its parser: do not edit.
# Install: {prog} completion bash > /etc/bash_completion.d/{prog}
#   (or /usr/share/bash-completion/completions/{prog}, or source it from ~/.bashrc).

{fn}_commands() {{  # the subcommands of a command path ("" is {prog} itself)
    case $1 in
{chr(10).join(commands)}
    esac
}}

{fn}_options() {{
    case $1 in
{chr(10).join(options)}
    esac
}}

{fn}_takes_value() {{  # "path|option": 0 when the option is followed by a value
    case $1 in
        {value_cases}) return 0 ;;
    esac
    return 1
}}

{fn}_choices() {{  # "path|option", or "path|#N" for the Nth positional argument
    case $1 in
{chr(10).join(choices)}
    esac
}}

{fn}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} option="" word path="" npos=0 i=1 candidate found
    COMPREPLY=()
    # Walk the words before the cursor: subcommands make the path, options skip their value
    # (--opt value, or --opt = value as bash splits --opt=value); option: the one whose value
    # is being completed.
    while ((i < COMP_CWORD)); do
        word=${{COMP_WORDS[i]}}
        case $word in
            --*=*) ;;
            -*)
                if {fn}_takes_value "$path|$word"; then
                    ((i++))
                    if [[ ${{COMP_WORDS[i]}} == "=" ]]; then ((i++)); fi
                    if ((i == COMP_CWORD)); then option=$word; fi
                fi
                ;;
            *)
                found=""
                for candidate in $({fn}_commands "$path"); do
                    if [[ $candidate == "$word" ]]; then found=1; fi
                done
                if [[ -n $found ]]; then
                    path=${{path:+$path }}$word
                    npos=0
                else
                    ((npos++))
                fi
                ;;
        esac
        ((i++))
    done
    if [[ -n $option ]]; then
        # the word is an option's value: its choices, or (none) file names
        COMPREPLY=($(compgen -W "$({fn}_choices "$path|$option")" -- "$cur"))
        return 0
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$({fn}_options "$path")" -- "$cur"))
        return 0
    fi
    local commands
    commands=$({fn}_commands "$path")
    if [[ -n $commands ]]; then
        COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        return 0
    fi
    COMPREPLY=($(compgen -W "$({fn}_choices "$path|#$npos")" -- "$cur"))
    return 0
}}

complete -o default -F {fn} {prog}
"""


def _q(text: str) -> str:
    """A shell word in single quotes (the parser's names have none)."""
    return "'" + text.replace("'", "'\\''") + "'"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from krs_plugin.cli import build_parser as krs_parser
    from krs_plugin.kdc.cli import build_parser as kdc_parser

    return {"krs": krs_parser(), "krs-kdc": kdc_parser()}


def write_scripts(output: Path) -> list[Path]:
    """``completions/krs`` and ``completions/krs-kdc``: bash-completion's file names."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for prog, parser in _parsers().items():
        path = output / prog
        path.write_text(completion_script(parser, "bash"))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m krs_plugin.completion",
        description="Write the bash completion scripts of krs and krs-kdc.",
    )
    parser.add_argument("--output", "-o", default="completions", help="folder (completions/)")
    args = parser.parse_args(argv)
    for path in write_scripts(Path(args.output)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
