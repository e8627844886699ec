"""`cxr`: one console command, thin. Each subcommand names the module that holds its `add_flags(parser)`
and `main(args) -> int`; only the chosen subcommand's module is imported.

So `cxr --help` imports nothing but argparse, `cxr serve`, `cxr predict` and `cxr pacs` run on the base
dependencies, and a subcommand that needs an optional extra says which one, in one line, before it imports
anything from it (exit status 2), instead of failing with a traceback, or minutes into a run.

Exit statuses common to every subcommand: 2 for bad usage or a missing extra, 70 for an unexpected error
(logged with its traceback), 130 for Ctrl-C; each subcommand documents the rest.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger("cxr")

EXIT_USAGE = 2
EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE: a bug, not a condition to retry
_TRAIN = ("tensorflow", "keras", "tf2onnx", "onnx", "sklearn", "matplotlib")


@dataclass(frozen=True)
class Command:
    """A subcommand: `module` holds `add_flags(parser)` and `main(args) -> int`."""

    name: str
    help: str
    module: str
    extra: str | None = None
    needs: tuple[str, ...] = ()
    """Top-level modules of `extra` the command imports; checked before `module` is."""


COMMANDS = (
    Command("serve", "run the HTTP service (uvicorn) on the model repository", "service.server"),
    Command("predict", "classify image files without a server", "service.predict"),
    Command(
        "pacs",
        "classify radiographs from a PACS (DICOMweb, DIMSE or a listener), write DICOM back",
        "pacs.cli",
    ),
    Command("train", "train a CNN on a manifest of chest X-rays", "export.train", "train", _TRAIN),
    Command(
        "train-lungseg",
        "train the small lung segmenter used for lung cropping",
        "export.lungseg",
        "train",
        _TRAIN,
    ),
    Command(
        "export",
        "export a trained Keras model to ONNX, verify parity, write the model repository entry",
        "export.onnx_export",
        "train",
        _TRAIN,
    ),
    Command(
        "ensemble",
        "average the logits of runs trained on the same split into one run folder, validated on validation",
        "export.ensemble",
        "train",
        _TRAIN,
    ),
    Command(
        "crossval",
        "train one recipe on K patient-disjoint folds of train+val and pool the out-of-fold scores",
        "export.crossval",
        "train",
        _TRAIN,
    ),
    Command(
        "evaluate",
        "evaluate an ONNX model on a manifest (metrics.json, ROC, confusion matrix)",
        "export.evaluate",
        "train",
        ("matplotlib",),
    ),
    Command(
        "quantize",
        "make an int8 variant, re-evaluated on validation; kept only if AUROC holds",
        "export.quantize",
        "train",
        ("onnx",),
    ),
    Command(
        "train-view",
        "train the input-domain check's view model (orientation, polarity, not-a-radiograph) and its thresholds",
        "export.viewmodel",
        "train",
        _TRAIN,
    ),
    Command(
        "calibrate",
        "fit temperature (or Platt) scaling on validation into model.onnx and re-derive the threshold",
        "export.calibrate",
        "train",
        ("onnx",),
    ),
    Command(
        "evaluate-domain",
        "measure the input-domain check on real films, turned/inverted films and held-out non-radiographs",
        "export.domaineval",
        "train",
        ("matplotlib", "skimage"),
    ),
    Command(
        "evaluate-shortcuts",
        "counterfactual check: paint devices or burned-in text on held-out films and measure how the answer moves",
        "export.shortcuts",
        "train",
        ("skimage",),
    ),
    Command(
        "bench",
        "benchmark the service against the in-process limit, a naive app and Ray Serve",
        "loadtest.benchmark",
        "load",
        ("psutil", "matplotlib", "PIL", "ray"),
    ),
)
_BY_NAME = {command.name: command for command in COMMANDS}


class MissingExtra(Exception):
    """The chosen subcommand needs an optional dependency group that is not installed."""


def _missing(command: Command) -> list[str]:
    return [name for name in command.needs if importlib.util.find_spec(name) is None]


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The `cxr` parser. Only the subcommand named in `argv` gets its flags (its module is imported then);
    the others are listed by name and help alone. Raises MissingExtra for a subcommand without its extra."""
    parser = argparse.ArgumentParser(
        prog="cxr",
        description="COVID-19 chest X-ray classifier. RESEARCH USE ONLY: not for diagnosis or triage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for command in COMMANDS:
        text = command.help + (f" (needs the [{command.extra}] extra)" if command.extra else "")
        command_parser = sub.add_parser(command.name, help=text, description=text)
        if command.name == chosen:
            if missing := _missing(command):
                raise MissingExtra(
                    f"cxr {command.name}: needs the '{command.extra}' extra: pip install "
                    f"'cxr-covid[{command.extra}]' (missing: {', '.join(missing)})"
                )
            importlib.import_module(command.module).add_flags(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the process's), configure logging, run the chosen subcommand."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(arguments).parse_args(arguments)
    except MissingExtra as error:
        print(error, file=sys.stderr)  # noqa: T201 - CLI output
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run = importlib.import_module(_BY_NAME[args.command].module).main
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception:
        # A bug, not a condition: a supervisor (the compose pacs loop, a cron job) must see it as such.
        logger.exception("cxr %s: unexpected error", args.command)
        return EXIT_SOFTWARE
