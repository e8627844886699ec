"""The split is patient-disjoint, stratified, deterministic; manifests are validated."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from export.dataset import ManifestError, fold_split, read_manifest, split_by_patient, target


def _patient_splits(rows: list, split: dict[str, str]) -> dict[str, set[str]]:
    by_patient: dict[str, set[str]] = {}
    for row in rows:
        by_patient.setdefault(row.group, set()).add(split[row.file])
    return by_patient


def test_split_is_patient_disjoint_and_deterministic(synthetic_manifest: Path) -> None:
    rows = read_manifest(synthetic_manifest)
    first = split_by_patient(rows, seed=7)
    assert first == split_by_patient(rows, seed=7)
    assert first != split_by_patient(rows, seed=8)
    assert all(len(s) == 1 for s in _patient_splits(rows, first).values())
    counts = Counter(first.values())
    assert counts["train"] > counts["val"] > 0 and counts["test"] > 0


def test_rows_without_patient_id_are_their_own_group(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label,patient_id\n" + "".join(f"a{i}.png,covid,\n" for i in range(20)))
    rows = read_manifest(manifest)
    assert len({r.group for r in rows}) == 20
    assert set(split_by_patient(rows).values()) == {"train", "val", "test"}


def test_real_split_is_patient_disjoint_and_stratified(real_manifest: Path) -> None:
    rows = read_manifest(real_manifest)
    split = split_by_patient(rows)
    assert all(len(s) == 1 for s in _patient_splits(rows, split).values())
    for label in ("covid", "normal", "pneumonia"):
        members = [r for r in rows if r.label == label]
        share = sum(split[r.file] == "test" for r in members) / len(members)
        assert 0.10 <= share <= 0.20, (label, share)


def test_folds_partition_train_and_val_by_patient_and_leave_test_alone(real_manifest: Path) -> None:
    rows = read_manifest(real_manifest)
    split = split_by_patient(rows)
    folds = [fold_split(split, rows, folds=3, fold=k, seed=1337) for k in range(3)]
    for fold in folds:
        assert {f for f, s in fold.items() if s == "test"} == {f for f, s in split.items() if s == "test"}
        assert all(len(s) == 1 for s in _patient_splits(rows, fold).values())
    held_out = [{f for f, s in fold.items() if s == "val"} for fold in folds]
    pool = {f for f, s in split.items() if s in ("train", "val")}
    assert set.union(*held_out) == pool and sum(map(len, held_out)) == len(pool)  # each image out once
    ieee_negatives = [
        sum(r.origin == "ieee8023" and r.label != "covid" for r in rows if r.file in out) for out in held_out
    ]
    assert max(ieee_negatives) - min(ieee_negatives) <= 4, ieee_negatives  # stratified, not by luck
    with pytest.raises(ValueError, match="folds"):
        fold_split(split, rows, folds=3, fold=3, seed=1)


def test_bad_manifests_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,diagnosis\nx.png,covid\n")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(bad)
    with pytest.raises(ManifestError):
        target("tuberculosis", ["normal", "pneumonia", "covid"])
    assert target("pneumonia", ["non-covid", "covid"]) == 0
