"""Shared fixtures: a real model repository and real servers on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from optkit import build_repository
from optkit.service import Stack, create_model_server, launch_stack

TEST_MODELS = ("digits-mlp", "digits-sklearn", "synthetic", "synthetic-wide")
#: the ONNX models, apart (a 34 MB graph that every stack over ``repository`` would load)
ONNX_MODELS = ("digits-onnx", "digits-cnn")


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with the models the tests need (built once, seeded)."""
    root = tmp_path_factory.mktemp("models")
    build_repository(root, models=TEST_MODELS)
    return root


@pytest.fixture(scope="session")
def onnx_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-onnx (with the digits-sklearn it was converted from, and digits-mlp) and
    digits-cnn, built once."""
    root = tmp_path_factory.mktemp("onnx-models")
    build_repository(root, models=ONNX_MODELS)
    return root


@pytest.fixture(scope="module")
def onnx_stack(onnx_repository: Path) -> Iterator[Stack]:
    """A baseline stack (model server + gateway) serving the ONNX models, as real processes."""
    with launch_stack(None, repository=onnx_repository) as running:
        yield running


@pytest.fixture(scope="session")
def digits() -> tuple:
    """The held-out digits split every model was evaluated on."""
    from optkit import digits_split

    return digits_split()


@pytest.fixture(scope="module")
def stack(repository: Path) -> Iterator[Stack]:
    """A baseline stack (model server + gateway) as real processes."""
    with launch_stack(None, repository=repository) as running:
        yield running


@pytest.fixture
async def model_server(repository: Path) -> AsyncIterator[TestClient]:
    """The model server app in-process, on a real loopback socket."""
    client = TestClient(TestServer(create_model_server(repository), host="127.0.0.1"))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture(scope="session")
def browser_check() -> Callable[..., list]:
    """``optkit.lab.week._browser_check.check_reports``, but the test skips (saying why) where Playwright
    or Chromium is missing or Chromium does not start (`make chromium` installs it)."""
    from optkit.lab.week._browser_check import BrowserUnavailable, browser_problem, check_reports

    def check(paths: Any, **kwargs: Any) -> list:
        if browser_problem():
            pytest.skip(f"browser check skipped: {browser_problem()}")
        try:
            return check_reports(paths, **kwargs)
        except BrowserUnavailable as exc:
            pytest.skip(f"browser check skipped: {exc}")

    return check
