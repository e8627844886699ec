"""The hard genuine set of `cxr evaluate-domain`: validation films made into ward films, nothing fitted on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.dataset import read_manifest
from export.domaineval import HARD_COPIES, hard_genuine
from service.imaging.decode import decode, decode_file
from service.inference.model import OnnxModel
from tests.support.synthetic import write_manifest
from tests.support.tinymodel import make_tiny_model


def test_hard_genuine_films_are_ward_copies_of_the_chosen_split_only(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "data", 12)
    model = OnnxModel(make_tiny_model(tmp_path / "models"))
    rows = read_manifest(manifest)
    split = {r.file: ("val" if index % 3 == 0 else "train") for index, r in enumerate(rows)}
    items = hard_genuine(model, manifest, split, "val", seed=1)
    val = [r for r in rows if split[r.file] == "val"]
    assert len(items) == HARD_COPIES * len(val)
    assert {name.split("#")[0] for name, _ in items} == {r.file for r in val}
    originals = {r.file: decode_file(str(r.path)).pixels for r in val}
    for name, payload in items:
        copy = decode(payload).pixels
        original = originals[name.split("#")[0]]
        assert copy.shape != original.shape or not np.array_equal(copy, original)
    again = hard_genuine(model, manifest, split, "val", seed=1)
    assert [p for _, p in again] == [p for _, p in items]  # a fixed seed: the same set every run
