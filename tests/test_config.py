"""The service config: baseline defaults, YAML mapping, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from optkit import ConfigError, ServiceConfig, load_config


def test_default_is_the_naive_baseline() -> None:
    """Every layer is off by default, and servers bind loopback."""
    cfg = ServiceConfig()
    assert not cfg.pooling.enabled and not cfg.batching.enabled and not cfg.streaming.enabled
    assert cfg.loading.mode == "sync" and cfg.server.host == "127.0.0.1"


def test_yaml_maps_onto_sections(tmp_path: Path) -> None:
    """A YAML file's sections become the dataclasses; its stem becomes the name."""
    path = tmp_path / "pooled.yaml"
    path.write_text("pooling:\n  enabled: true\n  limit: 8\nloading:\n  models: [digits-mlp]\n")
    cfg = load_config(path)
    assert cfg.name == "pooled" and cfg.pooling.limit == 8 and cfg.loading.models == ("digits-mlp",)
    assert ServiceConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("data, key", [
    ({"pooling": {"limt": 3}}, "limt"),
    ({"batchng": {}}, "batchng"),
    ({"pooling": {"limit": 0}}, "pooling.limit"),
    ({"server": {"max_body_bytes": -1}}, "server.max_body_bytes"),
    ({"loading": {"mode": "lazy"}}, "loading.mode"),
    ({"batching": {"max_delay_ms": "soon"}}, "batching.max_delay_ms"),
    ({"pooling": [1, 2]}, "pooling"),
    ({"pooling": {"enabled": "false"}}, "pooling.enabled"),
    ({"pooling": {"limit": 2.5}}, "pooling.limit"),
    ({"loading": {"models": "digits-mlp"}}, "loading.models"),
    ({"batching": {"executor": "gpu"}}, "batching.executor"),
    ({"batching": {"max_concurrent_batches": 0}}, "batching.max_concurrent_batches"),
    ({"streaming": {"write_timeout_s": 0}}, "streaming.write_timeout_s"),
    ({"streaming": {"sub_batch_rows": 2.0}}, "streaming.sub_batch_rows"),
    ({"streaming": {"max_stream_rows": 0}}, "streaming.max_stream_rows"),
    ({"streaming": {"sub_batch_rows": 64, "max_stream_rows": 8}}, "streaming.max_stream_rows"),
    ({"loading": {"mode": "background", "workers": 0}}, "loading.workers"),
    ({"loading": {"mode": "background", "executor": "gpu"}}, "loading.executor"),
    ({"loading": {"memory_budget_bytes": -1}}, "loading.memory_budget_bytes"),
    ({"loading": {"lazy": True}}, "loading.lazy"),
    ({"loading": {"mode": "background", "lazy": True, "lazy_wait_s": -1}}, "loading.lazy_wait_s"),
])
def test_bad_values_name_the_parameter(data: dict, key: str) -> None:
    """Unknown keys, wrong types, out-of-range values and layers not built yet raise ConfigError."""
    with pytest.raises(ConfigError, match=key):
        ServiceConfig.from_dict(data)


def test_every_experiment_config_loads() -> None:
    """The configs shipped in experiments/ are valid."""
    folder = Path(__file__).parent.parent / "experiments"
    paths = sorted(folder.glob("*.yaml"))
    assert paths, "experiments/ holds no configs"
    for path in paths:
        if path.name.startswith("workload"):
            continue
        assert isinstance(load_config(path), ServiceConfig)
