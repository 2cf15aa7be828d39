"""The model repository on disk and the models loaded from it.

::

    ModelRepository(root)
      names()/versions()     what is on disk (folders with a config.yaml, or a lone model.onnx)
      read(name, version)    build a version (no state change; any thread)
      install(name, model)   make it the one served, atomically     -> READY
      load(name)             read + install the latest version      -> READY or FAILED
      get(name, version)     the loaded model, or ModelNotFound / ModelNotReady
      unload(name)           drop it                                -> UNAVAILABLE

One model per name is served at a time. States are kept per *version*
(``set_state`` is the one place they change), so while version 2 loads the
index shows ``1 READY`` and ``2 LOADING``; a version that replaced another
leaves it ``UNAVAILABLE``. States: ``UNAVAILABLE`` -> ``LOADING`` -> ``READY``
or ``FAILED`` (with the reason); ``READY`` -> ``UNLOADING`` (requests still in
flight) -> ``UNAVAILABLE``.

This is the *baseline* loader: ``load`` runs on the caller's thread, so on the
model server it blocks the serving loop for as long as reading the weights
takes. The background loader (:mod:`optkit.layers.loading`) drives the same
object: ``read`` in a worker, ``install``/``set_state`` on the loop.
Model names are validated and resolved under ``root`` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .._metrics import counter, gauge
from .._exceptions import ModelLoadError, ModelNotFound, ModelNotReady, OptkitError
from ._base import Model, ModelConfig, is_version_dir, validate_model_name
from ._load import load_model

__all__ = ["ModelRepository", "RepositoryStatistics", "READY", "UNAVAILABLE", "LOADING", "FAILED",
           "UNLOADING"]

READY, UNAVAILABLE, LOADING, FAILED = "READY", "UNAVAILABLE", "LOADING", "FAILED"
UNLOADING = "UNLOADING"


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
        # name -> the model served; (name, version) -> (state, reason); name -> version
        # whose state changed last (what "the model's state" means without a version)
        self._loaded: dict[str, Model] = {}
        self._state: dict[tuple[str, str], tuple[str, str]] = {}
        self._latest: dict[str, str] = {}
        self._loads = self._failures = self._unloads = 0
        self._last_load_s = 0.0

    @property
    def overrides(self) -> dict[str, dict[str, Any]]:
        """Per-model parameter overrides applied by :meth:`read`."""
        return self._overrides

    def __repr__(self) -> str:
        return f"<ModelRepository {self.root} [{len(self._loaded)} ready of {len(self.names())}]>"

    # -- what is on disk ------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and any(is_version_dir(v) for v in p.iterdir()
                                            if v.is_dir()))

    def versions(self, name: str) -> list[str]:
        validate_model_name(name)
        folder = self.root / name
        if not folder.is_dir():
            raise ModelNotFound(f"unknown model {name!r}")
        found = sorted((v.name for v in folder.iterdir()
                        if v.is_dir() and v.name.isdigit() and is_version_dir(v)), key=int)
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
    def state(self, name: str, version: str | None = None) -> tuple[str, str]:
        """``(state, reason)`` of a model known on disk (READY if one of its versions serves),
        or of one version of it."""
        self.versions(name)
        if version is None:
            if name in self._loaded:
                return READY, ""
            version = self._latest.get(name)
            if version is None:
                return UNAVAILABLE, "not loaded"
        return self._state.get((name, version), (UNAVAILABLE, "not loaded"))

    def set_state(self, name: str, version: str, state: str, reason: str = "") -> None:
        """The one place a version's state changes."""
        self._state[(name, version)] = (state, reason)
        self._latest[name] = version

    def loaded(self, name: str) -> Model | None:
        """The model served under ``name``, if any (no validation: a plain lookup)."""
        return self._loaded.get(name)

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

    def read(self, name: str, version: str | None = None) -> Model:
        """Read and build a version of ``name`` (latest if None); no state change."""
        path = self.version_dir(name, version)
        try:
            return load_model(path, overrides=self._overrides.get(name))
        except OptkitError:
            raise
        except Exception as exc:  # a backend's own error while reading weights
            raise ModelLoadError(f"loading {name!r}: {exc!r}") from exc

    def install(self, name: str, model: Model, seconds: float) -> Model | None:
        """Serve ``model`` under ``name`` from now on (one assignment: atomic on the loop).

        Returns the model it replaced, if any; a replaced *other* version becomes
        UNAVAILABLE.
        """
        old = self._loaded.get(name)
        self._loaded[name] = model
        version = model.config.version
        if old is not None and old.config.version != version:
            self.set_state(name, old.config.version, UNAVAILABLE, f"replaced by version {version}")
        self.set_state(name, version, READY)
        self._loads += 1
        self._last_load_s = seconds
        return old

    def fail(self, name: str, version: str, reason: str) -> None:
        """Record a failed load of ``version`` (a served model, if any, keeps serving)."""
        self._failures += 1
        served = self._loaded.get(name)
        if served is not None and served.config.version == version:
            reason += "; the copy loaded before keeps serving"
        self.set_state(name, version, FAILED, reason)

    def load(self, name: str) -> Model:
        """Load synchronously (the baseline): blocks the caller until READY or FAILED."""
        version = self.versions(name)[-1]
        self.set_state(name, version, LOADING)
        started = time.perf_counter()
        try:
            model = self.read(name, version)
        except OptkitError as exc:
            self.fail(name, version, str(exc))
            raise
        self.install(name, model, time.perf_counter() - started)
        return model

    def unload(self, name: str, *, draining: bool = False,
               reason: str = "unloaded") -> Model | None:
        """Stop serving ``name``; returns the model dropped, if one was loaded.

        ``draining``: requests still use it, so its state is UNLOADING until the
        caller says otherwise (``set_state``).
        """
        versions = self.versions(name)
        model = self._loaded.pop(name, None)
        if model is not None:
            self._unloads += 1
            version = model.config.version
        else:
            version = self._latest.get(name, versions[-1])
            if self._state.get((name, version), (UNAVAILABLE, ""))[0] == LOADING:
                return None  # a load under way goes on; its end decides the state
        if draining and model is not None:
            self.set_state(name, version, UNLOADING, "requests in flight finish first")
        else:
            self.set_state(name, version, UNAVAILABLE, reason)
        return model

    def index(self, *, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository extension's index: one entry per model version with a state
        (the latest version, UNAVAILABLE, for a model never loaded)."""
        out = []
        for name in self.names():
            seen = sorted((v for (n, v) in self._state if n == name), key=int)
            for version in seen or [self.versions(name)[-1]]:
                state, reason = self._state.get((name, version), (UNAVAILABLE, "not loaded"))
                if ready_only and state != READY:
                    continue
                out.append({"name": name, "version": version, "state": state, "reason": reason})
        return out

    def statistics(self) -> RepositoryStatistics:
        return RepositoryStatistics(self._loads, self._failures, self._unloads,
                                    len(self._loaded), self._last_load_s)
