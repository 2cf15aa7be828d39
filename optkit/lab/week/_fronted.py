"""Which setting of the team's server sits behind optkit's gateway, and whether it is the same
model as the one measured alone (a day on the team's own service, notebook 06).

A server that batches on its own (MLServer's adaptive batching, Triton's dynamic batcher) serves
best alone with its batching on, and behind a gateway that merges with it off: the two are
different settings of one server. ``service_fronted`` picks the setting behind the gateway (a
parameter, else the service arm's ``fronted:`` key, else the service itself) and refuses what
cannot be told apart in a report; ``check_fronted`` starts both once and makes sure they serve
the same model with the same answers (``same_answers``), before any trial.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..._exceptions import ConfigError
from .._arms import ExternalArm, is_arm, load_arm

__all__ = ["service_fronted", "check_fronted", "same_answers"]


def service_fronted(alone: ExternalArm, fronted: str | Path | ExternalArm | None = None, *,
                    quick: bool = False, quick_service: str | Path | None = None
                    ) -> ExternalArm:
    """The server setting put behind optkit's gateway: ``fronted`` (an arm file) when given,
    else the ``fronted:`` key of the service's arm file, else the service itself.

    In quick mode with a ``quick_service`` the stand-in replaces the service, so a ``fronted``
    given for the real service is not used: the stand-in's own ``fronted:`` key (or itself).
    Refused (ConfigError, before any trial): a missing file, an optkit config, an arm with
    ``gateway:`` (the day puts the gateway in front itself), a ``fronted:`` key of its own
    (one level only), a setting named as the service is while differing from it (the report
    could not tell them apart), and one whose ready URL names another model than the
    service's. That both serve the same model with the same answers is checked by starting
    them: :func:`check_fronted`.
    """
    if quick and quick_service is not None:
        fronted = None
    source: Any = fronted if fronted is not None else alone.fronted
    if source is None:
        return alone
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise ConfigError(f"fronted arm file {source} does not exist")
        if not is_arm(source):
            raise ConfigError(f"fronted {source} is not an arm file (kind: command or kind: "
                              f"url): it names the setting of {alone.name} to put behind the "
                              f"gateway")
    arm = load_arm(source)
    if not isinstance(arm, ExternalArm):
        raise ConfigError(f"fronted {source} is not an arm file (kind: command or kind: url)")
    if arm.gateway is not None:
        raise ConfigError(f"fronted {source} already puts optkit's gateway in front (gateway:); "
                          f"the day puts it in front of the fronted setting itself: drop that key")
    if arm.fronted is not None:
        raise ConfigError(f"fronted {source} has a fronted: key of its own; name the setting "
                          f"behind the gateway directly")
    same = arm.replace(name=alone.name, description=alone.description, fronted=None) == \
        alone.replace(fronted=None)
    if same:
        return alone
    if arm.name == alone.name:
        raise ConfigError(f"fronted {source} is named {arm.name!r} like the service but is "
                          f"another setting: give it a name of its own (the report names both)")
    mine, theirs = _ready_model(alone), _ready_model(arm)
    if mine and theirs and mine != theirs:
        raise ConfigError(f"fronted {arm.name!r} is ready for model {theirs!r}, the service "
                          f"{alone.name!r} for {mine!r}: the two settings must serve the same "
                          f"model")
    return arm


def _ready_model(arm: ExternalArm) -> str | None:
    """The model a ready URL of the form ``.../v2/models/<m>/ready`` names, else None."""
    parts = arm.ready_url.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-1] == "ready" and parts[-3] == "models":
        return parts[-2]
    return None


def same_answers(a: Any, b: Any, *, rtol: float = 1e-4, atol: float = 1e-6) -> str | None:
    """None when two v2 answers to the same request agree (the same output names, datatypes
    and shapes; values equal, floats within ``rtol``/``atol``), else what differs."""
    import numpy as np

    def outputs(doc: Any) -> dict[str, Any]:
        return {o.get("name"): o for o in (doc or {}).get("outputs", []) if isinstance(o, dict)}

    mine, theirs = outputs(a), outputs(b)
    if set(mine) != set(theirs):
        return f"outputs {sorted(mine)} vs {sorted(theirs)}"
    for name, x in mine.items():
        y = theirs[name]
        for key in ("datatype", "shape"):
            if x.get(key) != y.get(key):
                return f"output {name!r}: {key} {x.get(key)} vs {y.get(key)}"
        try:
            u = np.asarray(x.get("data"), dtype=float).ravel()
            v = np.asarray(y.get("data"), dtype=float).ravel()
        except (TypeError, ValueError):
            if x.get("data") != y.get("data"):
                return f"output {name!r}: other values"
            continue
        if u.shape != v.shape or not np.allclose(u, v, rtol=rtol, atol=atol, equal_nan=True):
            return f"output {name!r}: other values"
    return None


def check_fronted(alone: ExternalArm, fronted: ExternalArm, *, workload: Any,
                  requests: int = 8, seed: int = 0, log_dir: str | Path | None = None
                  ) -> dict[str, Any]:
    """Start each setting once and make sure they serve the same model: every model of the
    workload answers its metadata on both, with the same name and (where both list them) the
    same inputs, and ``requests`` of the workload's bodies get the same answers from both
    (:func:`same_answers`). Nothing is started when ``fronted`` is the service itself.

    Returns what was checked (for results.json); raises ConfigError naming the difference.
    """
    import orjson

    from ...bench import Workload
    from ...bench._workload import InputSpec

    if fronted is alone:
        return {"checked": False, "why": "the same setting alone and behind the gateway"}
    wl = Workload.resolve(workload)
    wl = dataclasses.replace(wl, pool_size=max(1, requests))
    seen: dict[str, dict[str, Any]] = {}
    for arm in (alone, fronted):
        folder = Path(log_dir) / arm.name if log_dir else None
        with arm.launch(log_dir=folder) as stack:
            meta = {m: _get_json(f"{stack.url}/v2/models/{m}") for m in wl.models}
            missing = [m for m, doc in meta.items() if doc is None]
            if missing:
                raise ConfigError(f"{arm.name!r} does not serve {', '.join(missing)} (the "
                                  f"workload's models): the fronted setting must serve the same "
                                  f"model as the service alone")
            if not seen:
                signatures = {m: [InputSpec.from_metadata(i) for i in doc.get("inputs") or []]
                              for m, doc in meta.items()}
                pool = wl.build(signatures, seed=seed)
            answers = [_post_json(f"{stack.url}/v2/models/{pool.model_names[m]}/infer", body)
                       for m, body in zip(pool.models, pool.bodies)]
            seen[arm.name] = {"metadata": meta, "answers": answers}
    a, b = seen[alone.name], seen[fronted.name]
    for m in wl.models:
        x, y = a["metadata"][m], b["metadata"][m]
        if x.get("name") != y.get("name"):
            raise ConfigError(f"model {m}: {alone.name} names it {x.get('name')!r}, "
                              f"{fronted.name} {y.get('name')!r}")
        ins = [(i.get("name"), i.get("datatype"), i.get("shape")) for i in x.get("inputs") or []]
        theirs = [(i.get("name"), i.get("datatype"), i.get("shape"))
                  for i in y.get("inputs") or []]
        if ins and theirs and ins != theirs:
            raise ConfigError(f"model {m}: {alone.name} takes {ins}, {fronted.name} {theirs}: "
                              f"not the same model")
    for number, (x, y) in enumerate(zip(a["answers"], b["answers"])):
        if x[0] != 200 or y[0] != 200:
            raise ConfigError(f"request {number} of the workload: {alone.name} answered "
                              f"{x[0]}, {fronted.name} {y[0]}: both must serve it")
        differs = same_answers(orjson.loads(x[1]), orjson.loads(y[1]))
        if differs:
            raise ConfigError(f"request {number} of the workload: {alone.name} and "
                              f"{fronted.name} answer differently ({differs}): not the same "
                              f"model")
    return {"checked": True, "models": list(wl.models), "requests": len(a["answers"]),
            "alone": alone.name, "fronted": fronted.name}


def _get_json(url: str) -> dict[str, Any] | None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback arms
            return dict(json.loads(resp.read()))
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _post_json(url: str, body: bytes) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - loopback
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError as exc:
        return 0, str(exc).encode()
