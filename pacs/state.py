"""The exactly-once ledger: one SQLite row per image (SOP Instance UID) and destination (the PACS results
are written to, pacs.settings `destination`), and what was done with it. A second PACS holding the same
images is a second destination: its rows are its own, so it gets its results too.

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

A ledger from before destinations (keyed by SOP Instance UID alone) is converted on open; its rows are
marked as of an unknown destination and taken over by the first store opened with a destination: such a
ledger served one PACS, the one it is used with.
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

_TABLE = """
CREATE TABLE IF NOT EXISTS instances (
    destination         TEXT NOT NULL,
    sop_instance_uid    TEXT NOT NULL,
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
    updated             REAL NOT NULL,
    PRIMARY KEY (destination, sop_instance_uid)
)"""
_SCHEMA = f"""{_TABLE};
CREATE INDEX IF NOT EXISTS instances_destination_status ON instances (destination, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_ADDED_COLUMNS = {"sc_sop_instance_uid": "TEXT", "sc": "BLOB"}
"""Columns a ledger written before the Secondary Capture lacks; added on open (an old `classified` row
keeps its SR alone and is finished as it was begun)."""
_COLUMNS = (
    "sop_instance_uid, study_instance_uid, series_instance_uid, status, result, sr_sop_instance_uid, sr,"
    " sc_sop_instance_uid, sc, error_kind, error, attempts, first_seen, updated"
)
UNKNOWN_DESTINATION = "(before destinations)"
"""The destination of rows converted from a ledger keyed by SOP Instance UID alone."""


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
    """The rows of one `destination`; thread-safe (one connection behind a lock; each method is one
    transaction)."""

    def __init__(self, path: Path, *, destination: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.destination = destination
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._convert_keyed_by_uid_alone()
        self._db.executescript(_SCHEMA)
        if destination:
            self._db.execute(
                "UPDATE OR IGNORE instances SET destination = ? WHERE destination = ?",
                (destination, UNKNOWN_DESTINATION),
            )

    def _convert_keyed_by_uid_alone(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(instances)")}
        if not present or "destination" in present:
            return
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE instances ADD COLUMN {name} {kind}")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("ALTER TABLE instances RENAME TO instances_by_uid")
            self._db.execute("DROP INDEX IF EXISTS instances_status")
            self._db.execute(_TABLE)
            self._db.execute(
                f"INSERT INTO instances (destination, {_COLUMNS}) SELECT ?, {_COLUMNS} FROM instances_by_uid",
                (UNKNOWN_DESTINATION,),
            )
            self._db.execute("DROP TABLE instances_by_uid")
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise

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
                " FROM instances WHERE destination = ? AND sop_instance_uid = ?",
                (self.destination, sop_instance_uid),
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
                f"INSERT INTO instances (destination, sop_instance_uid, study_instance_uid, series_instance_uid,"
                f" first_seen, {', '.join(names)}) VALUES (?, ?, ?, ?, ?, {', '.join('?' * len(names))})"
                f" ON CONFLICT (destination, sop_instance_uid) DO UPDATE SET {assignments}",
                (self.destination, uid, study, series, now, *values),
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
                " updated = ? WHERE destination = ? AND sop_instance_uid = ?",
                (time.time(), self.destination, uid),
            )

    def mark_failed(self, uid: str, study: str, series: str, *, kind: str, error: str) -> None:
        """Record a failure; a classified image keeps its result and SR (only the write failed)."""
        record = self.get(uid)
        if record is not None and record.status == "classified":
            with self._lock:
                self._db.execute(
                    "UPDATE instances SET error_kind = ?, error = ?, attempts = attempts + 1, updated = ?"
                    " WHERE destination = ? AND sop_instance_uid = ?",
                    (kind, error, time.time(), self.destination, uid),
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
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM instances WHERE destination = ? GROUP BY status",
                (self.destination,),
            ).fetchall()
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
