"""Synthetic X-ray-like images and a manifest of them, for tests that must run without ../shared/data."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np


def synthetic_xray(rng: np.random.Generator, covid: bool, size: int = 96) -> np.ndarray:
    """Two dark lung fields on a brighter body; 'covid' images get bright patchy opacities in the lungs."""
    image = np.full((size, size), 200, np.uint8)
    cv2.ellipse(image, (size // 3, size // 2), (size // 7, size // 3), 0, 0, 360, 60, -1)
    cv2.ellipse(image, (2 * size // 3, size // 2), (size // 7, size // 3), 0, 0, 360, 60, -1)
    if covid:
        for _ in range(3):
            center = (
                int(rng.integers(size // 4, 3 * size // 4)),
                int(rng.integers(size // 3, 2 * size // 3)),
            )
            cv2.circle(image, center, int(rng.integers(4, 9)), 170, -1)
    noise = rng.normal(0, 6, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def write_manifest(folder: Path, count: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["file", "label", "source", "original_path", "patient_id", "view", "license", "sha256_original"]
        )
        for index in range(count):
            label = ("covid", "normal", "pneumonia")[index % 3]
            origin = "ieee8023" if label == "covid" or index % 5 == 0 else "nih"
            name = f"{origin}-{index:04d}.png"
            cv2.imwrite(str(folder / name), synthetic_xray(rng, label == "covid"))
            # Two images per patient, so the patient-disjoint split has something to keep together.
            writer.writerow(
                [name, label, f"synthetic/{origin}", name, f"{origin}:{index // 2}", "PA", "CC0", ""]
            )
    return manifest
