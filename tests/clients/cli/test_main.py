"""The `megaclass` command as a whole: every group registered once, in order, every option documented."""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from megaclass.clients.cli.main import GROUPS, build_parser, main

CLI = Path(__file__).resolve().parents[3] / "clients" / "cli"


def parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("megaclass",)) -> Iterator:
    """(command path, parser) for the parser and every subcommand below it (reads argparse's fields: a test may)."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action.choices, dict):  # the subcommands
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def options() -> Iterator:
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction) and not isinstance(action.choices, dict):
                yield " ".join(path), action


def test_top_level_commands_keep_their_order():
    top = [path[1] for path, _ in parsers(build_parser()) if len(path) == 2]
    assert top == [
        "demo", "serve", "classify", "publish", "rollback", "loadtest", "report", "bench", "scaleout",
        "train", "evaluate", "prototypes", "export", "tuples", "mine-negatives", "index", "refresh", "lineage",
        "pipeline",
    ]  # fmt: skip
    assert len(GROUPS) == len(set(GROUPS))


def test_every_group_module_registers_and_none_is_left_out():
    modules = {p.stem for p in CLI.glob("*.py")} - {"__init__", "main", "common"}
    assert {g.__name__.rsplit(".", 1)[1] for g in GROUPS} == modules
    assert all(callable(g.register) for g in GROUPS)


@pytest.mark.parametrize("command, action", list(options()), ids=lambda x: x if isinstance(x, str) else x.dest)
def test_every_option_says_what_it_does_and_its_default(command, action):
    where = f"{command} {'/'.join(action.option_strings) or action.dest}"
    assert action.help and len(action.help) > 10, f"{where}: no help text"
    if not action.option_strings and action.nargs not in ("?", "*"):
        return  # a required positional argument
    if action.required:
        assert "(required)" in action.help, where
        return
    assert "(default: " in action.help, f"{where}: the help does not say the default"
    if action.default not in (None, False, "", []):
        # the default in the text is the one in the code
        text = f"{action.default:_}".replace("_", "") if isinstance(action.default, int) else str(action.default)
        assert text in action.help, f"{where}: default {action.default!r} not in {action.help!r}"


def test_commands_parse_and_dispatch():
    parser = build_parser()
    args = parser.parse_args(["loadtest", "soak", "--duration", "10m", "--users", "4"])
    assert (args.duration, args.users, args.func.__name__) == ("10m", 4, "cmd_soak")
    args = parser.parse_args(["--config", "x.toml", "bench", "index", "--classes", "1000"])
    assert (args.config, args.classes, args.func.__name__) == ("x.toml", 1000, "cmd_bench_index")
    assert parser.parse_args(["scaleout", "--replicas", "3"]).replicas == 3


def test_help_runs_for_every_command(capsys):
    for path, _ in parsers(build_parser()):
        with pytest.raises(SystemExit) as stop:
            main([*path[1:], "--help"])
        assert stop.value.code == 0
        assert "usage: " + " ".join(path) in capsys.readouterr().out


def test_no_private_attribute_access():
    """The groups register through `add_parser` and `add_subparsers` only: no `._subparsers`, `._actions`, ..."""
    for path in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                assert not private, f"{path.name}:{node.lineno}: {ast.unparse(node)}"


def test_defaults_read_from_the_configuration_are_the_configurations():
    """'(default: train.epochs, 8)' in a help text: the built-in configuration's train.epochs is 8."""
    from megaclass.export.config import load_config

    cfg = load_config()
    for command, action in options():
        m = re.search(r"\(default: ([a-z_]+(?:\.[a-z_]+)+), ([^)]+)\)", action.help)
        if m:
            value = cfg
            for name in m.group(1).split("."):
                value = getattr(value, name)
            expected = "none" if value is None else str(value)
            assert m.group(2).split(":")[0] == expected, f"{command} {action.dest}: {m.group(0)}"
