"""The `auto` defaults of `pixelwatch train`: the rule, what the model records, what it prints."""

import argparse
from pathlib import Path

import numpy as np
import pytest

from model_export.command import configure_parser, run
from model_export.defaults import MANY_IMAGES, ONE_KIND_LIKENESS, choose, code_for, likeness
from model_export.digits.protocol import BenchMode, digits, images, upscale
from model_export.pipeline import OptionError, TrainOptions, train_and_export
from model_fixtures import SEED_TEST, SEED_TRAIN
from service.scoring.images import ImageShape, Pixels, read_images
from service.scoring.model import load_model

EIGHT = ImageShape(8, 8)


def blank(count: int) -> Pixels:
    return np.zeros((count, EIGHT.size), dtype=np.float32)


def many_kinds(count: int = MANY_IMAGES) -> Pixels:
    """`count` gray digits of every kind but 3, in a seeded order."""
    _, target = digits()
    rows = np.random.default_rng(0).permutation(np.flatnonzero(target != 3))[:count]
    return np.asarray(images("gray")[rows], dtype=np.float32)


def one_kind(digit: int, mode: BenchMode = "gray", size: int = 8) -> Pixels:
    _, target = digits()
    return np.asarray(images(mode, size)[target == digit], dtype=np.float32)


def parse(data: Path, out: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    return parser.parse_args(["--data", str(data), "--out", str(out), "--no-progress", *argv])


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As many gray 8x8 digits of many kinds as the rule needs for its conv branch."""
    path = tmp_path_factory.mktemp("many") / "many.npy"
    np.save(path, many_kinds().reshape(MANY_IMAGES, 8, 8))
    return path


def test_small_sets_keep_the_course_model() -> None:
    for count in (1, 2, MANY_IMAGES - 1):
        choice = choose(many_kinds(count), EIGHT, "auto", {}, "auto")
        assert (choice.rule, choice.arch, choice.code, choice.metric) == (
            "course",
            "dense",
            4,
            "hamming",
        )
        assert dict(choice.arch_params) == {}  # nothing added: the course's own sizes
        assert choice.likeness is None  # not even measured: the course's demo is unchanged


def test_larger_sets_of_many_kinds_get_conv_a_code_growing_with_the_pixels_and_memory() -> None:
    choice = choose(many_kinds(), EIGHT, "auto", {}, "auto")
    assert (choice.rule, choice.arch, choice.code, choice.metric) == (
        "many-kinds",
        "conv",
        32,
        "memory",
    )
    assert choice.chosen == ("arch", "code", "metric")
    assert choice.likeness is not None and choice.likeness < ONE_KIND_LIKENESS
    codes = [code_for(ImageShape(side, side).size) for side in (4, 8, 16, 28, 100)]
    assert codes == sorted(codes) and codes[0] < codes[-1]
    big = np.random.default_rng(0).random((MANY_IMAGES, 784), dtype=np.float32)
    assert choose(big, ImageShape(28, 28), "auto", {}, "auto").code == code_for(784) > 32


@pytest.mark.parametrize("digit", range(10))
def test_larger_sets_of_one_kind_keep_the_course_model(digit: int) -> None:
    choice = choose(one_kind(digit), EIGHT, "auto", {}, "auto")
    assert len(one_kind(digit)) >= MANY_IMAGES
    assert (choice.rule, choice.arch, choice.code, choice.metric) == (
        "one-kind",
        "dense",
        4,
        "hamming",
    )
    assert choice.likeness is not None and choice.likeness >= ONE_KIND_LIKENESS


@pytest.mark.parametrize(("mode", "size"), [("gray", 8), ("binary", 8), ("gray", 28)])
def test_likeness_tells_one_digit_from_nine_in_either_mode_and_size(
    mode: BenchMode, size: int
) -> None:
    _, target = digits()
    pixels = images(mode, size)
    for digit in range(10):
        one, nine = pixels[target == digit], pixels[target != digit]
        assert likeness(one) >= ONE_KIND_LIKENESS > likeness(nine), (mode, size, digit)
        # With as few images of nine digits as one digit has, the rule still says many.
        assert likeness(nine[: len(one)]) < ONE_KIND_LIKENESS, (mode, size, digit)


def test_likeness_is_one_for_identical_images_and_falls_as_they_differ() -> None:
    same = np.tile(upscale(8)[:1], (5, 1))
    assert likeness(same) == pytest.approx(1.0)
    assert likeness(np.eye(4, dtype=np.float32)) == pytest.approx(0.5)  # no ink shared
    # Ink below 0.5 does not count, as in binary mode; no ink at all cannot be told apart.
    assert likeness(np.eye(4, dtype=np.float32) * 0.4) == 1.0
    assert likeness(blank(3)) == 1.0


def test_a_flag_given_always_wins_over_the_rule() -> None:
    broad = many_kinds(500)
    given_code = choose(broad, EIGHT, "auto", {"code": 12}, "auto")
    assert (given_code.arch, given_code.code, given_code.chosen) == ("conv", 12, ("arch", "metric"))
    given_arch = choose(broad, EIGHT, "vae", {}, "auto")  # its own sizes: no code chosen
    assert (given_arch.arch, given_arch.code, given_arch.chosen) == ("vae", 8, ("metric",))
    everything = choose(broad, EIGHT, "dense", {}, "cosine")
    assert everything.chosen == () and everything.metadata() is None
    assert everything.likeness is None  # nothing left to choose: not measured


def test_the_rule_uses_the_count_and_the_likeness_of_the_normal_images_only() -> None:
    broad = many_kinds()
    assert choose(broad, EIGHT, "auto", {}, "auto") == choose(broad, EIGHT, "auto", {}, "auto")
    assert choose(broad[:-1], EIGHT, "auto", {}, "auto").rule == "course"
    assert choose(one_kind(3), EIGHT, "auto", {}, "auto").rule == "one-kind"


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
    similar = likeness(np.load(many_images).reshape(MANY_IMAGES, -1))
    line = (
        f"arch conv, code 32, metric memory: for {MANY_IMAGES} images of many kinds "
        f"(likeness {similar:.3f} < 0.80)"
    )
    assert f"defaults   {line}" in printed
    meta = load_model(out).metadata
    assert meta.defaults is not None
    assert meta.defaults.model_dump() == {
        "rule": "many-kinds",
        "images": MANY_IMAGES,
        "chosen": ["arch", "code", "metric"],
        "arch": "conv",
        "code": 32,
        "metric": "memory",
        "likeness": pytest.approx(similar),
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
