"""The `cxr` command: what building its parser imports, and how a command without its extra answers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cxr.cli import COMMANDS, build_parser

HEAVY = ("onnx", "tensorflow", "keras", "tf2onnx", "onnxruntime", "sklearn", "matplotlib", "ray", "locust")


def _imported(*args: str) -> set[str]:
    """Top-level modules a fresh interpreter imports to run `python -m cxr ARGS` (from -X importtime)."""
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cxr", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [line.split("|")[-1] for line in completed.stderr.splitlines() if line.startswith("import time:")]
    return {line.strip().split(".")[0] for line in lines[1:]}


def test_cxr_help_imports_no_model_or_training_module() -> None:
    imported = _imported("--help")
    assert "cxr" in imported  # the measurement itself works
    assert imported.isdisjoint(HEAVY), sorted(imported & set(HEAVY))
    assert imported.isdisjoint({"export", "loadtest", "pacs", "service"})


def test_building_the_parser_imports_no_model_or_training_module() -> None:
    code = (
        "import sys; from cxr.cli import build_parser; build_parser([]); build_parser(['-v']); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_every_subcommand_is_listed_and_builds_its_flags() -> None:
    listed = build_parser([]).format_help()
    for command in COMMANDS:
        assert command.name in listed
        build_parser([command.name])  # imports the module: a broken import fails here, loudly


@pytest.mark.parametrize("name", ["train", "bench"])
def test_a_command_without_its_extra_says_so_in_one_line(name: str) -> None:
    """Hide the extra's first module from the import system (None in sys.modules: find_spec sees no module)."""
    command = next(command for command in COMMANDS if command.name == name)
    code = (
        f"import sys; sys.modules[{command.needs[0]!r}] = None; from cxr.cli import main; "
        f"sys.exit(main([{name!r}, '--help']))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.splitlines() == [
        f"cxr {name}: needs the '{command.extra}' extra: pip install 'cxr-covid[{command.extra}]' "
        f"(missing: {command.needs[0]})"
    ]


def test_an_unexpected_error_exits_70_with_one_logged_traceback() -> None:
    """A bug must not look like a condition to retry (the compose pacs loop retries 1 and 3 only)."""
    code = (
        "import sys, service.predict as p; from cxr.cli import main\n"
        "def boom(*a, **k): raise RuntimeError('boom')\n"
        "p.load_default = boom\n"
        "sys.exit(main(['predict', 'x.png']))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 70, completed.stderr
    assert "cxr predict: unexpected error" in completed.stderr
    assert completed.stderr.count("Traceback") == 1
