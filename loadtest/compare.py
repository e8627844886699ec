"""Side-by-side comparison of service settings: `python -m loadtest.compare "" "--max-batch-size 1"`.

Each argument is a set of `cxr serve` flags ("" for the defaults). Every configuration runs as its own
service process at once; the rounds then measure each in turn at one closed-loop level, reversing the
order every round, so that the drift of a shared machine lands on all of them alike. It prints the median
images/s and CPU per request of each, and per round the ratio to the first configuration: on a machine
whose speed drifts by a tenth within minutes, a difference of a few per cent shows in the rounds (how many
were faster), not in two figures taken minutes apart.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from loadtest import sweeps
from loadtest.benchmark import ROOT, bench_samples
from loadtest.plan import Plan
from service.inference.model import load_default


@dataclass
class Config:
    flags: str
    images_per_s: list[float] = field(default_factory=list)
    loop_ms: list[float] = field(default_factory=list)
    workers_ms: list[float] = field(default_factory=list)
    generator_ms: list[float] = field(default_factory=list)


def compare(plan: Plan, flag_sets: list[str], *, rounds: int, clients: int) -> list[Config]:
    """Measure every flag set `rounds` times at `clients` clients, alternating the order."""
    configs = [Config(flags) for flags in flag_sets]
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        running = [
            stack.enter_context(
                sweeps.service(
                    plan, f"config {index}", shlex.split(config.flags), plan.log_dir / f"compare-{index}.log"
                )
            )
            for index, config in enumerate(configs)
        ]
        for round_index in range(rounds):
            order = list(range(len(configs)))
            for index in order if round_index % 2 == 0 else order[::-1]:
                target, generator = running[index]
                summary = sweeps.sweep(
                    plan, f"config {index}", generator, clients=[clients], rates=[], server=target
                )[0]
                if summary.error_rate:
                    raise RuntimeError(
                        f"config {index} ({configs[index].flags!r}) answered errors: {summary.errors}"
                    )
                config = configs[index]
                config.images_per_s.append(summary.images_per_s)
                config.loop_ms.append(summary.cpu_ms["event loop thread"])
                config.workers_ms.append(summary.cpu_ms["worker threads"])
                config.generator_ms.append(summary.cpu_ms["load generator"])
    return configs


def report(configs: list[Config]) -> list[str]:
    lines = [
        "| flags | images/s (median) | event loop ms | worker threads ms | load generator ms | vs first, per round |"
    ]
    lines.append("|---|---|---|---|---|---|")
    first = configs[0]
    for config in configs:
        ratios = sorted(a / b for a, b in zip(config.images_per_s, first.images_per_s, strict=True))
        versus = (
            "-"
            if config is first
            else f"median {statistics.median(ratios):.3f} (min {ratios[0]:.3f}, max {ratios[-1]:.3f}; "
            f"faster in {sum(r > 1 for r in ratios)} of {len(ratios)})"
        )
        lines.append(
            f"| {config.flags or '(defaults)'} | {statistics.median(config.images_per_s):.1f} | "
            f"{statistics.median(config.loop_ms):.2f} | {statistics.median(config.workers_ms):.2f} | "
            f"{statistics.median(config.generator_ms):.2f} | {versus} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.compare", description=__doc__.split("\n")[0])
    parser.add_argument("flag_sets", nargs="+", help='`cxr serve` flags per configuration ("" = defaults)')
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per window")
    parser.add_argument(
        "--images", type=Path, action="append", help="image folder (default: ../shared/data/fullres)"
    )
    parser.add_argument(
        "--model", help="model name, version directory or model.onnx (default: the bundled one)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    samples = bench_samples(args.images, {"jpeg"})
    plan = Plan(model_dir=load_default(args.model).directory, samples=samples, out_dir=ROOT / "build")
    plan.duration_s, plan.warmup_s = args.seconds, 1.5
    configs = compare(plan, args.flag_sets, rounds=args.rounds, clients=args.clients)
    sys.stdout.write("\n".join(report(configs)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
