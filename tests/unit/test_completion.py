"""Shell completion of krs and krs-kdc: the script each prints (``completion bash``), sourced in a
real bash and asked as bash asks it on TAB (COMP_WORDS, COMP_CWORD, the completion function)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from krs_plugin import cli
from krs_plugin.completion import completion_script
from krs_plugin.kdc import cli as kdc_cli
from krs_plugin.parsertree import command_tree

ROOT = Path(__file__).resolve().parents[2]
PARSERS = {"krs": cli.build_parser, "krs-kdc": kdc_cli.build_parser}
FUNCTIONS = {"krs": "_krs", "krs-kdc": "_krs_kdc"}


def bash() -> str:
    found = shutil.which("bash")
    if found is None:
        pytest.fail("bash is not installed")
    return found


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scripts as the installed commands print them (``krs completion bash``)."""
    folder = tmp_path_factory.mktemp("completion")
    made = {}
    for prog in PARSERS:
        done = subprocess.run(
            [str(Path(sys.executable).parent / prog), "completion", "bash"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        made[prog] = folder / prog
        made[prog].write_text(done.stdout)
    return made


def complete_many(script: Path, lines: list[list[str]]) -> list[list[str]]:
    """What TAB offers after each command line; its last word is the one being completed
    ('' for a new word), as bash splits it (``--state=/x`` is ``--state``, ``=``, ``/x``)."""
    prog = lines[0][0]
    body = [f"source {shlex.quote(str(script))}"]
    for words in lines:
        body += [
            f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})",
            f"COMP_CWORD={len(words) - 1}",
            f"COMP_LINE={shlex.quote(' '.join(words))}",
            "COMP_POINT=${#COMP_LINE}",
            f"{FUNCTIONS[prog]} {shlex.quote(prog)} {shlex.quote(words[-1])}",
            'echo "${COMPREPLY[*]}"',
        ]
    result = subprocess.run(
        [bash(), "--norc", "--noprofile", "-c", "\n".join(body)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    answers = result.stdout.split("\n")[: len(lines)]
    return [answer.split() for answer in answers]


def complete(script: Path, *words: str) -> list[str]:
    return complete_many(script, [list(words)])[0]


def test_top_level_commands(scripts: dict[str, Path]) -> None:
    krs = complete(scripts["krs"], "krs", "")
    assert {"run", "status", "keys", "doctor", "enroll", "fetch", "apply", "completion"} <= set(krs)
    assert complete(scripts["krs"], "krs", "d") == ["demo", "doctor"]
    kdc = complete(scripts["krs-kdc"], "krs-kdc", "")
    assert {"init", "zone", "node", "key", "distribute", "serve", "enroll", "export"} <= set(kdc)


def test_nested_actions_of_a_kdc_command(scripts: dict[str, Path]) -> None:
    actions = complete(scripts["krs-kdc"], "krs-kdc", "key", "")
    assert {"generate", "import", "retire", "remove", "list"} <= set(actions)
    assert complete(scripts["krs-kdc"], "krs-kdc", "key", "ret") == ["retire"]
    # options of krs-kdc itself, and their values, come before the command
    after_state = complete(scripts["krs-kdc"], "krs-kdc", "--state", "/var/lib/krs-kdc", "key", "")
    assert after_state == actions
    split = complete(scripts["krs-kdc"], "krs-kdc", "--state", "=", "/x", "distribution", "")
    assert {"list", "show"} <= set(split)


def test_options_of_a_subcommand(scripts: dict[str, Path]) -> None:
    options = complete(scripts["krs-kdc"], "krs-kdc", "key", "generate", "--")
    assert {"--zone", "--role", "--algorithm", "--help"} <= set(options)
    assert "--state" not in options  # krs-kdc's own, not key generate's
    assert complete(scripts["krs-kdc"], "krs-kdc", "key", "generate", "--ro") == ["--role"]
    doctor = complete(scripts["krs"], "krs", "doctor", "-")
    assert {"-c", "--config", "--json", "-h", "--help"} <= set(doctor)


def test_choices_of_an_option_and_of_a_positional(scripts: dict[str, Path]) -> None:
    kdc = scripts["krs-kdc"]
    line = ["krs-kdc", "key", "generate", "--zone", "example.com.", "--role", ""]
    assert complete(kdc, *line) == ["ZSK", "KSK", "CSK"]
    assert complete(kdc, *line[:-1], "K") == ["KSK"]
    assert complete(kdc, "krs-kdc", "key", "generate", "--role", "=", "C") == ["CSK"]
    statuses = complete(kdc, "krs-kdc", "distribution", "list", "--status", "")
    assert {"pending", "confirmed", "failed", "expired"} <= set(statuses)
    assert complete(scripts["krs"], "krs", "completion", "") == ["bash", "zsh"]
    assert complete(scripts["krs"], "krs", "demo", "--backend", "") == [
        "hpke",
        "jose",
        "hpke-pq",
        "both",
        "all",
    ]


def test_a_value_without_choices_is_left_to_file_names(scripts: dict[str, Path]) -> None:
    # nothing offered: `complete -o default` then completes file names (a zone, a key file)
    assert complete(scripts["krs-kdc"], "krs-kdc", "key", "generate", "--zone", "") == []
    assert complete(scripts["krs-kdc"], "krs-kdc", "key", "import", "") == []
    assert complete(scripts["krs"], "krs", "run", "-c", "") == []


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_command_offers_its_parsers_actions_and_options(
    prog: str, scripts: dict[str, Path]
) -> None:
    # Driven by the parser: whatever command is added, the script completes it.
    commands = command_tree(PARSERS[prog]()).walk()
    lines = []
    for command in commands:
        lines.append([*command.path, ""])
        lines.append([*command.path, "-"])
    answers = complete_many(scripts[prog], lines)
    for index, command in enumerate(commands):
        actions, options = answers[2 * index], answers[2 * index + 1]
        if command.subcommands:
            assert actions == [s.path[-1] for s in command.subcommands], command.name
        flags = {f for a in command.options for f in a.flags}
        assert set(options) == flags, command.name


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_script_registers_the_function_for_the_command(prog: str, scripts: dict[str, Path]) -> None:
    done = subprocess.run(
        [bash(), "--norc", "--noprofile", "-c", f"source {scripts[prog]}; complete -p {prog}"],
        capture_output=True,
        text=True,
    )
    assert done.stdout.strip() == f"complete -o default -F {FUNCTIONS[prog]} {prog}", done.stderr


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_committed_script_is_what_the_parser_makes_now(prog: str, scripts: dict[str, Path]) -> None:
    committed = (ROOT / "completions" / prog).read_text()
    assert committed == scripts[prog].read_text(), (
        f"completions/{prog} is not what {prog}'s parser makes now: run "
        "python -m krs_plugin.completion --output completions/"
    )


def test_zsh_script_is_the_bash_one_behind_bashcompinit() -> None:
    parser = kdc_cli.build_parser()
    zsh = completion_script(parser, "zsh")
    assert "bashcompinit" in zsh.split("\n_krs_kdc_commands()", 1)[0]
    assert zsh.endswith(completion_script(parser, "bash"))
    with pytest.raises(ValueError, match="fish"):
        completion_script(parser, "fish")


def test_bash_completion_loads_the_installed_script_on_first_tab(tmp_path: Path) -> None:
    # Where the wheel puts it (PREFIX/share/bash-completion/completions/krs-kdc), bash-completion
    # finds it by the command's name: PREFIX/share is one of XDG_DATA_DIRS (/usr/local/share is
    # there by default).
    loader = Path("/usr/share/bash-completion/bash_completion")
    if not loader.exists():
        pytest.fail("bash-completion is not installed (apt-get install bash-completion)")
    folder = tmp_path / "share" / "bash-completion" / "completions"
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "completions" / "krs-kdc", folder / "krs-kdc")
    done = subprocess.run(
        [bash(), "--norc", "--noprofile", "-c",
         f"source {loader}; __load_completion krs-kdc && complete -p krs-kdc"],
        env={"PATH": "/usr/bin:/bin", "XDG_DATA_DIRS": str(tmp_path / "share")},
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.stdout.strip() == "complete -o default -F _krs_kdc krs-kdc", done.stderr


def test_zsh_completes_through_bashcompinit(tmp_path: Path) -> None:
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.fail("zsh is not installed (apt-get install zsh)")
    script = tmp_path / "krs-kdc.zsh"
    script.write_text(completion_script(kdc_cli.build_parser(), "zsh"))
    # What zsh's _bash_complete does on TAB: COMP_WORDS and COMP_CWORD from the line, then its
    # compgen -F (zsh itself then keeps the candidates that match the word typed).
    body = f"""
autoload -U compinit && compinit -u
source {shlex.quote(str(script))}
print -r -- "$_comps[krs-kdc]"
tab() {{
    local -a COMP_WORDS COMPREPLY
    local -x COMP_CWORD
    COMP_WORDS=( "$@" )
    (( COMP_CWORD = $# - 1 ))
    print -r -- ${{(f)"$(compgen -o default -F _krs_kdc -- "${{@[-1]}}")"}}
}}
tab krs-kdc ''
tab krs-kdc key ''
tab krs-kdc --state /x key generate --role ''
tab krs-kdc key generate --zone example.com. --''
"""
    done = subprocess.run(
        [zsh, "-f", "-c", body], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    registered, top, key, role, options = done.stdout.splitlines()
    assert registered == "_bash_complete -o default -F _krs_kdc"
    assert {"init", "zone", "key", "serve", "completion"} <= set(top.split())
    assert {"generate", "import", "list"} <= set(key.split())
    assert role.split() == ["ZSK", "KSK", "CSK"]
    assert {"--zone", "--role", "--algorithm"} <= set(options.split())
