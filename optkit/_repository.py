"""The model repository on disk and the models loaded from it.

::

    ModelRepository(root)
      names()/versions()     what is on disk (folders with a config.yaml)
      load(name)             read + build the latest version   -> READY or FAILED
      get(name, version)     the loaded model, or ModelNotFound / ModelNotReady
      unload(name)           drop it                            -> UNAVAILABLE

This is the *baseline* loader: ``load`` runs on the caller's thread, so on the
model server it blocks the serving loop for as long as reading the weights
takes. The background loader of the loading layer wraps the same object.
Model names are validated and resolved under ``root`` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ._metrics import counter, gauge
from ._exceptions import ModelLoadError, ModelNotFound, ModelNotReady, OptkitError
from ._models import CONFIG_FILE, Model, ModelConfig, load_model, validate_model_name

__all__ = ["ModelRepository", "RepositoryStatistics", "READY", "UNAVAILABLE", "LOADING", "FAILED"]

READY, UNAVAILABLE, LOADING, FAILED = "READY", "UNAVAILABLE", "LOADING", "FAILED"


@dataclass(frozen=True)
class RepositoryStatistics:
    """Counts of what the repository did."""

    loads: int = counter("models loaded")
    load_failures: int = counter("loads that failed")
    unloads: int = counter("models unloaded")
    ready: int = gauge("models ready now")
    last_load_s: float = gauge("seconds the latest load took")


class ModelRepository:
    """Models on disk under ``root`` and the ones loaded in memory."""

    def __init__(self, root: str | Path, *,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a folder")
        self._overrides = {k: dict(v) for k, v in (overrides or {}).items()}
        # name -> loaded model (latest version); name -> (state, reason)
        self._loaded: dict[str, Model] = {}
        self._state: dict[str, tuple[str, str]] = {}
        self._loads = self._failures = self._unloads = 0
        self._last_load_s = 0.0

    def __repr__(self) -> str:
        return f"<ModelRepository {self.root} [{len(self._loaded)} ready of {len(self.names())}]>"

    # -- what is on disk ------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and any((v / CONFIG_FILE).exists() for v in p.iterdir()
                                            if v.is_dir()))

    def versions(self, name: str) -> list[str]:
        validate_model_name(name)
        folder = self.root / name
        if not folder.is_dir():
            raise ModelNotFound(f"unknown model {name!r}")
        found = sorted((v.name for v in folder.iterdir()
                        if v.is_dir() and v.name.isdigit() and (v / CONFIG_FILE).exists()), key=int)
        if not found:
            raise ModelNotFound(f"model {name!r} has no versions")
        return found

    def version_dir(self, name: str, version: str | None = None) -> Path:
        """The folder of ``name``'s version (latest if None), inside ``root`` only."""
        versions = self.versions(name)
        if version is None:
            version = versions[-1]
        validate_model_name(name, version)
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        path = (self.root / name / version).resolve()
        if path.parent.parent != self.root:  # symlinks out of the repository
            raise ModelNotFound(f"model {name!r} resolves outside the repository")
        return path

    def config(self, name: str, version: str | None = None) -> ModelConfig:
        model = self._loaded.get(name)
        if model is not None and version in (None, model.config.version):
            return model.config
        return ModelConfig.read(self.version_dir(name, version))

    # -- what is loaded ---------------------------------------------------------
    def state(self, name: str) -> tuple[str, str]:
        """``(state, reason)`` of a model known on disk."""
        self.versions(name)
        return self._state.get(name, (UNAVAILABLE, "not loaded"))

    def get(self, name: str, version: str | None = None) -> Model:
        model = self._loaded.get(name)
        if model is not None and (version is None or version == model.config.version):
            return model
        state, reason = self.state(name)  # raises ModelNotFound for unknown names
        if version is not None:
            self.version_dir(name, version)
            if model is not None:
                raise ModelNotReady(f"model {name!r} version {version} is not the loaded one")
        raise ModelNotReady(f"model {name!r} is {state}" + (f": {reason}" if reason else ""))

    def read(self, name: str) -> Model:
        """Read and build the latest version of ``name`` (no state change)."""
        path = self.version_dir(name)
        try:
            return load_model(path, overrides=self._overrides.get(name))
        except OptkitError:
            raise
        except Exception as exc:  # a backend's own error while reading weights
            raise ModelLoadError(f"loading {name!r}: {exc!r}") from exc

    def install(self, name: str, model: Model, seconds: float) -> None:
        self._loaded[name] = model
        self._state[name] = (READY, "")
        self._loads += 1
        self._last_load_s = seconds

    def load(self, name: str) -> Model:
        """Load synchronously (the baseline): blocks the caller until READY or FAILED."""
        self.versions(name)
        self._state[name] = (LOADING, "")
        started = time.perf_counter()
        try:
            model = self.read(name)
        except OptkitError as exc:
            self._failures += 1
            self._state[name] = (FAILED, str(exc))
            raise
        self.install(name, model, time.perf_counter() - started)
        return model

    def unload(self, name: str) -> None:
        self.versions(name)
        if self._loaded.pop(name, None) is not None:
            self._unloads += 1
        self._state[name] = (UNAVAILABLE, "unloaded")

    def index(self, *, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository extension's index: one entry per model."""
        out = []
        for name in self.names():
            state, reason = self._state.get(name, (UNAVAILABLE, "not loaded"))
            if ready_only and state != READY:
                continue
            model = self._loaded.get(name)
            version = model.config.version if model else self.versions(name)[-1]
            out.append({"name": name, "version": version, "state": state, "reason": reason})
        return out

    def statistics(self) -> RepositoryStatistics:
        return RepositoryStatistics(self._loads, self._failures, self._unloads,
                                    len(self._loaded), self._last_load_s)
