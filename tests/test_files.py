"""The output folder is checked up front; cache files are written atomically and a damaged one
is rebuilt, not loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config

from autocompress._files import atomic_write, check_output_dir
from autocompress.errors import ConfigError
from autocompress.models import build_model

CLI = [sys.executable, "-m", "autocompress"]


def _mount_tmpfs(path: Path, *options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join(("size=2m", *options))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    if not _mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "cache" / "table.json"
    atomic_write(path, "old")
    atomic_write(path, b"new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["table.json"]


def test_full_disk_is_one_clear_error_before_any_work(small_disk, tmp_path, fmnist_root):
    with pytest.raises(ConfigError, match=r"output_dir: .*free"):
        check_output_dir(small_disk / "out")
    cfg = tiny_config(tmp_path, fmnist_root, output_dir=str(small_disk / "out"))
    done = subprocess.run([*CLI, "search", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: output_dir:") and "free" in err[0]
    assert "baseline: training" not in done.stdout  # checked before training


def test_read_only_disk_is_one_clear_error(tmp_path):
    mnt = tmp_path / "ro"
    if not _mount_tmpfs(mnt, "ro"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with pytest.raises(ConfigError, match=r"output_dir: cannot write to .*Read-only"):
            check_output_dir(mnt / "out")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_damaged_caches_are_rebuilt_not_loaded(tmp_path, fmnist_root):
    cfg = tiny_config(
        tmp_path,
        fmnist_root,
        search__n_trials=1,
        search__screen_trials=0,
        sensitivity__enabled=True,  # writes a cache table (the latency proxy writes none)
        sensitivity__images=100,
    )
    first = subprocess.run([*CLI, "search", str(cfg)], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    cache = tmp_path / "out" / "cache"
    ckpt = next(cache.glob("baseline-*.pt"))
    meta = ckpt.with_suffix(".json")
    tables = sorted(p for p in cache.glob("*.json") if p != meta)
    assert tables, sorted(p.name for p in cache.iterdir())  # some cache table to damage
    ckpt.write_bytes(ckpt.read_bytes()[:100])  # a truncated checkpoint
    meta.write_text("{not json")
    for t in tables:
        t.write_text('{"version": ')
    again = subprocess.run(
        [*CLI, "search", str(cfg), "--set", "search.n_trials=2"], capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"baseline: cached {ckpt.name} is damaged" in again.stdout
    assert "training again" in again.stdout
    for t in tables:
        assert isinstance(json.loads(t.read_text()), dict), t.name  # rebuilt
    assert isinstance(json.loads(meta.read_text()), dict)
    # The rebuilt checkpoint loads (a damaged one raises ModelError here).
    assert build_model("tiny_cnn", checkpoint=ckpt).fc.out_features == 10
