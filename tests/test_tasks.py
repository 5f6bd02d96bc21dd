"""Tasks other than classification (edgekit/tasks.py): a regression model written like a user's, trained briefly on
AV-digits-derived intensities, scored by `edgekit eval` with MAE, RMSE, Pearson's r and the concordance correlation
per modality subset; labels that keep their type; and one-line errors where labels or the task do not fit. The gates
(compress, export, validate) refuse other tasks until they gate by the task's own metric."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.metrics import average_precision_score

from edgekit.io import IOSpec
from edgekit.loading import save_model_package
from edgekit.tasks import TASKS, concordance, multilabel_scores, regression_scores

from .conformance_models import build_intensity
from .conftest import run_cli

HERE = Path(__file__).parent
IO = {"dims": {"batch": {"min": 1, "opt": 1, "max": 64}},
      "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 28, 28], "modality": "image"},
                 {"name": "audio", "dtype": "float32", "shape": ["batch", 1, 40, 98], "modality": "audio"}],
      "outputs": [{"name": "intensity", "dtype": "float32", "shape": ["batch", 1]}]}  # fmt: skip


def test_regression_metrics_are_scikit_learns_and_scipys():
    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    out = y + rng.normal(scale=0.3, size=200)
    s = regression_scores(out[:, None], y)
    assert s["mae"] == pytest.approx(np.abs(out - y).mean()) and s["rmse"] == pytest.approx(
        np.sqrt(((out - y) ** 2).mean())
    )
    assert s["pearson_r"] == pytest.approx(pearsonr(out, y).statistic)
    assert concordance(y, y) == pytest.approx(1.0) and concordance(y + 1, y) < 1  # a shift is not agreement
    assert regression_scores(np.zeros((200, 1)), y)["pearson_r"] == 0.0  # constant output: r undefined, not NaN


def test_multilabel_metrics():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    logits = np.array([[2.0, -1.0], [-1.0, 0.5], [0.3, 1.0], [-2.0, 0.2]])
    s = multilabel_scores(logits, y)
    assert s["map"] == pytest.approx(average_precision_score(y, logits, average="macro"))
    assert s["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 0 + 1))  # one false positive at logit 0.2


@pytest.fixture(scope="module")
def intensity_data(avdigits, tmp_path_factory) -> Path:
    """AV-digits with the digit's value as a float intensity in [0, 1] (image and audio only)."""
    out = tmp_path_factory.mktemp("intensity")
    for split in ("train", "val", "test"):
        with np.load(avdigits / f"{split}.npz") as z:
            np.savez(out / f"{split}.npz", image=z["image"], audio=z["audio"],
                     label=(z["label"] / 9).astype(np.float32))  # fmt: skip
    return out


@pytest.fixture(scope="module")
def intensity_package(intensity_data, tmp_path_factory) -> Path:
    """The user's regression model, trained for eight epochs with their own loop (MSE), saved as a package."""
    torch.manual_seed(0)
    model = build_intensity()
    with np.load(intensity_data / "train.npz") as z:
        image, audio, y = (torch.from_numpy(z[k]) for k in ("image", "audio", "label"))
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(8):
        for idx in torch.randperm(len(y)).split(64):
            loss = torch.nn.functional.mse_loss(model(image[idx], audio[idx]).squeeze(1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    src = tmp_path_factory.mktemp("pkg-src")
    shutil.copy(HERE / "conformance_models.py", src / "model.py")
    pkg = src / "intensity"
    save_model_package(model.eval(), IOSpec.from_dict(IO), pkg, factory="model.py:build_intensity", task="regression")
    shutil.copy(src / "model.py", pkg / "model.py")
    return pkg


def test_eval_scores_a_regression_model_by_its_task_per_modality_subset(intensity_package, intensity_data):
    r = run_cli("eval", "--model", str(intensity_package), "--data", str(intensity_data), "--json")
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["task"] == "regression" and set(out["subsets"]) == {"image+audio", "image", "audio"}
    for s in out["subsets"].values():
        assert set(s) == {"mae", "rmse", "pearson_r", "ccc"}
    with np.load(intensity_data / "test.npz") as z:
        y = z["label"]
    mean_guess = float(np.abs(y - y.mean()).mean())  # the MAE of predicting the average intensity
    assert out["mae"] < 0.7 * mean_guess and out["pearson_r"] > 0.6, out  # it learned (0.51x, r 0.8 seen)
    assert "warnings" not in out
    text = run_cli("eval", "--model", str(intensity_package), "--data", str(intensity_data))
    assert all(col in text.stdout for col in ("MAE", "RMSE", "Pearson r", "CCC", "regression"))


def test_the_gates_refuse_a_task_they_cannot_gate_yet(intensity_package, intensity_data, tmp_path):
    r = run_cli("export", "--model", str(intensity_package), "--target", "x86", "--out", str(tmp_path / "x"),
                "--data", str(intensity_data))  # fmt: skip
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgekit: error:")]
    assert r.code == 2 and len(errors) == 1 and r.stderr.rstrip().endswith(errors[0]), r.stderr
    assert "export gates classification models only so far; this model's task is regression" in errors[0]
    assert not (tmp_path / "x").exists()


def package_with(src: Path, dst: Path, **manifest: object) -> Path:
    import yaml

    shutil.copytree(src, dst)
    spec = yaml.safe_load((dst / "edgekit-model.yaml").read_text())
    (dst / "edgekit-model.yaml").write_text(yaml.safe_dump({**spec, **manifest}))
    return dst


def test_labels_or_a_task_that_do_not_fit_give_one_line(intensity_package, intensity_data, tmp_path):
    cases = [
        (package_with(intensity_package, tmp_path / "typo", task="regresion"), intensity_data,
         "unknown task 'regresion' (did you mean 'regression'?"),
        (package_with(intensity_package, tmp_path / "cls", task="classification"), intensity_data,
         "/test labels are float32 of shape [450]: task classification needs one class index"),
        (package_with(intensity_package, tmp_path / "ml", task="multilabel"), intensity_data,
         "/test labels are float32 of shape [450]: task multilabel needs a [samples, labels] array"),
    ]  # fmt: skip
    for pkg, data, fragment in cases:
        r = run_cli("eval", "--model", str(pkg), "--data", str(data))
        assert r.code == 2 and r.stderr.count("\n") == 1 and fragment in r.stderr, (pkg.name, r.stderr)
        assert r.stdout == ""


def test_a_one_column_classifier_is_flagged_not_scored_silently(intensity_package, tmp_path, avdigits):
    """The issue's report: a one-output model under task classification scored 'accuracy' from an argmax that is
    always 0. It still scores (the labels are classes), and says why the number means nothing."""
    pkg = package_with(intensity_package, tmp_path / "cls", task="classification")
    data = tmp_path / "digits"
    data.mkdir()
    with np.load(avdigits / "test.npz") as z:
        np.savez(data / "test.npz", image=z["image"], audio=z["audio"], label=z["label"])
    r = run_cli("eval", "--model", str(pkg), "--data", str(data))
    assert r.code == 0 and "warning: the model's output has one column under task classification" in r.stderr
    assert "predicts the same class for every sample" in r.stderr


def test_every_task_is_documented():
    doc = (HERE.parent / "docs" / "bring-your-own-model.md").read_text()
    assert all(f"`{name}`" in doc for name in TASKS)
