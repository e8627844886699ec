"""`cxr`: one console command, thin. Each subcommand parses flags and calls a programmatic function.

Heavy imports (TensorFlow, uvicorn, pydicom) happen inside the subcommand that needs them, so
`cxr predict` starts fast and the service installs without the training extra.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[], Handler]]] = {}


def command(
    name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Callable[[], Handler]], Callable[[], Handler]]:
    """Register a subcommand: `configure` adds its flags; the decorated loader imports its module lazily."""

    def register(loader: Callable[[], Handler]) -> Callable[[], Handler]:
        _COMMANDS[name] = (help_text, configure, loader)
        return loader

    return register


def _serve_flags(parser: argparse.ArgumentParser) -> None:
    from service.settings import add_cli_flags

    add_cli_flags(parser)


@command("serve", "run the HTTP service (uvicorn) on the model repository", _serve_flags)
def _serve() -> Handler:
    from service.server import main

    return main


def _predict_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", help="PNG, JPEG or DICOM files")
    parser.add_argument(
        "--model", help="model name, version directory, or model.onnx path (default: bundled)"
    )
    parser.add_argument("--format", choices=["table", "jsonl"], default="table")
    parser.add_argument("--heatmap", metavar="DIR", help="write CAM overlay PNGs into DIR")
    parser.add_argument(
        "--domain-policy",
        choices=["refuse", "flag"],
        default="refuse",
        help="an image that is not a frontal chest radiograph: refuse it (default) or classify and flag it",
    )
    parser.epilog = (
        "exit status: 0 every file was read (classified, or refused as not a frontal chest radiograph); "
        "1 at least one file could not be read or decoded; 2 the model could not be loaded."
    )


@command("predict", "classify image files without a server", _predict_flags)
def _predict() -> Handler:
    from export.predict import main

    return main


def _train_flags(parser: argparse.ArgumentParser) -> None:
    from export.train import add_flags

    add_flags(parser)


@command("train", "train a CNN on a manifest of chest X-rays (needs the [train] extra)", _train_flags)
def _train() -> Handler:
    from export.train import main

    return main


def _segmenter_flags(parser: argparse.ArgumentParser) -> None:
    from export.lungseg import add_flags

    add_flags(parser)


@command("train-lungseg", "train the small lung segmenter used for lung cropping", _segmenter_flags)
def _train_segmenter() -> Handler:
    from export.lungseg import main

    return main


def _view_flags(parser: argparse.ArgumentParser) -> None:
    from export.viewmodel import add_flags

    add_flags(parser)


@command(
    "train-view",
    "train the input-domain check's view model (orientation, polarity, not-a-radiograph) and its thresholds",
    _view_flags,
)
def _train_view() -> Handler:
    from export.viewmodel import main

    return main


def _calibrate_flags(parser: argparse.ArgumentParser) -> None:
    from export.calibrate import add_flags

    add_flags(parser)


@command(
    "calibrate",
    "fit temperature (or Platt) scaling on validation into model.onnx and re-derive the threshold",
    _calibrate_flags,
)
def _calibrate() -> Handler:
    from export.calibrate import main

    return main


def _domain_flags(parser: argparse.ArgumentParser) -> None:
    from export.domaineval import add_flags

    add_flags(parser)


@command(
    "evaluate-domain",
    "measure the input-domain check on real films, turned/inverted films and held-out non-radiographs",
    _domain_flags,
)
def _evaluate_domain() -> Handler:
    from export.domaineval import main

    return main


def _export_flags(parser: argparse.ArgumentParser) -> None:
    from export.onnx_export import add_flags

    add_flags(parser)


@command(
    "export",
    "export a trained Keras model to ONNX, verify parity, write the model repository entry",
    _export_flags,
)
def _export() -> Handler:
    from export.onnx_export import main

    return main


def _ensemble_flags(parser: argparse.ArgumentParser) -> None:
    from export.ensemble import add_flags

    add_flags(parser)


@command(
    "ensemble",
    "average the logits of runs trained on the same split into one run folder, validated on validation",
    _ensemble_flags,
)
def _ensemble() -> Handler:
    from export.ensemble import main

    return main


def _crossval_flags(parser: argparse.ArgumentParser) -> None:
    from export.crossval import add_flags

    add_flags(parser)


@command(
    "crossval",
    "train one recipe on K patient-disjoint folds of train+val and pool the out-of-fold scores (test untouched)",
    _crossval_flags,
)
def _crossval() -> Handler:
    from export.crossval import main

    return main


def _evaluate_flags(parser: argparse.ArgumentParser) -> None:
    from export.evaluate import add_flags

    add_flags(parser)


@command(
    "evaluate", "evaluate an ONNX model on a manifest (metrics.json, ROC, confusion matrix)", _evaluate_flags
)
def _evaluate() -> Handler:
    from export.evaluate import main

    return main


def _quantize_flags(parser: argparse.ArgumentParser) -> None:
    from export.quantize import add_flags

    add_flags(parser)


@command(
    "quantize", "make an int8 variant, re-evaluated on validation; kept only if AUROC holds", _quantize_flags
)
def _quantize() -> Handler:
    from export.quantize import main

    return main


def _bench_flags(parser: argparse.ArgumentParser) -> None:
    from loadtest.benchmark import add_flags

    add_flags(parser)


@command(
    "bench",
    "benchmark the service against the in-process limit, a naive app and Ray Serve (needs the [load] extra)",
    _bench_flags,
)
def _bench() -> Handler:
    from loadtest.benchmark import main

    return main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr",
        description="COVID-19 chest X-ray classifier. RESEARCH USE ONLY: not for diagnosis or triage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, _) in _COMMANDS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands whose modules land with later work register here if they are importable."""
    try:
        from pacs.cli import add_parser as add_pacs
    except ImportError:
        return
    add_pacs(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = _COMMANDS[args.command][2]() if args.command in _COMMANDS else args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
