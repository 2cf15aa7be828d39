"""The package faces: every public name re-exported from the part that defines it, one list of
them per face, and the import direction of the three parts."""

from __future__ import annotations

import ast
import importlib
import types
from pathlib import Path

import pytest

import optkit

ROOT = Path(optkit.__file__).resolve().parent

#: the faces that import eagerly: their namespace is what they re-export
EAGER_FACES = ("optkit.v2", "optkit.models", "optkit.layers", "optkit.service", "optkit.lab",
               "optkit.lab.week")
#: the faces that import on first use, from one table (``_FACE``/``_MODULES``)
LAZY_FACES = ("optkit", "optkit.bench")


def typing_imports(path: Path, package: str) -> dict[str, str]:
    """name -> where the ``if TYPE_CHECKING:`` block of ``path`` imports it from: the module
    itself for a name that is a module, else the module it is taken from."""
    tree = ast.parse(path.read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and "TYPE_CHECKING" in node.test.id)
    found: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.dump(node)
        source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
        for alias in node.names:
            value = getattr(importlib.import_module(source), alias.name)
            found[alias.asname or alias.name] = (value.__name__ if isinstance(value, types.ModuleType)
                                                 else source)
    return found


def lazy_table(face: types.ModuleType) -> dict[str, str]:
    """name -> the absolute module the face imports for it."""
    table = {}
    for name, target in face._LAZY.items():
        module = target[0] if isinstance(target, tuple) else target
        table[name] = importlib.util.resolve_name(module, face.__name__)
    return table


@pytest.mark.parametrize("face_name", LAZY_FACES)
def test_a_lazy_face_keeps_one_list_of_names(face_name: str) -> None:
    """__all__ is the table, and the typing block (what editors and type checkers see)
    imports every name of the table, the same object the face gives, and nothing else."""
    face = importlib.import_module(face_name)
    table = lazy_table(face)
    assert set(face.__all__) - {"__version__"} == set(table)
    typed = typing_imports(Path(face.__file__), face_name)
    assert set(typed) == set(table), (sorted(set(table) - set(typed)),
                                      sorted(set(typed) - set(table)))
    for name, module in table.items():
        value = getattr(face, name)
        if isinstance(value, types.ModuleType):
            assert value.__name__ == module == typed[name], (name, typed[name], module)
        else:
            assert getattr(importlib.import_module(typed[name]), name) is value, name


@pytest.mark.parametrize("face_name", LAZY_FACES + EAGER_FACES)
def test_every_listed_name_resolves(face_name: str) -> None:
    """Every name in a face's __all__ can be imported from it."""
    face = importlib.import_module(face_name)
    assert face.__all__
    for name in face.__all__:
        assert getattr(face, name) is not None, f"{face_name}.{name}"


@pytest.mark.parametrize("face_name", EAGER_FACES)
def test_an_eager_face_lists_everything_it_holds(face_name: str) -> None:
    """No public, non-module name in an eager face's namespace is missing from __all__, and
    each re-exported name is in the __all__ of the module that defines it."""
    face = importlib.import_module(face_name)
    public = {n for n, v in vars(face).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(face.__all__), sorted(public - set(face.__all__))
    for name in public:
        value = getattr(face, name)
        home = getattr(value, "__module__", None)
        if home and home.startswith("optkit.") and home != face_name:
            module = importlib.import_module(home)
            assert name in getattr(module, "__all__", ()), f"{home}.{name} is not in its __all__"


def test_private_modules_declare_all() -> None:
    """Each module a face re-exports from says what it exports, and has it."""
    modules = set()
    for face_name in LAZY_FACES:
        face = importlib.import_module(face_name)
        modules |= {m for m in lazy_table(face).values()}
    for name in sorted(modules):
        module = importlib.import_module(name)
        assert module.__all__, name
        for attr in module.__all__:
            assert hasattr(module, attr), f"{name}.{attr}"


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

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("optkit_root_conftest", root / "conftest.py")
    assert spec is not None and spec.loader is not None
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    existing = {p.stem for p in (root / "tests").rglob("test_*.py")}
    for listed in (conftest.INTEGRATION_MODULES, conftest.SERIAL_MODULES):
        assert listed and listed <= existing, sorted(listed - existing)
