"""The digits benchmark: its one-class splits, its verdicts, and a tiny end-to-end run."""

import json
from pathlib import Path

import numpy as np
import pytest

from model_export.digits.baselines import BASELINES
from model_export.digits.command import main
from model_export.digits.protocol import (
    BASELINE_METRIC,
    Protocol,
    ProtocolError,
    Run,
    digits,
    images,
    make_split,
    splits,
)
from model_export.digits.table import summarise, targets
from service.scoring.similarity import METRICS


def test_a_split_trains_on_one_class_and_tests_on_its_rest_and_every_other_image() -> None:
    _, target = digits()
    split = make_split(Protocol(), normal_class=3, repetition=1)
    assert set(target[split.train]) == {3}
    assert not set(split.train) & set(split.test)
    assert len(split.train) == int(0.7 * (target == 3).sum())
    assert set(split.train) | set(split.test) == set(range(len(target)))
    assert split.labels.tolist() == (target[split.test] != 3).astype(int).tolist()


def test_splits_are_seeded_and_repetitions_differ() -> None:
    first, again = splits(Protocol(repetitions=2)), splits(Protocol(repetitions=2))
    assert [s.train.tolist() for s in first] == [s.train.tolist() for s in again]
    by_repetition = {(s.normal_class, s.repetition): s.train.tolist() for s in first}
    assert by_repetition[(0, 0)] != by_repetition[(0, 1)]
    assert len({s.seed for s in first}) == len(first)


def test_binary_mode_thresholds_the_scaled_digits_at_one_half() -> None:
    gray, binary = images("gray"), images("binary")
    assert gray.shape == (1797, 64) and gray.min() >= 0.0 and gray.max() == 1.0
    assert np.array_equal(binary, (gray >= 0.5).astype(np.float32))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"archs": ("dense", "lstm")}, "--archs: unknown lstm"),
        ({"classes": (3, 11)}, "--classes must be digits 0 to 9"),
        ({"modes": ("color",)}, "--modes must be some of gray, binary, binary-as-gray"),
        ({"repetitions": 0}, "--repetitions must be >= 1"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ProtocolError, match="^" + message.replace("(", r"\(")):
        Protocol(**options)  # type: ignore[arg-type]  # deliberately wrong values


def fake_runs(auroc: dict[str, float]) -> list[Run]:
    """Two repetitions of one class; an architecture gets the same AUROC for every metric."""
    runs = []
    for method, value in auroc.items():
        baseline = method in BASELINES
        for metric in [BASELINE_METRIC] if baseline else list(METRICS):
            for repetition, shift in enumerate((-0.01, 0.01)):
                runs.append(Run(method, metric, "gray", 0, repetition, value + shift, 0.5, 1.0))
    return runs


def test_verdicts_compare_each_architecture_with_the_baselines() -> None:
    protocol = Protocol(archs=("dense", "conv"), modes=("gray",), classes=(0,), repetitions=2)
    baselines = {"PCA": 0.9, "IsolationForest": 0.8, "kNN (k=1)": 0.95, "kNN (k=5)": 0.93}
    rows = summarise(fake_runs({**baselines, "dense": 0.96, "conv": 0.85}), protocol)
    by_method = {(r.method, r.metric): r for r in rows}
    assert by_method[("dense", "cosine")].beats["gray"] == ["PCA", "IF", "kNN"]
    assert by_method[("conv", "hamming")].beats["gray"] == ["IF"]
    assert by_method[("PCA", BASELINE_METRIC)].cells["gray"].auroc == pytest.approx(0.9)
    assert by_method[("PCA", BASELINE_METRIC)].cells["gray"].spread == pytest.approx(0.0002**0.5)
    verdict = targets(rows, protocol)
    assert not verdict.met
    assert verdict.lines[1].startswith("conv beats PCA and IsolationForest: gray NO (hamming")
    assert verdict.lines[2].startswith("best in gray mode: dense/hamming 0.9600")
    assert verdict.lines[2].endswith("matches or beats kNN")


def test_a_tiny_run_writes_the_table_and_the_json(tmp_path: Path) -> None:
    argv = ["--archs", "dense,conv", "--classes", "1,7", "--repetitions", "2", "--epochs", "2"]
    assert main([*argv, "--jobs", "1", "--out", str(tmp_path)]) == 0

    table = (tmp_path / "table.md").read_text()
    assert table.startswith("| method | metric | gray AUROC | binary AUROC | fit s/run |")
    assert "| *PCA* | - |" in table and "| conv | cosine |" in table
    results = json.loads((tmp_path / "results.json").read_text())
    runs = results["runs"]
    assert len(runs) == (4 + 2 * 4) * 2 * 2 * 2  # methods x modes x classes x repetitions
    assert all(0.0 <= r["auroc"] <= 1.0 for r in runs)
    # Dice is a monotone function of Ruzicka (2r / (1 + r)): the same ranking, the same AUROC.
    auroc = {
        (r["method"], r["metric"], r["mode"], r["normal_class"], r["repetition"]): r["auroc"]
        for r in runs
    }
    for (method, metric, *rest), value in auroc.items():
        if metric == "dice":
            assert value == pytest.approx(auroc[(method, "ruzicka", *rest)])
    pca = [r["auroc"] for r in runs if r["method"] == "PCA" and r["mode"] == "gray"]
    assert min(pca) > 0.95  # the digits are easy for the classical baselines
    assert results["protocol"]["epochs"] == 2 and len(results["targets"]["lines"]) == 4
