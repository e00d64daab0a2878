"""NNI 3.0 as a compression method for the benchmarks: the policy's masks from ``LevelPruner``,
the quantisation-aware fine-tune by ``QATQuantizer`` (fused with the pruner), returned in
autocompress's form so that size, latency and accuracy are measured exactly as for the others.

NNI 3.0's own pins (numpy, filelock < 3.12, typeguard < 4.1.3) would downgrade the project's
environment: it is installed with --no-deps into its own folder, with the few pure-Python
packages it imports that the project does not already have.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from itertools import islice
from pathlib import Path

NNI_VERSION = "3.0"
NNI_EXTRA = [
    "astor",
    "colorama",
    "json_tricks",
    "psutil",
    "responses",
    "schema",
    "typeguard>=3.0.0,<4.1.3",
    "websockets",
    "PythonWebHDFS",
]
SITE = Path(__file__).resolve().parents[1] / "runs" / "nni-site"


def _log(msg: str) -> None:
    print(msg, flush=True)


def _import_nni():
    try:
        import nni  # noqa: F401
    except ImportError:
        site = SITE
        if not (site / "nni").is_dir():
            _log(f"installing nni=={NNI_VERSION} (--no-deps) into {site}")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--target",
                    str(site),
                    f"nni=={NNI_VERSION}",
                    *NNI_EXTRA,
                ],
                check=True,
            )
        sys.path.append(str(site))  # after the project's packages: theirs win
    import nni

    return nni


def nni_compress(prep, cfg, policy, seed: int):
    """The policy applied by NNI 3.0 (LevelPruner masks; QATQuantizer fused with the pruner for
    the quantisation-aware fine-tune), returned in autocompress's form: NNI's masks and trained
    weights under autocompress's weight parametrisation (per-channel codes at the same bits),
    8-bit input quantisers calibrated like every trial. Returns (model, NNI's own val acc)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.utils import parametrize

    nni = _import_nni()
    from nni.compression.pruning import LevelPruner
    from nni.compression.quantization import QATQuantizer
    from nni.compression.utils import TorchEvaluator

    from autocompress.compression.apply import CompressWeight, attach_input_quant, calibrate
    from autocompress.compression.batchnorm import correct_batchnorm
    from autocompress.policy import compressible_layers
    from autocompress.training import batches, evaluate, train

    ft = cfg.finetune
    bs = ft.batch_size or cfg.data.batch_size
    model = copy.deepcopy(prep.baseline.model)
    prune = [
        {"op_names": [n], "sparse_ratio": lp.sparsity} for n, lp in policy.items() if lp.sparsity
    ]
    quant = []
    for n, lp in policy.items():
        if lp.quantized:
            # Weights per output channel (the grid autocompress packs), inputs per tensor.
            base = {"op_names": [n], "quant_scheme": "symmetric"}
            quant.append(
                {
                    **base,
                    "target_names": ["weight"],
                    "quant_dtype": f"int{lp.bits}",
                    "granularity": "out_channel",
                }
            )
            quant.append({**base, "target_names": ["_input_"], "quant_dtype": "int8"})
    masks: dict = {}
    pruner = None
    calib = [x for x, _ in islice(batches(prep.data.train, bs, shuffle=True, seed=seed), 4)]
    if prune:
        pruner = LevelPruner(model, prune)
        _, got = pruner.compress()
        masks = {n: v["weight"].detach().clone() for n, v in got.items()}
        # What every autocompress trial gets before its fine-tune (a competent NNI user's
        # BatchNorm re-calibration): statistics moved by the shift the masks cause.
        correct_batchnorm(model, prep.baseline.model, calib)
    nni_val = None
    if quant:

        def training_step(batch, m):
            return F.cross_entropy(m(batch[0]), batch[1])

        def training_func(m, optimizers, step_fn, lr_schedulers, max_steps, max_epochs):
            opt = optimizers[0] if isinstance(optimizers, list) else optimizers
            sched = lr_schedulers[0] if isinstance(lr_schedulers, list) else lr_schedulers
            torch.manual_seed(seed)
            m.train()
            done, epoch = 0, 0
            while done < max_steps:
                for batch in batches(prep.data.train, bs, shuffle=True, seed=seed + epoch):
                    loss = step_fn(batch, m)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    done += 1
                    if done >= max_steps:
                        break
                epoch += 1
            m.eval()

        opt = nni.trace(torch.optim.SGD)(
            model.parameters(), lr=ft.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        sched = nni.trace(torch.optim.lr_scheduler.CosineAnnealingLR)(opt, T_max=ft.steps)
        ev = TorchEvaluator(
            training_func, opt, training_step, sched, dummy_input=prep.data.example_input(2)
        )
        if pruner is not None:
            q = QATQuantizer.from_compressor(pruner, quant, evaluator=ev)
        else:
            q = QATQuantizer(model, quant, ev)
        q.compress(ft.steps, None)
        model.eval()
        nni_val, _ = evaluate(model, prep.data.val)
        if pruner is not None:
            masks = {n: v["weight"].detach().clone() for n, v in pruner.get_masks().items()}
        # The weights NNI's model computes with (masked, fake-quantised, clamped to the tracked
        # range): the raw float weights drift outside that range during QAT.
        effective = {}
        with torch.no_grad():
            for name, layer in compressible_layers(model).items():
                wrapper = getattr(layer, "_nni_wrapper", None)
                ts = wrapper and wrapper.quantization_target_spaces.get("weight")
                if ts is not None:
                    effective[name] = wrapper.patch_params({"weight": ts.target})["weight"].clone()
        q.unwrap_model()
        with torch.no_grad():
            for name, w in effective.items():
                compressible_layers(model)[name].weight.copy_(w)
    elif pruner is not None:
        pruner.unwrap_model()
    layers = compressible_layers(model)
    for name, lp in policy.items():
        if lp.sparsity == 0.0 and not lp.quantized:
            continue
        layer = layers[name]
        mask = masks.get(name)
        mask = torch.ones_like(layer.weight, dtype=torch.bool) if mask is None else mask.bool()
        comp = CompressWeight(layer.weight, mask, lp)
        parametrize.register_parametrization(layer, "weight", comp)
        if lp.quantized:
            attach_input_quant(layer)
    calibrate(model, calib)
    if not quant:
        # Pruning only: NNI's masks, then the same fine-tune loop as every trial.
        train(model, prep.data.train, steps=ft.steps, lr=ft.lr, batch_size=bs, seed=seed,
              schedule="cosine")  # fmt: skip
    return model, nni_val
