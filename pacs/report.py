"""The per-image report of a pass: JSON Lines or CSV (by the file's suffix), one row per image handled.

Rows carry UIDs, status, result and error, never patient names or IDs. Each row is flushed as it is
written, so a killed pass leaves a report of everything it finished.
"""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path
from typing import IO, Any

COLUMNS = (
    "time",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "status",
    "label",
    "probability",
    "threshold",
    "model",
    "sr_sop_instance_uid",
    "sc_sop_instance_uid",
    "flags",
    "error_kind",
    "error",
    "duration_ms",
)
"""status: written | classified (dry run) | skipped | failed | already-done."""


class Report:
    """Appends rows to `path` (JSONL unless it ends in .csv); a no-op when `path` is None."""

    def __init__(self, path: Path | None) -> None:
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._csv: Any = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = path.open("a", encoding="utf-8", newline="")
        if path.suffix.lower() == ".csv":
            self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="ignore")
            if fresh:
                self._csv.writeheader()

    def write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            return
        with self._lock:
            if self._csv is not None:
                flat = {key: json.dumps(v) if isinstance(v, dict) else v for key, v in row.items()}
                self._csv.writerow({key: flat.get(key, "") for key in COLUMNS})
            else:
                self._file.write(json.dumps({key: row.get(key) for key in COLUMNS}) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
