"""One reader for every YAML file optkit takes (optkit/_schema.py): a service config, an arm
file and a workload file refuse the same faults the same way, naming the file or the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from optkit import BenchError, ConfigError, ServiceConfig
from optkit._schema import Document, read_mapping
from optkit.bench import Workload
from optkit.lab import load_arm

ARM = {"kind": "command", "name": "stub", "command": "prog --port {port}",
       "url": "http://127.0.0.1:{port}"}


#: file kind -> (a function reading a path, the exception it raises)
READERS = {"config": (ServiceConfig.from_yaml, ConfigError), "arm": (load_arm, ConfigError),
           "workload": (Workload.from_yaml, BenchError)}


@pytest.mark.parametrize("kind", ["config", "arm", "workload"])
@pytest.mark.parametrize("text, words", [("a: [1, 2\n", "cannot read"),
                                         ("- 1\n- 2\n", "must be a mapping at the top level")])
def test_a_broken_file_is_an_error_naming_it(tmp_path: Path, kind: str, text: str,
                                             words: str) -> None:
    """Bad YAML or a top level that is not a mapping: the reader's own error, naming the
    file, never a yaml traceback (a config or an arm file with bad YAML used to raise one)."""
    read, error = READERS[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    with pytest.raises(error, match=words) as caught:
        read(path)  # type: ignore[operator]
    assert str(path) in str(caught.value)


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    """An unreadable file is named in the reader's error class."""
    with pytest.raises(BenchError, match="cannot read workload .*nowhere.yaml"):
        read_mapping(tmp_path / "nowhere.yaml", what="workload", error=BenchError)
    assert read_mapping(_write(tmp_path / "empty.yaml", ""), what="config") == {}


@pytest.mark.parametrize("build, error", [
    (lambda: ServiceConfig.from_dict({"pooling": {"colour": 1}}), ConfigError),
    (lambda: ServiceConfig.from_dict({"colour": 1}), ConfigError),
    (lambda: load_arm({**ARM, "colour": 1}), ConfigError),
    (lambda: Workload.from_dict({"colour": 1}), BenchError),
    (lambda: Workload.from_dict({"rows": {"values": [1], "colour": 1}}), BenchError),
])
def test_an_unknown_key_is_named_with_the_known_ones(build, error) -> None:
    """Every file kind: ``<where>: unknown key(s) colour (known: ...)``."""
    with pytest.raises(error, match=r"unknown key\(s\) colour \(known: ") as caught:
        build()
    assert "colour" in str(caught.value)


def test_getters_check_without_coercing() -> None:
    """A value of the wrong kind is refused with the key's full name; nothing is converted."""
    doc = Document({"n": "10", "f": 2.7, "b": 1, "s": "", "l": "x", "m": {"k": [1]}},
                   where="thing 'x'", known={"n", "f", "b", "s", "l", "m", "absent"})
    for call, words in [(lambda: doc.number("n"), "thing 'x': n must be a number, got '10'"),
                        (lambda: doc.integer("f"), "f must be an integer, got 2.7"),
                        (lambda: doc.boolean("b"), "b must be true or false, got 1"),
                        (lambda: doc.text("s"), "s must be a non-empty string"),
                        (lambda: doc.sequence("l"), "l must be a list, got 'x'"),
                        (lambda: doc.choice("l", ("a", "b")), "l must be one of a, b"),
                        (lambda: doc.text("absent"), "thing 'x': absent is missing"),
                        (lambda: doc.within("m", doc.get("m"), known={"k"}).integer("k"),
                         r"thing 'x': m\.k must be an integer, got \[1\]")]:
        with pytest.raises(ConfigError, match=words):
            call()
    assert doc.number("absent", 1.5) == 1.5 and doc.strings("l", split=str.split) == ("x",)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
