"""Files the tool writes and reads back: atomic writes (a killed process never leaves half a
cache file), the output folder checked before any long work, and the one content hash behind
every cache and fingerprint (baseline, sensitivity table, latency table, study space): a digest
of exactly the inputs that determine the cached result, a measured number's machine
(``hardware.profiler.machine_fingerprint``) and batch size included."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from .errors import ConfigError

MIN_FREE_MB = 64  # a baseline checkpoint, the caches, trial artifacts and the databases
_PROBE_BYTES = 1 << 20


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file of this process, flushed to disk,
    then renamed over ``path`` (readers see the old file or the new one, never a part)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_output_dir(folder: Path, min_free_mb: float = MIN_FREE_MB) -> None:
    """One clear error (before training starts) when ``folder`` cannot be created or written
    (read-only disk, permissions) or its disk has less than ``min_free_mb`` free."""
    folder = Path(folder)
    try:  # (a probe file of 1 MB, written as every cache file is)
        probe = folder / f".write-probe-{os.getpid()}"
        atomic_write(probe, b"\0" * _PROBE_BYTES).unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"output_dir: cannot write to {folder} ({exc.strerror or exc}): choose a writable "
            "output_dir (or free space on its disk)"
        ) from None
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise ConfigError(
            f"output_dir: only {free_mb:.0f} MB free on the disk of {folder} (at least "
            f"{min_free_mb:.0f} MB needed): free space or choose another output_dir"
        )


def content_key(payload: Any, length: int = 16) -> str:
    """Hex digest of ``payload``: raw bytes as they are, anything else as canonical JSON
    (sorted keys; non-JSON values as ``str``)."""
    if isinstance(payload, bytes):
        return hashlib.sha256(payload).hexdigest()[:length]
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a checkpoint: its content, not its name or date)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
