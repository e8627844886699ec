"""`cxr bench`: the service against the hardware limit, a naive baseline and a peer framework, in one run.

One invocation, one machine, the same model and images for every target:

1. the in-process limit (loadtest/limit.py) and where the time goes, with the measured effect of each
   optimization the service relies on;
2. each target as a real process on a free loopback port (loadtest/targets.py): the service with its
   defaults (the batch policy it chose at warm-up is recorded), the naive baseline (loadtest/naive_app.py)
   Ray Serve with `@serve.batch` (loadtest/peer_ray.py), and LitServe, BentoML and Triton (PyTriton) from
   environments of their own (loadtest/peers.py; skipped with the reason when they cannot be installed or
   started), each over a closed-loop concurrency sweep and
   an open-loop sweep of fixed arrival rates (fractions of the service's peak; loadtest/loadgen.py); then
   the service with one setting changed at a time (the batch policy fixed at 1 and at the maximum among
   them), each next to the defaults;
3. the overload checks on the service: 70 % of peak, then 2x peak (only 2xx/503/429, no request past its
   deadline, bounded memory), then back to peak;
4. the HTTP floor (loadtest/floor_app.py: uvicorn and an app that only reads the body) at the service's
   peak, and what receiving the films costs the limit's work: its pipeline in a process of its own, alone
   and beside that floor receiving the films at 0.95 x the limit's rate (loadtest.sweeps.beside_floor);
5. a GPU section when a CUDA provider is usable (else skipped, saying why);
6. Triton's perf_analyzer on the tensor path (loadtest/perf.py): `cxr serve`'s /v2 and PyTriton side by
   side, the service's counters checked (with `--quick`: concurrency 1, short windows, and PyTriton only
   from a cached environment); skipped with the reason when perf_analyzer cannot run here.

It writes `results.json`, `benchmarks.md` and the throughput-vs-p99 plot (loadtest/bench_report.py). The
benchmark is a command of its own (minutes); `--quick` is the seconds-long smoke run the tests use.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, get_args

import onnxruntime as ort

from loadtest import bench_report, limit
from loadtest.images import Sample, load_samples
from loadtest.plan import DEFAULT_TARGETS, TARGETS, BenchError, Plan
from loadtest.refusals import leave_out, refused_by_model
from service.imaging.pixels import ImageFormat
from service.inference.allocator import retain_freed_memory
from service.inference.batcher import batch_sizes
from service.inference.cpus import usable_cpus
from service.inference.model import OnnxModel, available_providers, load_default

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent


def host() -> dict[str, Any]:
    """The machine as the report states it (a shared machine's load average matters for every figure)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "cpu": cpu,
        "cores": usable_cpus(),
        "memory_gib": round(memory / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers_available": ort.get_available_providers(),
        "load_average_at_start": list(os.getloadavg()),
    }


class _Limit:
    """Stage timings, the limit under the service's thread budget, and the optimization variants.

    Full rounds interleave every configuration and each keeps its best: another process's burst can only
    slow a configuration down, and it should not decide a comparison by landing on one of them. They run
    before the HTTP targets. The service/limit ratio comes from `paired_round()`s instead, each run next to
    one measurement of the service's peak level (the service idle in the meantime), so that the shared
    machine's drift over a run (seen: 58 vs 49 images/s for the same loop 12 minutes apart) hits both
    sides of each pair alike. Each round measures as long as one load level of the service does.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        budget = plan.defaults
        one = OnnxModel(
            plan.model_dir, providers=["CPUExecutionProvider"], intra_op_threads=budget.intra_op_threads
        )
        # Every batch size the service may choose: the limit is the best of them, whichever the service took.
        self.sizes = batch_sizes(budget.max_batch_size)
        self.stages = limit.stage_times(one, plan.samples, repeats=plan.stage_repeats, batch_sizes=self.sizes)
        both = OnnxModel(plan.model_dir, providers=["CPUExecutionProvider"], intra_op_threads=2)
        workers, threads = budget.decode_workers, budget.intra_op_threads
        other = usable_cpus() if workers != usable_cpus() else max(1, usable_cpus() - 1)
        self.variants = [
            (one, limit.Pipeline(f"service budget, batch {size}", workers, threads, size))
            for size in self.sizes
        ] + [
            (
                one,
                limit.Pipeline(
                    "service budget, full-size JPEG decode",
                    workers,
                    threads,
                    budget.max_batch_size,
                    limit.decode_full,
                ),
            ),
            (
                both,
                limit.Pipeline(
                    "no overlap: decode then infer, 2 intra-op threads", 0, 2, budget.max_batch_size
                ),
            ),
            (
                one,
                limit.Pipeline(
                    f"{other} decode thread(s), {threads} intra-op", other, threads, budget.max_batch_size
                ),
            ),
            (
                both,
                limit.Pipeline(
                    f"oversubscribed: {workers} decode thread(s) + 2 intra-op threads",
                    workers,
                    2,
                    budget.max_batch_size,
                ),
            ),
        ]
        self.rates: list[list[float]] = [[] for _ in self.variants]  # full rounds only
        self.cpu_ms: list[list[float]] = [[] for _ in self.variants]  # CPU per image, every round
        self.paired: list[dict[str, Any]] = []

    def _measure(self, index: int) -> limit.Rate:
        model, pipeline = self.variants[index]
        return limit.run_pipeline(
            model, self.plan.samples, pipeline, warmup_s=self.plan.warmup_s, duration_s=self.plan.duration_s
        )

    def round(self) -> None:
        for index in range(len(self.variants)):
            rate = self._measure(index)
            self.rates[index].append(rate.images_per_s)
            self.cpu_ms[index].append(rate.cpu_ms_per_image)

    def _best_size(self) -> int:
        """Index of the service-budget configuration (one per batch size) that was best in the full rounds."""
        return max(range(len(self.sizes)), key=lambda index: max(self.rates[index], default=0.0))

    def best_pipeline(self) -> tuple[limit.Pipeline, float]:
        """The service-budget configuration the pairs use, and its images/s as the acceptance check counts
        it (the median of the paired rounds; the best full round before there are any)."""
        best = self._best_size()
        paired = [entry["images_per_s"] for entry in self.paired]
        return self.variants[best][1], statistics.median(paired) if paired else max(self.rates[best])

    def paired_round(self) -> float:
        """The service-budget configuration that was best in the full rounds, once more -> images/s. Only
        one configuration, as the service runs one: the best of several windows would lean against it."""
        best = self._best_size()
        rate = self._measure(best)
        self.cpu_ms[best].append(rate.cpu_ms_per_image)
        self.paired.append({"configuration": self.variants[best][1].name, "images_per_s": rate.images_per_s})
        return rate.images_per_s

    def result(self) -> dict[str, Any]:
        measured = []
        for (_, pipeline), rounds, cpu in zip(self.variants, self.rates, self.cpu_ms, strict=True):
            measured.append(
                {
                    **vars(pipeline),
                    "decoder": pipeline.decoder.__name__,
                    "images_per_s": max(rounds),
                    "rounds": rounds,
                    "cpu_ms_per_image": statistics.median(cpu),
                }
            )
            logger.info("limit %-55s %7.1f images/s (best of %s)", pipeline.name, max(rounds), rounds)
        # The limit's best, paired rounds included (the best-against-best ratio, for information).
        best = max(
            [entry["images_per_s"] for entry in measured[: len(self.sizes)]]
            + [entry["images_per_s"] for entry in self.paired]
        )
        # CPU per image of the service-budget configuration the pairs use: the work the service does too,
        # whatever share of the cores the loop kept busy.
        return {
            "stages_ms": self.stages,
            "variants": measured,
            "paired": self.paired,
            "images_per_s": best,
            "cpu_ms_per_image": statistics.median(self.cpu_ms[self._best_size()]),
        }


def _gpu(plan: Plan) -> dict[str, Any]:
    chosen = available_providers(None)
    gpu = [p for p in chosen if p != "CPUExecutionProvider"]
    if not gpu:
        have = ", ".join(ort.get_available_providers())
        return {
            "skipped": f"no usable CUDA/TensorRT provider (onnxruntime offers {have}; no NVIDIA driver or provider library loads on this host)"
        }
    model = OnnxModel(plan.model_dir, providers=gpu, intra_op_threads=plan.defaults.intra_op_threads)
    if model.providers[0] == "CPUExecutionProvider":
        return {"skipped": f"{gpu} requested but ONNX Runtime fell back to the CPU"}
    sizes = [1, 2, 4, 8, 16, 32, 64]
    stages = limit.stage_times(model, plan.samples[:2], repeats=plan.stage_repeats, batch_sizes=sizes)
    pipelines = [
        limit.Pipeline(f"GPU, batch {size}", plan.defaults.decode_workers, 1, size) for size in sizes
    ]
    rates = {
        p.name: limit.run_pipeline(
            model, plan.samples, p, warmup_s=plan.warmup_s / 2, duration_s=plan.duration_s / 2
        ).images_per_s
        for p in pipelines
    }
    return {
        "providers": model.providers,
        "inference_ms_per_image": {k: v for k, v in stages.items() if k.startswith("inference")},
        "pipeline_images_per_s": rates,
    }


def run(plan: Plan) -> dict[str, Any]:
    """Measure everything in `plan`, write results.json, benchmarks.md and the plot; return the results."""
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    plan.log_dir.mkdir(parents=True, exist_ok=True)
    # The in-process limit gets the service's allocator settings too (`cxr serve` applies them at start):
    # it should be the same pipeline minus HTTP, not one that pays page faults the service does not.
    retain_freed_memory(plan.defaults.malloc_retain_mib)
    model = load_default(plan.model_dir)
    results: dict[str, Any] = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": plan.quick,
        "command": " ".join(["cxr bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else "cxr bench",
        "host": host(),
        "model": {
            k: v
            for k, v in model.describe().items()
            if k in ("name", "version", "sha256", "providers", "input", "preprocessing")
        },
        "images": {
            "count": len(plan.samples),
            "formats": sorted({s.fmt for s in plan.samples}),
            "sizes": [f"{s.width}x{s.height}" for s in plan.samples],
            "bytes_mean": sum(len(s.data) for s in plan.samples) / len(plan.samples),
        },
        "settings": {
            "service": plan.defaults.model_dump(
                include={
                    "max_batch_size",
                    "batch_policy",
                    "max_queue_delay_ms",
                    "queue_capacity",
                    "request_timeout_s",
                    "intra_op_threads",
                    "decode_workers",
                    "malloc_retain_mib",
                }
            ),
            "concurrency": plan.concurrency,
            "open_fractions_of_service_peak": plan.open_fractions,
            "warmup_s": plan.warmup_s,
            "duration_s": plan.duration_s,
            "pairs": plan.pairs,
        },
    }
    del model
    in_process = _Limit(plan)
    for _ in range(max(1, plan.limit_rounds)):
        in_process.round()
    from loadtest import sweeps  # psutil comes with the [load] extra; `cxr --help` needs none of it

    results["runs"], results["overload"], results["batching"], results["peers"] = sweeps.measure_targets(
        plan, paired=in_process.paired_round
    )
    peak = bench_report.peak_run(results["runs"], "service")
    if peak:  # what stock uvicorn costs per request at the service's peak concurrency
        results["http_floor"] = sweeps.http_floor(plan, int(peak["level"]))
    results["beside_floor"] = sweeps.beside_floor(plan, *in_process.best_pipeline())
    results["limit"] = in_process.result()
    results["gpu"] = _gpu(plan)
    if plan.perf_analyzer:
        from loadtest import perf

        sweep = perf.QUICK if plan.quick else perf.Sweep()
        # The quick run does not create PyTriton's environment (~75 s, ~500 MB): skipped unless cached.
        results["perf_analyzer"] = perf.run(
            plan.model_dir, plan.samples, plan.log_dir / "perf", sweep, create=not plan.quick
        )
    # Load at the end too: other processes that started during the run took CPU from its figures.
    results["host"]["load_average_at_end"] = list(os.getloadavg())
    results["acceptance"] = bench_report.acceptance(results)
    (plan.out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    bench_report.write(results, plan.out_dir)
    return results


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="model name, version directory or model.onnx (default: the bundled default)"
    )
    parser.add_argument(
        "--images",
        action="append",
        type=Path,
        help="image folder (repeatable; default: ../shared/data/fullres)",
    )
    parser.add_argument(
        "--formats",
        default="jpeg",
        help="formats to send, comma-separated (default: jpeg, the acceptance set)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (default: all but service-b1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: build/bench/, or build/bench-quick/ with --quick, in the current folder)",
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="write into the source checkout's docs/ (the committed benchmark figures) instead of --out",
    )
    parser.add_argument("--concurrency", help="closed-loop clients, comma-separated (default 1,4,16,64)")
    parser.add_argument("--duration-s", type=float, help="measured seconds per load level (default 8)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="seconds-long smoke run (of the peers, LitServe only unless --targets names others)",
    )


def bench_samples(folders: list[Path] | None, formats: set[ImageFormat]) -> list[Sample]:
    """The images to send: from `folders` (default ../shared/data/fullres, the full-size films), else
    synthetic ones."""
    chosen = folders or [ROOT.parent / "shared" / "data" / "fullres"]
    return load_samples([folder for folder in chosen if folder.is_dir()], formats=formats)


def classifiable(samples: list[Sample], model: OnnxModel) -> list[Sample]:
    """The samples `model`'s input-domain check accepts (each refused one named in a warning line): the
    service refuses the others with 422, and a benchmark of refusals measures nothing it is for. Raises
    BenchError when none is left (a folder of photographs, say; or the synthetic images, drawn, not
    radiographs, which a model's check may refuse)."""
    kept = leave_out(samples, refused_by_model(samples, model))
    if not kept:
        where = "synthetic images" if all(s.name.startswith("synthetic-") for s in samples) else "images"
        raise BenchError(
            f"the input-domain check of {model.name} v{model.version} refuses all {len(samples)} {where} "
            "as not chest radiographs; give --images a folder of chest radiographs it classifies "
            "(default: ../shared/data/fullres)"
        )
    return kept


def main(args: argparse.Namespace) -> int:
    """Entry point of `cxr bench`."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polls, one line each
    wanted = {part.strip() for part in args.formats.split(",")}
    formats: set[ImageFormat] = {fmt for fmt in get_args(ImageFormat) if fmt in wanted}
    model = load_default(args.model)
    model_dir = model.directory
    try:
        samples = classifiable(bench_samples(args.images, formats), model)
    except BenchError as error:
        print(f"cxr bench: {error}", file=sys.stderr)  # noqa: T201 - CLI output
        return 2
    del model  # each part of the run loads its own sessions
    if args.docs:
        out = ROOT / "docs"
        if not (out / "benchmarks.md").is_file():
            print(f"cxr bench: --docs needs a source checkout; no {out / 'benchmarks.md'}", file=sys.stderr)  # noqa: T201
            return 2
    else:
        out = args.out or Path("build") / ("bench-quick" if args.quick else "bench")
    plan = Plan(model_dir=model_dir, samples=samples, out_dir=out)
    if args.quick:
        plan.shrink()
        if args.targets == ",".join(DEFAULT_TARGETS):
            # Ray takes ~20 s to start; LitServe's environment is created in ~20 s when not cached (BentoML's
            # and PyTriton's take longer, so they are left to the full run).
            plan.targets = ["service", "naive", "naive-service-decoder", "litserve"]
    if args.targets != ",".join(DEFAULT_TARGETS):
        plan.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.concurrency:
        plan.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.duration_s:
        plan.duration_s = args.duration_s
    try:
        results = run(plan)
    except BenchError as error:
        print(f"cxr bench: {error}", file=sys.stderr)  # noqa: T201 - CLI output
        return 1
    failed = [check["check"] for check in results["acceptance"] if check["pass"] is False]
    logger.info("targets' logs: %s", plan.log_dir)
    logger.info(
        "wrote %s; acceptance: %d checks, %d failed %s",
        out / "benchmarks.md",
        len(results["acceptance"]),
        len(failed),
        failed,
    )
    return 0
