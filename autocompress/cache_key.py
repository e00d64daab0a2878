"""The one content hash behind every cache and fingerprint (baseline, sensitivity table,
latency table, study space): a digest of exactly the inputs that determine the cached result,
as canonical JSON. A measured number in a cache (a latency) includes the machine it was
measured on (``hardware.profiler.machine_fingerprint``) and the batch size in its payload."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


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
