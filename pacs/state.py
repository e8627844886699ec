"""The exactly-once ledger: one SQLite row per SOP Instance UID seen, and what was done with it.

An image moves `classified` (the service answered; the result and the encoded SR and SC are stored here
in the same transaction) -> `written` (the PACS accepted both). A pass killed at any point and run again:
- before `classified` committed: the image is classified again (nothing was written yet);
- after: it is not classified again; the stored SC and SR, whose SOP Instance UIDs are derived from the
  source image and the model (pacs.sr, pacs.sc), are sent again, so a PACS that had already received
  them keeps one copy of each.
`failed` rows record the error and its kind; transient and configuration failures (a wrong API key, say)
are retried by the next pass, permanent ones only with `--retry-failed`. `skipped` rows are images the policy refuses (not a chest, not CR/DX;
`error_kind` "unsupported") or that the service's input-domain check refused as not a frontal chest
radiograph (`error_kind` "out-of-domain", `error` the service's reasons): no classification is stored.

WAL journal with synchronous=FULL: a committed row survives SIGKILL and power loss.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Status = Literal["classified", "written", "failed", "skipped"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid    TEXT PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    status              TEXT NOT NULL,
    result              TEXT,
    sr_sop_instance_uid TEXT,
    sr                  BLOB,
    sc_sop_instance_uid TEXT,
    sc                  BLOB,
    error_kind          TEXT,
    error               TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    first_seen          REAL NOT NULL,
    updated             REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_status ON instances (status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ADDED_COLUMNS = {"sc_sop_instance_uid": "TEXT", "sc": "BLOB"}
"""Columns a ledger written before the Secondary Capture lacks; added on open (an old `classified` row
keeps its SR alone and is finished as it was begun)."""


@dataclass(frozen=True)
class Record:
    """What the ledger knows about one image."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    status: Status
    result: dict[str, Any] | None
    sr_sop_instance_uid: str | None
    sr: bytes | None
    error_kind: str | None
    error: str | None
    attempts: int
    sc_sop_instance_uid: str | None = None
    sc: bytes | None = None


class StateStore:
    """Thread-safe (one connection behind a lock; each method is one transaction)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(instances)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE instances ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, sop_instance_uid: str) -> Record | None:
        with self._lock:
            row = self._db.execute(
                "SELECT sop_instance_uid, study_instance_uid, series_instance_uid, status, result,"
                " sr_sop_instance_uid, sr, error_kind, error, attempts, sc_sop_instance_uid, sc"
                " FROM instances WHERE sop_instance_uid = ?",
                (sop_instance_uid,),
            ).fetchone()
        if row is None:
            return None
        return Record(
            row[0],
            row[1],
            row[2],
            row[3],
            json.loads(row[4]) if row[4] else None,
            row[5],
            row[6],
            row[7],
            row[8],
            row[9],
            row[10],
            row[11],
        )

    def needs_work(self, sop_instance_uid: str, *, retry_failed: bool = False) -> bool:
        """False for written and skipped images, and for permanent failures unless `retry_failed`."""
        record = self.get(sop_instance_uid)
        if record is None or record.status == "classified":
            return True
        if record.status == "failed":
            return record.error_kind in ("transient", "config") or retry_failed
        return False

    def _upsert(self, uid: str, study: str, series: str, status: Status, **columns: Any) -> None:
        now = time.time()
        names = ["status", "updated", *columns]
        values = [status, now, *columns.values()]
        assignments = ", ".join(f"{name} = excluded.{name}" for name in names)
        with self._lock:
            self._db.execute(
                f"INSERT INTO instances (sop_instance_uid, study_instance_uid, series_instance_uid, first_seen,"
                f" {', '.join(names)}) VALUES (?, ?, ?, ?, {', '.join('?' * len(names))})"
                f" ON CONFLICT (sop_instance_uid) DO UPDATE SET {assignments}",
                (uid, study, series, now, *values),
            )

    def mark_classified(
        self,
        uid: str,
        study: str,
        series: str,
        *,
        result: dict[str, Any],
        sr_uid: str | None,
        sr: bytes | None,
        sc_uid: str | None = None,
        sc: bytes | None = None,
    ) -> None:
        """The answer and the encoded objects to write (either may be None: not written in this mode)."""
        self._upsert(
            uid,
            study,
            series,
            "classified",
            result=json.dumps(result, sort_keys=True),
            sr_sop_instance_uid=sr_uid,
            sr=sr,
            sc_sop_instance_uid=sc_uid,
            sc=sc,
            error_kind=None,
            error=None,
        )

    def mark_written(self, uid: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE instances SET status = 'written', sr = NULL, sc = NULL, error_kind = NULL, error = NULL,"
                " updated = ? WHERE sop_instance_uid = ?",
                (time.time(), uid),
            )

    def mark_failed(self, uid: str, study: str, series: str, *, kind: str, error: str) -> None:
        """Record a failure; a classified image keeps its result and SR (only the write failed)."""
        record = self.get(uid)
        if record is not None and record.status == "classified":
            with self._lock:
                self._db.execute(
                    "UPDATE instances SET error_kind = ?, error = ?, attempts = attempts + 1, updated = ?"
                    " WHERE sop_instance_uid = ?",
                    (kind, error, time.time(), uid),
                )
            return
        attempts = (record.attempts if record else 0) + 1
        self._upsert(uid, study, series, "failed", error_kind=kind, error=error, attempts=attempts)

    def mark_skipped(
        self, uid: str, study: str, series: str, *, reason: str, kind: str = "unsupported"
    ) -> None:
        self._upsert(uid, study, series, "skipped", error_kind=kind, error=reason)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM instances GROUP BY status").fetchall()
        return {status: count for status, count in rows}

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
