"""Manifest -> rows -> a deterministic, stratified, patient-disjoint split.

The manifest is the format of `shared/data/cxr/manifest.csv`
(`file,label,source,original_path,patient_id,view,license,sha256_original`, paths relative to the CSV).
Images of one patient always land in the same split (follow-up films of a patient are near-copies of each
other, so a file-level split leaks); rows without a patient id form a group of their own.
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

LABELS_BINARY = ["non-covid", "covid"]
LABELS_THREE = ["normal", "pneumonia", "covid"]
SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("file", "label")


@dataclass(frozen=True)
class Row:
    path: Path
    file: str
    label: str  # as in the manifest: covid, normal, pneumonia
    source: str
    patient_id: str
    view: str

    @property
    def group(self) -> str:
        return self.patient_id or f"file:{self.file}"

    @property
    def origin(self) -> str:
        """Coarse provenance (`ieee8023`, `nih`, ...) from the patient id namespace or the file prefix."""
        if ":" in self.patient_id:
            return self.patient_id.split(":", 1)[0]
        return self.file.split("-", 1)[0] if "-" in self.file else self.source or "unknown"


class ManifestError(ValueError):
    """The manifest is missing, unreadable or lacks required columns."""


def read_manifest(path: str | Path) -> list[Row]:
    """Rows of a manifest CSV; `file` paths are resolved relative to the CSV's folder."""
    manifest = Path(path)
    if not manifest.is_file():
        raise ManifestError(f"manifest not found: {manifest}")
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{manifest}: missing column(s) {', '.join(missing)}")
        rows = [
            Row(
                path=(manifest.parent / record["file"]).resolve(),
                file=record["file"],
                label=record["label"].strip().lower(),
                source=record.get("source") or "",
                patient_id=(record.get("patient_id") or "").strip(),
                view=record.get("view") or "",
            )
            for record in reader
        ]
    if not rows:
        raise ManifestError(f"{manifest}: no rows")
    return rows


def manifest_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def target(label: str, labels: Sequence[str]) -> int:
    """Class index of a manifest label for a task (`non-covid` collects normal and pneumonia)."""
    if list(labels) == LABELS_BINARY:
        return 1 if label == "covid" else 0
    if label not in labels:
        raise ManifestError(f"label {label!r} is not one of {list(labels)}")
    return list(labels).index(label)


def _strata(rows: Iterable[Row]) -> tuple[dict[str, list[Row]], dict[tuple[str, str], list[str]]]:
    """(patient group -> its rows, (origin, the group's label) -> its groups)."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        groups[row.group].append(row)
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    for group, members in groups.items():
        labels = {member.label for member in members}
        group_label = "covid" if "covid" in labels else "pneumonia" if "pneumonia" in labels else "normal"
        strata[(members[0].origin, group_label)].append(group)
    return groups, strata


def _shuffled_strata(rows: Iterable[Row], seed: int) -> tuple[dict[str, list[Row]], list[list[str]]]:
    """(patient group -> its rows, each stratum's groups in a seeded shuffle, strata in sorted order)."""
    groups, strata = _strata(rows)
    rng = random.Random(seed)
    shuffled = []
    for key in sorted(strata):
        names = sorted(strata[key])
        rng.shuffle(names)
        shuffled.append(names)
    return groups, shuffled


def split_by_patient(
    rows: Iterable[Row], *, seed: int = 1337, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> dict[str, str]:
    """file -> train/val/test. Patient-disjoint; stratified by (origin, the group's label); seeded.

    Groups are shuffled within each stratum and assigned greedily so each split gets close to its share of
    the stratum's images (not of its patients: patients differ a lot in image count).
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    groups, shuffled = _shuffled_strata(rows, seed)
    assignment: dict[str, str] = {}
    for names in shuffled:
        total = sum(len(groups[name]) for name in names)
        quota = {"test": test_fraction * total, "val": val_fraction * total}
        filled = {"test": 0, "val": 0}
        for name in names:
            size = len(groups[name])
            # Fill test, then val, while the group fits within half a group of the quota; the rest trains.
            chosen = "train"
            for split in ("test", "val"):
                if filled[split] + size / 2 <= quota[split]:
                    chosen = split
                    filled[split] += size
                    break
            for member in groups[name]:
                assignment[member.file] = chosen
    return assignment


def fold_split(
    assignment: dict[str, str], rows: Sequence[Row], *, folds: int, fold: int, seed: int
) -> dict[str, str]:
    """The split with its train and val images regrouped into `folds` patient-disjoint folds, stratified
    like the split and seeded: fold `fold` (0-based) becomes val, the others train; test stays test, so
    cross-validation never reads the test split. Each stratum's groups go, shuffled, to the fold that holds
    the fewest of the stratum's images so far."""
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"need folds >= 2 and 0 <= fold < folds, got fold {fold} of {folds}")
    pool = [row for row in rows if assignment[row.file] in ("train", "val")]
    groups, shuffled = _shuffled_strata(pool, seed)
    of_group: dict[str, int] = {}
    for names in shuffled:
        filled = [0] * folds
        for name in names:
            chosen = min(range(folds), key=lambda index: (filled[index], index))
            filled[chosen] += len(groups[name])
            of_group[name] = chosen
    regrouped = dict(assignment)
    for row in pool:
        regrouped[row.file] = "val" if of_group[row.group] == fold else "train"
    return regrouped


def write_split(path: Path, rows: Sequence[Row], assignment: dict[str, str]) -> None:
    """The split beside the model, for audit: one line per image with its patient and split."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "origin", "patient_id", "split"])
        for row in sorted(rows, key=lambda r: r.file):
            writer.writerow([row.file, row.label, row.origin, row.patient_id, assignment[row.file]])


def read_split(path: Path) -> dict[str, str]:
    with path.open(newline="") as handle:
        return {record["file"]: record["split"] for record in csv.DictReader(handle)}
