"""Files the tool writes and reads back: atomic writes (a killed process never leaves half a
cache file, and concurrent writers never share a temporary file) and the output folder checked
up front (writable, enough free space) before any long work."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

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
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * _PROBE_BYTES)
                fh.flush()
                os.fsync(fh.fileno())
        finally:
            probe.unlink(missing_ok=True)
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
