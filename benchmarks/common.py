"""What every benchmark shares: the experiments per model and one baseline checkpoint per model,
so that every benchmark compresses the same trained weights (trained once, then cached in the
experiment's own output folder: ``runs/<experiment name>/cache``).

    from common import EXPERIMENTS, baseline_checkpoint
    ckpt = baseline_checkpoint("resnet18")   # pass as --set model.checkpoint=<ckpt>
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EXPERIMENTS = {
    "small_cnn": REPO / "experiments" / "fashion_mnist_quick.yaml",
    "resnet18": REPO / "experiments" / "fashion_mnist_resnet18.yaml",
}


def baseline_checkpoint(model: str, log=print) -> Path:
    """The experiment's baseline checkpoint (trained with the experiment's own settings the
    first time, cached afterwards)."""
    import autocompress as ac
    from autocompress.search.run import prepare

    cfg = ac.load_experiment(EXPERIMENTS[model])
    return Path(prepare(cfg, log=log).baseline.checkpoint)


def code_version() -> str | None:
    """The code version a run measured (short hash, ``+dirty`` with uncommitted changes)."""
    try:
        git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "autocompress"], capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
