"""The man pages krs(1) and krs-kdc(1): made from the parsers, committed under man/ as they are
made now, installed with the wheel, and rendered by man and groff without a warning."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from krs_plugin import __version__, cliout
from krs_plugin.manpage import PAGES, render
from krs_plugin.parsertree import command_tree

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
REGENERATE = "python -m krs_plugin.manpage --output man/"


@pytest.mark.parametrize("prog", sorted(PAGES))
def test_committed_page_is_what_the_parser_makes_now(
    prog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment that fills in defaults (--config from $KRS_CONFIG) must not show.
    monkeypatch.setenv("KRS_CONFIG", "/somewhere/else.yaml")
    monkeypatch.setenv("KRS_KDC_STATE", "/somewhere/else")
    monkeypatch.setenv("COLUMNS", "37")
    committed = (MAN / f"{prog}.1").read_text()
    assert committed == render(PAGES[prog]), (
        f"man/{prog}.1 is not what {prog}'s parser makes now: run {REGENERATE}"
    )


@pytest.mark.parametrize("prog", sorted(PAGES))
def test_page_has_every_command_and_option_of_the_parser(prog: str) -> None:
    page = render(PAGES[prog])
    tree = command_tree(PAGES[prog].parser())
    commands = tree.walk()
    assert len(commands) > 8
    for command in commands[1:]:
        section = page.split(f'.SS "{command.name.replace("-", chr(92) + "-")}"\n', 1)
        assert len(section) == 2, f"no section for {command.name}"
        body = section[1].split("\n.SS ", 1)[0]
        for argument in (*command.options, *command.positionals):
            if "--help" in argument.flags:
                continue
            for flag in argument.flags or (argument.metavar,):
                assert flag.replace("-", "\\-") in body, (command.name, flag)
            for choice in argument.choices:
                assert choice.replace("-", "\\-") in body, (command.name, choice)


def test_nested_subcommands_and_their_options_are_in_the_kdc_page() -> None:
    page = render(PAGES["krs-kdc"])
    assert '.SS "krs\\-kdc key generate"' in page
    assert "\\fB\\-\\-role\\fR {\\fBZSK\\fR|\\fBKSK\\fR|\\fBCSK\\fR}" in page
    assert '.SY "krs\\-kdc enroll create"' in page  # in the synopsis too
    assert '.SS "krs\\-kdc completion"' in page


@pytest.mark.parametrize("prog", sorted(PAGES))
def test_page_names_exit_codes_environment_and_files(prog: str) -> None:
    page = render(PAGES[prog])
    sections = [line[4:] for line in page.splitlines() if line.startswith(".SH ")]
    assert sections == [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "SEE ALSO",
    ]
    status = page.split(".SH EXIT STATUS\n", 1)[1].split(".SH ", 1)[0]
    codes = [line[3:] for line in status.splitlines() if line.startswith(".B ")]
    assert codes == [str(cliout.EXIT_OK), str(cliout.EXIT_FAILED), str(cliout.EXIT_USAGE)]
    variable = {"krs": "KRS_CONFIG", "krs-kdc": "KRS_KDC_STATE"}[prog]
    assert f".B {variable}\n" in page.split(".SH ENVIRONMENT\n", 1)[1]


def groff_or_fail() -> str:
    groff = shutil.which("groff")
    if groff is None:
        pytest.fail("groff is not installed (apt-get install groff-base)")
    return groff


@pytest.mark.parametrize("prog", sorted(PAGES))
def test_committed_page_renders_without_groff_warnings(prog: str) -> None:
    result = subprocess.run(
        [groff_or_fail(), "-man", "-Tutf8", "-ww", "-z", str(MAN / f"{prog}.1")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("prog", sorted(PAGES))
def test_man_l_shows_the_page_as_documented(prog: str) -> None:
    man = shutil.which("man")
    if man is None:
        pytest.fail("man is not installed (apt-get install man-db)")
    env = {**os.environ, "MANWIDTH": "100", "LANG": "C.UTF-8"}
    env.pop("MAN_KEEP_FORMATTING", None)  # plain text: man strips bold and underline for a pipe
    result = subprocess.run(
        [man, "-l", str(MAN / f"{prog}.1")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    text = result.stdout
    for heading in ("NAME", "SYNOPSIS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT", "SEE ALSO"):
        assert f"\n{heading}\n" in text, heading
    assert f"{prog} completion" in text
    if prog == "krs-kdc":
        assert "\n       krs-kdc key generate " in text  # the synopsis
        assert "--role {ZSK|KSK|CSK}" in text


def test_wheel_installs_the_man_pages_and_completions(tmp_path: Path) -> None:
    # The wheel of this checkout, built offline as pip builds it, carries man/ and completions/
    # as data under the prefix: /usr/local/share/man/man1 next to /usr/local/bin/krs.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("krs_plugin", "man", "completions"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__py*"))
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index"]
    pip += ["--no-build-isolation", "--no-cache-dir", "--wheel-dir", str(tmp_path / "out")]
    done = subprocess.run([*pip, str(source)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "out").glob("krs_plugin-*.whl")
    data = f"krs_plugin-{__version__}.data/data/"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in (
            "share/man/man1/krs.1",
            "share/man/man1/krs-kdc.1",
            "share/bash-completion/completions/krs",
            "share/bash-completion/completions/krs-kdc",
        ):
            assert data + path in names, sorted(n for n in names if ".data/" in n)
        assert archive.read(data + "share/man/man1/krs.1") == (MAN / "krs.1").read_bytes()
