"""The sweep's journal: one JSON object per line, one line per finished
trial, each written with a single append, flushed and fsynced before the
next trial is recorded. A driver killed in the middle of a write can leave
a torn last line; reading drops it (that trial simply runs again) and the
next append first cuts it off, so the file stays valid JSON lines."""
import json
import math
import os
import warnings


class TornLineWarning(UserWarning):
    """The journal's last line was incomplete (the writer was killed) and is ignored."""


def _clean(value):
    """JSON without NaN/Infinity (which are not JSON): non-finite floats become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _parse(line):
    """The record on one line, or None if the line is not one."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "id" in record else None


class Journal:
    """
    Append-only JSON-lines file of trial results.

    Inputs:
    - path: the journal file (created on the first append)
    """

    def __init__(self, path):
        self.path = path
        self._repaired = False  # the first append repairs a torn tail once

    def _scan(self):
        """
        (records, byte offset where the last line starts, torn tail or None).
        Every line is written with its newline in one write, so only the bytes
        after the last newline can be torn.
        """
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return [], 0, None
        head, newline, tail = raw.rpartition(b"\n")
        records = []
        for number, line in enumerate(head.split(b"\n") if newline else [], 1):
            record = _parse(line)
            if record is None:
                raise ValueError("%s: line %d is not a trial record; the journal is damaged "
                                 "(only a last line cut short by a killed writer is ignored)"
                                 % (self.path, number))
            records.append(record)
        offset = len(head) + len(newline)
        if tail:
            record = _parse(tail)
            if record is None:
                return records, offset, tail
            records.append(record)  # complete, only its newline is missing
        return records, offset, None

    def read(self):
        """
        The records written so far, in order. A torn last line is ignored with a
        TornLineWarning; a damaged line before the last raises ValueError.
        """
        records, _, torn = self._scan()
        if torn is not None:
            warnings.warn("%s: ignoring an incomplete last line (%d bytes; the sweep was "
                          "killed while writing it)" % (self.path, len(torn)), TornLineWarning,
                          stacklevel=2)
        return records

    def _repair(self):
        """Cut a torn last line off, and end a final record with its newline."""
        records, offset, torn = self._scan()
        if torn is not None:
            with open(self.path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())
        elif os.path.exists(self.path):
            size = os.path.getsize(self.path)
            if size > offset:  # the last record has no newline
                with open(self.path, "ab") as f:
                    f.write(b"\n")
                    f.flush()
                    os.fsync(f.fileno())

    def append(self, record):
        """Write one record as one line; it is on disk when this returns."""
        line = json.dumps(_clean(record), allow_nan=False, separators=(",", ":"))
        data = (line + "\n").encode()
        if not self._repaired:
            self._repair()
            self._repaired = True
        new = not os.path.exists(self.path)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:  # make the new file's directory entry durable too
            dir_fd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
