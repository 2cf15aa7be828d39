"""The package face: everything public is re-exported from optkit and listed in __all__."""

from __future__ import annotations

import types

import optkit


def test_all_names_resolve() -> None:
    """Every name in optkit.__all__ can be imported from optkit."""
    for name in optkit.__all__:
        assert getattr(optkit, name) is not None, name


def test_all_is_complete() -> None:
    """No public, non-module name in optkit's namespace is missing from __all__."""
    public = {n for n, v in vars(optkit).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(optkit.__all__), public - set(optkit.__all__)


def test_private_modules_declare_all() -> None:
    """Each private module re-exported here says what it exports."""
    from optkit import _compare, _config, _exceptions, _metrics, _protocol, _repository, stats
    from optkit import layers, service
    from optkit.layers import pooling

    for module in (_compare, _config, _exceptions, _metrics, _protocol, _repository, stats,
                   layers, pooling, service):
        assert module.__all__, module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_exception_tree_is_rooted_and_mapped() -> None:
    """Every optkit exception derives from OptkitError and carries an HTTP status."""
    from optkit import _exceptions

    for name in _exceptions.__all__:
        cls = getattr(_exceptions, name)
        assert issubclass(cls, optkit.OptkitError) and 400 <= cls.status <= 599
    assert optkit.ProtocolError.status == 400 and optkit.ModelNotFound.status == 404
    assert optkit.UpstreamTimeout.status == 504 and optkit.ModelNotReady.status == 503


def test_the_suite_lists_only_modules_that_exist() -> None:
    """The root conftest's module lists (integration kind; run one at a time) name real test
    files: a renamed module would otherwise silently change kind or run beside others."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("optkit_root_conftest", root / "conftest.py")
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    existing = {p.stem for p in (root / "tests").rglob("test_*.py")}
    for listed in (conftest.INTEGRATION_MODULES, conftest.SERIAL_MODULES):
        assert listed and listed <= existing, sorted(listed - existing)
