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


def baseline_checkpoint(model: str, overrides=(), log=print) -> Path:
    """The experiment's baseline checkpoint (trained with the experiment's own settings and
    ``overrides`` the first time, cached afterwards)."""
    import autocompress as ac
    from autocompress.baseline import prepare

    cfg = ac.load_experiment(EXPERIMENTS[model], list(overrides))
    return Path(prepare(cfg, log=log).baseline.checkpoint)


_MEASURED = ("autocompress", "experiments", "search_spaces")


def code_version() -> str | None:
    """The code version a run measured: the last commit that changed the package, the
    experiments or the search spaces (short hash), ``+dirty`` with uncommitted changes there.
    Commits of results, notes or reporting code do not change it."""
    try:
        git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
        head = subprocess.run(
            [*git, "log", "-1", "--format=%h", "--", *_MEASURED], capture_output=True, text=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", *_MEASURED], capture_output=True, text=True
        )
    except OSError:
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
