"""``examples/``: each script runs as written; the README's Python API snippet is the
example's code, so this also runs the README snippet as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_snippet_is_the_example():
    example = (REPO / "examples" / "search_torchvision.py").read_text()
    block = example.split("# --- README: Python API ---\n")[1].split("# --- end ---")[0]
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code == block


def test_search_torchvision_example_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "search_torchvision.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "picked trial" in proc.stdout and "test accuracy" in proc.stdout
    assert (tmp_path / "runs" / "api-demo" / "optuna.db").is_file()
