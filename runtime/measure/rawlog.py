"""The durable raw log of a sweep: append-only JSONL, one measured row per line.

Every row is appended (flush + fsync) as soon as it is measured, keyed by its
configuration. A restarted sweep skips keys already present, tolerates a torn last line
(a SIGKILL mid-write) and so neither loses nor duplicates rows.
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from typing import Optional

log = logging.getLogger("runtime.profile")

RAW_KIND = "prism-edge.perfmap.raw"
RAW_SCHEMA_VERSION = 1


def now() -> str:
    """UTC time stamp as written in raw rows and perf maps."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RawLog:
    """Append-only JSONL of measured rows: a header line, then one row per line.

    Every append is flushed and fsynced. On open, a torn last line (writer killed mid
    line) is cut off so the next append starts on a fresh line; rows are keyed by
    `key` and the last row of a key wins."""

    def __init__(self, path: str, protocol: dict):
        self.path, self.protocol = path, protocol
        self.rows: dict = {}
        self.header: Optional[dict] = None
        self._f = None
        self._load()

    def _load(self) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb") as f:
            data = f.read()
        good_end = 0
        pos = 0
        torn = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:                      # no newline: the writer died mid line
                torn += 1
                break
            line = data[pos:nl]
            pos = nl + 1
            try:
                obj = json.loads(line)
            except ValueError:
                torn += 1                   # keep scanning: later lines are still good
                continue
            good_end = pos
            if obj.get("kind") == RAW_KIND:
                self.header = obj
            elif isinstance(obj, dict) and "key" in obj:
                self.rows[obj["key"]] = obj
        if torn:
            log.warning("raw log %s: dropped %d torn line(s) (a killed writer)", self.path, torn)
        if good_end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        if self.header is not None and self.header.get("protocol") != self.protocol:
            raise ValueError(f"raw log {self.path} was started with protocol {self.header.get('protocol')}, "
                             f"not {self.protocol}; use the same settings or another --raw file")

    def append(self, row: dict) -> None:
        if self._f is None:
            from costmodel.safeio import open_append

            self._f = open_append(self.path)      # refuses a non-regular target; one-line errors
            if self.header is None:
                self.header = {"kind": RAW_KIND, "schema_version": RAW_SCHEMA_VERSION,
                               "protocol": self.protocol, "created": now()}
                self._write(self.header)
        self._write(row)
        self.rows[row["key"]] = row

    def _write(self, obj: dict) -> None:
        self._f.write(json.dumps(obj, allow_nan=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


