"""The `auto` defaults of `pixelwatch train`: the rule, what the model records, what it prints."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from model_export.command import configure_parser, run
from model_export.defaults import MANY_IMAGES, choose, code_for
from model_export.pipeline import OptionError, TrainOptions, train_and_export
from model_fixtures import SEED_TEST, SEED_TRAIN
from service.scoring.images import ImageShape, read_images
from service.scoring.model import load_model

EIGHT = ImageShape(8, 8)


def parse(data: Path, out: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    return parser.parse_args(["--data", str(data), "--out", str(out), "--no-progress", *argv])


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As many gray 8x8 images as the rule needs for its larger-set branch."""
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("many") / "many.npy"
    np.save(path, rng.random((MANY_IMAGES, 8, 8), dtype=np.float32))
    return path


def test_small_sets_keep_the_course_model() -> None:
    for count in (1, 2, MANY_IMAGES - 1):
        choice = choose(count, EIGHT, "auto", {}, "auto")
        assert (choice.rule, choice.arch, choice.code, choice.metric) == (
            "course",
            "dense",
            4,
            "hamming",
        )
        assert dict(choice.arch_params) == {}  # nothing added: the course's own sizes


def test_larger_sets_get_conv_a_code_growing_with_the_pixels_and_the_memory_metric() -> None:
    choice = choose(MANY_IMAGES, EIGHT, "auto", {}, "auto")
    assert (choice.rule, choice.arch, choice.code, choice.metric) == (
        "many-images",
        "conv",
        32,
        "memory",
    )
    assert choice.chosen == ("arch", "code", "metric")
    codes = [code_for(ImageShape(side, side).size) for side in (4, 8, 16, 28, 100)]
    assert codes == sorted(codes) and codes[0] < codes[-1]
    assert choose(5000, ImageShape(28, 28), "auto", {}, "auto").code == code_for(784) > 32


def test_a_flag_given_always_wins_over_the_rule() -> None:
    given_code = choose(500, EIGHT, "auto", {"code": 12}, "auto")
    assert (given_code.arch, given_code.code, given_code.chosen) == ("conv", 12, ("arch", "metric"))
    given_arch = choose(500, EIGHT, "vae", {}, "auto")  # its own sizes: no code chosen
    assert (given_arch.arch, given_arch.code, given_arch.chosen) == ("vae", 8, ("metric",))
    everything = choose(500, EIGHT, "dense", {}, "cosine")
    assert everything.chosen == () and everything.metadata() is None


def test_the_rule_counts_images_not_pixels_or_values() -> None:
    # The choice depends on nothing but the count and the size: no anomalies, real or
    # synthetic, and no pixel value enters it.
    assert choose(MANY_IMAGES, EIGHT, "auto", {}, "auto") == choose(
        MANY_IMAGES, EIGHT, "auto", {}, "auto"
    )
    assert choose(MANY_IMAGES - 1, EIGHT, "auto", {}, "auto").rule == "course"


def test_the_course_model_is_what_it_was_with_the_defaults(tmp_path: Path) -> None:
    auto = train_and_export(
        SEED_TRAIN, tmp_path / "auto.onnx", TrainOptions(arch="auto", metric="auto", epochs=60)
    )
    course = train_and_export(SEED_TRAIN, tmp_path / "course.onnx", TrainOptions(epochs=60))
    test = read_images(SEED_TEST, EIGHT).pixels
    scored = {n: load_model(tmp_path / f"{n}.onnx").score(test) for n in ("auto", "course")}
    assert np.array_equal(scored["auto"].reconstruction, scored["course"].reconstruction)
    for metric, values in scored["course"].scores.items():
        assert np.array_equal(scored["auto"].scores[metric], values), metric
    assert auto.metadata.arch_params == course.metadata.arch_params
    assert (auto.metadata.metric, auto.metadata.threshold) == ("hamming", 0.6)
    assert auto.metadata.defaults is not None and auto.metadata.defaults.rule == "course"
    assert course.metadata.defaults is None  # every setting given: nothing was chosen


def test_train_prints_and_records_what_the_defaults_chose(
    many_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    assert run(parse(many_images, out, "--mode", "gray", "--epochs", "2")) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"trained a conv autoencoder on {MANY_IMAGES - 10} images")
    line = f"arch conv, code 32, metric memory: for {MANY_IMAGES} images ({MANY_IMAGES} or more)"
    assert f"defaults   {line}" in printed
    meta = load_model(out).metadata
    assert meta.defaults is not None
    assert meta.defaults.model_dump() == {
        "rule": "many-images",
        "images": MANY_IMAGES,
        "chosen": ["arch", "code", "metric"],
        "arch": "conv",
        "code": 32,
        "metric": "memory",
    }
    assert (meta.arch, meta.arch_params["code"], meta.metric) == ("conv", 32, "memory")
    assert meta.memory.code_size == 32


def test_with_every_choice_given_nothing_is_recorded_or_printed(
    many_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.onnx"
    argv = ("--mode", "gray", "--epochs", "2", "--arch", "dense", "--metric", "ruzicka")
    assert run(parse(many_images, out, *argv)) == 0
    assert not any(line.startswith("defaults") for line in capsys.readouterr().out.splitlines())
    meta = load_model(out).metadata
    assert (meta.defaults, meta.arch, meta.metric) == (None, "dense", "ruzicka")


def test_a_parameter_the_chosen_architecture_lacks_is_refused_before_training(
    many_images: Path, tmp_path: Path
) -> None:
    args = parse(many_images, tmp_path / "m.onnx", "--hidden", "8")
    with pytest.raises(OptionError, match=r"^--arch auto chose conv: conv: unknown parameter"):
        run(args)
