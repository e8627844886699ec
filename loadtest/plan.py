"""What one `cxr bench` run measures (targets, load levels, durations, the service variants): the plan
every part of the harness (loadtest.benchmark, loadtest.sweeps, loadtest.compare) reads."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from loadtest.images import Sample
from service.inference.cpus import usable_cpus
from service.settings import Settings

TARGETS = (
    "service", "service-b1", "naive", "naive-service-decoder", "peer", "litserve", "bentoml",
    "litserve-pillow", "bentoml-pillow", "pytriton", "pytriton-pillow",
)  # fmt: skip
DEFAULT_TARGETS = (
    "service",
    "naive",
    "naive-service-decoder",
    "peer",
    "litserve",
    "bentoml",
    "litserve-pillow",
    "bentoml-pillow",
    "pytriton",
    "pytriton-pillow",
)
"""`service-b1` (a whole sweep at max batch 1) only when asked for: the fixed-batch-1 variant measures that
next to the defaults, which is the comparison that matters. Every peer runs with the service's decoder and
with its natural one (Pillow), so the table separates the serving design from the decoder."""


class BenchError(RuntimeError):
    """The bench cannot measure what it was asked to (said in one line by `cxr bench`)."""


@dataclass
class Plan:
    """What one run measures; `shrink()` makes it a smoke test of the harness."""

    model_dir: Path  # a version directory (card.json)
    samples: list[Sample]
    out_dir: Path
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16, 64])
    open_fractions: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7, 0.9])
    warmup_s: float = 2.0
    duration_s: float = 8.0
    overload_factor: float = 2.0
    overload_s: float = 15.0
    stage_repeats: int = 5
    limit_rounds: int = 2
    pairs: int = 3
    quick: bool = False
    perf_analyzer: bool = True  # loadtest/perf.py: Triton's perf_analyzer against /v2 and PyTriton
    service_variants: dict[str, list[str]] = field(default_factory=dict)
    # The targets' logs stay out of the output folder (docs/ is committed); the path is logged at the end.
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cxr-bench-logs-")))
    defaults: Settings = field(default_factory=lambda: Settings.model_construct())

    def __post_init__(self) -> None:
        if not self.service_variants:
            self.service_variants = default_variants(self.defaults)

    def shrink(self) -> None:
        self.quick = True
        self.service_variants = batch_variants(self.defaults)
        self.concurrency, self.open_fractions = [1, 4], [0.5, 0.7]
        self.warmup_s, self.duration_s, self.overload_s, self.stage_repeats = 0.3, 1.0, 2.0, 2
        self.limit_rounds, self.pairs = 1, 1


def batch_variants(defaults: Settings) -> dict[str, list[str]]:
    """The batch policy fixed by hand at 1 and at the configured maximum: what the automatic choice
    (the defaults) is measured against."""
    largest = str(defaults.max_batch_size)
    return {
        "--batch-policy fixed --max-batch-size 1": ["--batch-policy", "fixed", "--max-batch-size", "1"],
        f"--batch-policy fixed --max-batch-size {largest}": [
            "--batch-policy",
            "fixed",
            "--max-batch-size",
            largest,
        ],
    }


def default_variants(defaults: Settings) -> dict[str, list[str]]:
    """One setting changed at a time: the batch policy fixed (batch_variants), the decode pool the other
    way (one thread per core, or one core left to ONNX Runtime), and glibc's allocator defaults
    (service/inference/allocator.py; the limit keeps the service's setting)."""
    cores = usable_cpus()
    workers = cores if defaults.decode_workers != cores else max(1, cores - 1)
    return {
        **batch_variants(defaults),
        f"--decode-workers {workers}": ["--decode-workers", str(workers)],
        "--malloc-retain-mib 0": ["--malloc-retain-mib", "0"],
    }
