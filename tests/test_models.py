"""Real models: reproducible builds, checked accuracy, and a repository that stays inside its root."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

from optkit import (ModelLoadError, ModelNotFound, ModelNotReady, ModelRepository, ProtocolError,
                    build_repository, load_model)


def test_digits_models_meet_accuracy(repository: Path, digits: tuple) -> None:
    """Loaded from disk, the digits models score >= 0.95 on held-out data, as their config says."""
    _, xte, _, yte = digits
    for name in ("digits-mlp", "digits-sklearn"):
        model = load_model(repository / name / "1")
        acc = float((model.predict({"pixels": xte})["label"].ravel() == yte).mean())
        assert acc >= 0.95
        assert model.config.metrics["accuracy"] == pytest.approx(acc, abs=1e-3)


def test_numpy_mlp_equals_the_sklearn_artifact(repository: Path, digits: tuple) -> None:
    """digits-mlp (numpy) and digits-sklearn (joblib) are the same trained network."""
    _, xte, _, _ = digits
    numpy_out = load_model(repository / "digits-mlp" / "1").predict({"pixels": xte})
    pipe = joblib.load(repository / "digits-sklearn" / "1" / "model.joblib")
    np.testing.assert_allclose(numpy_out["probabilities"], pipe.predict_proba(xte), atol=1e-4)


def test_build_is_repeatable(tmp_path: Path, repository: Path) -> None:
    """The same seed gives the same weights."""
    build_repository(tmp_path, models=["digits-mlp"])
    a = np.load(tmp_path / "digits-mlp" / "1" / "model.npz")
    b = np.load(repository / "digits-mlp" / "1" / "model.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key])


def test_synthetic_model_outputs_and_overrides(repository: Path) -> None:
    """The synthetic model returns row sums at its configured width; overrides change its cost."""
    x = np.ones((3, 16), np.float32)
    model = load_model(repository / "synthetic-wide" / "1", overrides={"cost_b_us": 1.0})
    assert model.cost_b_us == 1.0  # type: ignore[attr-defined]
    y = model.predict({"x": x})["y"]
    assert y.shape == (3, 65536) and np.all(y == 16.0)


def test_unknown_model_name_raises(tmp_path: Path) -> None:
    """Building a model that does not exist names the known ones."""
    with pytest.raises(ValueError, match="known"):
        build_repository(tmp_path, models=["resnet"])


@pytest.mark.parametrize("name", ["../digits-mlp", "/etc/passwd", "a/b", "..", ".hidden", "x" * 200])
def test_repository_rejects_path_like_names(repository: Path, name: str) -> None:
    """Names that could escape the repository are rejected before touching the disk."""
    with pytest.raises(ProtocolError):
        ModelRepository(repository).load(name)


def test_repository_states(repository: Path) -> None:
    """UNAVAILABLE -> load -> READY -> unload -> UNAVAILABLE; unknown names are 404s."""
    repo = ModelRepository(repository)
    with pytest.raises(ModelNotReady):
        repo.get("digits-mlp")
    repo.load("digits-mlp")
    assert repo.state("digits-mlp")[0] == "READY"
    assert repo.get("digits-mlp").config.name == "digits-mlp"
    repo.unload("digits-mlp")
    assert repo.state("digits-mlp")[0] == "UNAVAILABLE"
    with pytest.raises(ModelNotFound):
        repo.get("no-such-model")
    with pytest.raises(ModelNotFound):
        repo.version_dir("digits-mlp", "7")


def test_broken_weights_fail_cleanly(tmp_path: Path, repository: Path) -> None:
    """A corrupt weights file is a ModelLoadError and the state says FAILED."""
    import shutil

    shutil.copytree(repository / "digits-mlp", tmp_path / "broken")
    (tmp_path / "broken" / "1" / "model.npz").write_bytes(b"not a zip")
    repo = ModelRepository(tmp_path)
    with pytest.raises(ModelLoadError):
        repo.load("broken")
    assert repo.state("broken")[0] == "FAILED"


def test_symlink_out_of_repository_is_refused(tmp_path: Path, repository: Path) -> None:
    """A version folder that is a symlink to elsewhere is not served."""
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "1").symlink_to(repository / "digits-mlp" / "1")
    with pytest.raises(ModelNotFound):
        ModelRepository(tmp_path).version_dir("evil")
