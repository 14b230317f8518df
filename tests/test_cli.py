"""The command line: every option says what it does and its default, ``-o`` means one thing, and
the README lists every command."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from agent.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser in the tree with its command path (``("model", "quantize")``)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from commands(child, (*path, name))


def leaf_commands() -> dict[tuple[str, ...], str]:
    """Every runnable command's path and its one-line help."""
    found: dict[tuple[str, ...], str] = {}
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
                for name, child in action.choices.items():
                    if not any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
                        found[(*path, name)] = helps[name]
    return found


def shown(value: object) -> list[str]:
    """Ways a help text may write ``value``: 2.0 as 2, [1.0, 5.0] as 1,5."""
    forms = [str(value)]
    if isinstance(value, float):
        forms.append(f"{value:g}")
    if isinstance(value, list):
        forms.append(",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
    return forms


def test_every_option_has_help_and_shows_its_default() -> None:
    missing_help, missing_default = [], []
    for path, parser in commands(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            name = " ".join(("edge-agent", *path, action.option_strings[-1:][0]
                             if action.option_strings else action.dest))  # fmt: skip
            if not action.help or action.help == argparse.SUPPRESS:
                missing_help.append(name)
                continue
            if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
                continue
            text = formatter._expand_help(action)
            if "default" not in text or not any(f in text for f in shown(action.default)):
                missing_default.append(f"{name}: {text!r}")
    assert not missing_help, f"options without help: {missing_help}"
    assert not missing_default, f"options whose help does not show the default: {missing_default}"


def test_the_default_shows_in_the_printed_help() -> None:
    parser = dict(commands(build_parser()))[("bench",)]
    text = " ".join(parser.format_help().split())
    assert "frames to measure (default: 50)" in text
    assert "inference threads (default: 2)" in text


def test_dash_o_is_the_output_path_everywhere() -> None:
    seen = []
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            strings = set(action.option_strings)
            if "-o" in strings or strings & {"--out", "--output"}:
                seen.append(path)
                assert "-o" in strings and "--output" in strings, (path, action.option_strings)
                assert action.dest == "output", (path, action.dest)
                assert action.metavar, (path, "-o needs a metavar saying what it writes")
            # No other letter stands for an output, and -o stands for nothing else.
            assert not (strings & {"-O", "--out-dir", "--outdir"}), (path, strings)
    assert {("model", "quantize"), ("model", "prune"), ("model", "distill"), ("model", "split"),
            ("registry", "keygen")} <= set(seen)  # fmt: skip


def test_the_readme_lists_every_command_with_its_help() -> None:
    section = README.read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 2 and cells[0].startswith("`edge-agent "):
            rows[" ".join(cells[0].strip("`").split()[1:])] = cells[1]
    problems = []
    for path, help_text in leaf_commands().items():
        name = " ".join(path)
        row = next((v for k, v in rows.items() if k == name or k.startswith(name + " ")), None)
        if row is None:
            problems.append(f"{name}: not listed")
        elif row != help_text:
            problems.append(f"{name}: README says {row!r}, -h says {help_text!r}")
    assert not problems, "README 'Commands' is out of date:\n" + "\n".join(problems)
