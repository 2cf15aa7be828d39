"""The catalogue: every model ``make models`` builds, by name, and the builder of a repository.

::

    build_repository("build/models")      every name in MODEL_NAMES not built yet
    build_repository(root, models=["digits-cnn"], force=True)

The numpy and scikit-learn models come from ``_build.py``, the ONNX graphs from
``_build_onnx.py`` (imported only when one is asked for: it needs onnx and ONNX Runtime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from ._build import _build_synthetic, _build_variant, build_digits

__all__ = ["MODEL_NAMES", "build_repository"]


def _build_onnx(name: str, root: Path, seed: int) -> None:
    from . import _build_onnx as onnx_graphs  # imports onnx and ONNX Runtime: only when asked

    {"digits-onnx": onnx_graphs.build_digits_onnx,
     "digits-cnn": onnx_graphs.build_digits_cnn}[name](root, seed)


_BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "digits-mlp": build_digits,  # also writes digits-sklearn (same trained network)
    "digits-mlp-s": lambda r, s: _build_variant(r, "digits-mlp-s", s),
    "digits-mlp-m": lambda r, s: _build_variant(r, "digits-mlp-m", s),
    "digits-mlp-l": lambda r, s: _build_variant(r, "digits-mlp-l", s),
    "digits-mlp-xl": lambda r, s: _build_variant(r, "digits-mlp-xl", s),
    "digits-onnx": lambda r, s: _build_onnx("digits-onnx", r, s),
    "digits-cnn": lambda r, s: _build_onnx("digits-cnn", r, s),
    "synthetic": lambda r, s: _build_synthetic(r, "synthetic", 1),
    "synthetic-wide": lambda r, s: _build_synthetic(r, "synthetic-wide", 65536),
    "synthetic-slow": lambda r, s: _build_synthetic(r, "synthetic-slow", 1, load_cost_s=1.0,
                                                    weights_bytes=16 * 1024 * 1024),
}
MODEL_NAMES = ("digits-mlp", "digits-sklearn", *list(_BUILDERS)[1:])


def build_repository(root: str | Path, *, models: Iterable[str] | None = None, seed: int = 0,
                     force: bool = False) -> list[str]:
    """Build models into ``root``; returns the names built.

    Args:
        root: the repository folder (created if missing).
        models: names to build (default: all of :data:`MODEL_NAMES`).
        seed: seeds the data split, the training and random features.
        force: rebuild even if the model's config already exists.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    wanted = list(models) if models is not None else list(MODEL_NAMES)
    unknown = set(wanted) - set(MODEL_NAMES)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; known: {list(MODEL_NAMES)}")
    built: list[str] = []
    for name in wanted:
        key = "digits-mlp" if name == "digits-sklearn" else name
        if key in built:
            continue
        targets = ("digits-mlp", "digits-sklearn") if key == "digits-mlp" else (key,)
        if not force and all((root / t / "1" / "config.yaml").exists() for t in targets):
            continue
        _BUILDERS[key](root, seed)
        built.append(key)
    return built
