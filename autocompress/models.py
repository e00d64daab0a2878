"""Model registry (built-in models adapted to 28x28x1), user ``module:callable`` models,
checkpoint loading (``weights_only=True``)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, ModelError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory ``f(num_classes=..., in_channels=..., **kw)``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


@register_model("small_cnn")
class SmallCNN(nn.Module):
    """Four 3x3 conv blocks with BatchNorm, global average pooling, one linear layer (~95k
    parameters, ~92 % Fashion-MNIST test accuracy after 5 epochs)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 24) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w),
            *_conv_bn(w, 2 * w),
            nn.MaxPool2d(2),
            *_conv_bn(2 * w, 64 * w // 24),
            nn.MaxPool2d(2),
            *_conv_bn(64 * w // 24, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("tiny_cnn")
class TinyCNN(nn.Module):
    """A very small CNN for tests (a few thousand parameters)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


@register_model("resnet18")
def _resnet18(num_classes: int = 10, in_channels: int = 1, **kw: Any) -> nn.Module:
    """torchvision ResNet-18 for 28x28 inputs: 3x3 stride-1 stem, no max-pool."""
    from torchvision.models import resnet18

    m = resnet18(weights=None, num_classes=num_classes, **kw)
    m.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


@register_model("mobilenet_v2")
def _mobilenet_v2(num_classes: int = 10, in_channels: int = 1, **kw: Any) -> nn.Module:
    """torchvision MobileNetV2 for 28x28 inputs: stride-1 stem taking ``in_channels``."""
    from torchvision.models import mobilenet_v2

    m = mobilenet_v2(weights=None, num_classes=num_classes, **kw)
    stem = m.features[0][0]
    m.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, 1, 1, bias=False)
    return m


def model_names() -> tuple[str, ...]:
    """The registered model names (built-in and ``register_model``'s), now."""
    return tuple(sorted(_REGISTRY))


# Folders a ``module:callable`` is looked up in besides ``sys.path``: the folders of the
# experiment files loaded so far (``load_experiment`` adds them) and the working directory.
_SEARCH_DIRS: list[Path] = []


def add_search_dir(path: str | Path) -> None:
    """Let ``module:callable`` references find modules in ``path`` (an experiment's folder)."""
    p = Path(path).resolve()
    if p not in _SEARCH_DIRS:
        _SEARCH_DIRS.append(p)


def _try_import(module_name: str, what: str):
    """The module, or None when its top-level package is not found."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name.split(".")[0]:  # found; something it imports was not
            raise ConfigError(f"{what}: importing {module_name!r} failed: {exc}") from None
        return None
    except Exception as exc:  # noqa: BLE001 - user code
        raise ConfigError(
            f"{what}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from None


def _import(module_name: str, what: str):
    module = _try_import(module_name, what)
    if module is not None:
        return module
    top = module_name.split(".")[0]
    dirs = [*_SEARCH_DIRS, Path.cwd().resolve()]
    for d in dirs:
        if (d / f"{top}.py").is_file() or (d / top / "__init__.py").is_file():
            if str(d) not in sys.path:
                sys.path.insert(0, str(d))
            importlib.invalidate_caches()
            module = _try_import(module_name, what)
            if module is not None:
                return module
    where = ", ".join(str(d) for d in dict.fromkeys(dirs))
    raise ConfigError(
        f"{what}: cannot import module {module_name!r}: no {top}.py in {where} or on "
        f"sys.path; put it beside the experiment file or add its folder to PYTHONPATH"
    )


def load_callable(ref: str, *, what: str) -> Callable[..., Any]:
    """Import ``module:callable`` (the only code a config can load), looking in the experiment
    files' folders and the working directory as well as on ``sys.path``."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what}: {ref!r} is not of the form 'module:callable'")
    module = _import(module_name, what)
    obj = module
    for part in attr.split("."):
        if (obj := getattr(obj, part, None)) is None:
            raise ConfigError(f"{what}: module {module_name!r} has no attribute {attr!r}")
    if not callable(obj):
        raise ConfigError(f"{what}: {ref!r} is not callable")
    return obj


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a ``state_dict`` (weights only) into ``model``; mismatches raise ModelError."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: checkpoint is not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[1:2] or [str(exc).splitlines()[0]]
        raise ModelError(f"{path}: checkpoint does not fit the model: {first[0].strip()}") from None
    return model


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    kwargs: dict[str, Any] | None = None,
    checkpoint: str | Path | None = None,
) -> nn.Module:
    """Build a registered model or a user ``module:callable``; optionally load a checkpoint."""
    kwargs = dict(kwargs or {})
    if name in _REGISTRY:
        try:
            model = _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
        except TypeError as exc:
            raise ConfigError(f"model.kwargs: {exc}") from None
    else:
        fn = load_callable(name, what="model.name")
        try:
            model = fn(num_classes=num_classes, **kwargs)
        except TypeError:
            model = fn(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"model {name}: raised {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"model {name}: returned {type(model).__name__}, not a torch.nn.Module"
            )
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


@contextmanager
def evaluating(model: nn.Module, hooks: Iterable = ()) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, then back in its mode, with the ``hooks`` (handles
    of hooks registered for the block) removed."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        for h in hooks:
            h.remove()
        model.train(was)


def check_model_fits(
    model: nn.Module, x: torch.Tensor, num_classes: int | None, *, name: str
) -> None:
    """One forward pass on a batch of the data: a model that cannot take the data's input or
    whose output is not ``(batch, num_classes)`` raises ModelError naming what to change
    (``num_classes`` None: a task of the user's own, any output)."""
    try:
        with torch.no_grad(), evaluating(model):
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - user model
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(
            f"model {name} cannot take the data's input of shape {tuple(x.shape)} "
            f"({type(exc).__name__}: {first}); check model.name / model.kwargs against the "
            f"data (channels, image size)"
        ) from None
    if num_classes is None:
        return
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] != num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"model {name} returns {shape} for a batch of {len(x)}; expected "
            f"({len(x)}, {num_classes}) logits (model.num_classes: {num_classes})"
        )
