"""PNG and JPEG files as data: folders, glob patterns, conversion, bad files, and no Pillow."""

import argparse
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

import service
from model_export import TrainOptions, train_and_export
from model_export.command import configure_parser, run
from service.errors import InputError
from service.samples import SEED_TEST, SEED_TRAIN
from service.scoring.images import ImageShape, read_images
from service.scoring.model import load_model

SHAPE = ImageShape(8, 8)


def ink_to_png(pixels: NDArray[np.floating], path: Path, shape: ImageShape = SHAPE) -> Path:
    """Save [0, 1] ink values (1 = black, as the course's X) as an 8-bit grayscale PNG."""
    gray = np.rint(255.0 * (1.0 - np.asarray(pixels).reshape(shape.height, shape.width)))
    Image.fromarray(gray.astype(np.uint8), mode="L").save(path)
    return path


def course_pngs(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, pixels in enumerate(read_images(source, SHAPE).pixels):
        ink_to_png(pixels, folder / f"img{index:02d}.png")
    return folder


def pixelwatch(*args: str, block_pillow: bool = False) -> subprocess.CompletedProcess[str]:
    prelude = "import sys; sys.modules['PIL'] = None; " if block_pillow else ""
    code = prelude + "from service.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", "import sys; " + code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_folder_of_pngs_reads_in_name_order_with_dark_as_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 8, 8)).astype(np.uint8)
    for name, image in zip(("b.png", "a.png", "c.PNG"), images, strict=True):
        Image.fromarray(image, mode="L").save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    read = read_images(tmp_path, SHAPE)
    assert read.labels == ("a.png", "b.png", "c.PNG")
    assert [p.name for p in read.files] == ["a.png", "b.png", "c.PNG"]
    expected = (255.0 - images[[1, 0, 2]].reshape(3, 64).astype(np.float32)) / 255.0
    np.testing.assert_allclose(read.pixels, expected, atol=1e-6)
    assert read.pixels.dtype == np.float32


def test_larger_colour_images_are_grayscaled_and_shrunk_by_area_averaging(tmp_path: Path) -> None:
    big = np.full((32, 32, 3), 255, dtype=np.uint8)
    big[:16, :16] = 0  # the top-left quarter is black
    big[16:, 16:, 0] = 0  # the bottom-right quarter is cyan (no red)
    Image.fromarray(big, mode="RGB").save(tmp_path / "big.png")
    [pixels] = read_images(tmp_path / "big.png", SHAPE).pixels.reshape(1, 8, 8)
    assert (pixels[:4, :4] == 1.0).all() and (pixels[:4, 4:] == 0.0).all()
    luma = np.asarray(Image.new("RGB", (1, 1), (0, 255, 255)).convert("L"), dtype=np.float32)
    cyan = 1.0 - float(luma[0, 0]) / 255.0
    np.testing.assert_allclose(pixels[4:, 4:], cyan, atol=1e-6)


def test_small_images_are_enlarged_to_the_model_size(tmp_path: Path) -> None:
    Image.new("L", (2, 2), 0).save(tmp_path / "tiny.png")
    assert read_images(tmp_path / "tiny.png", SHAPE).pixels.tolist() == [[1.0] * 64]


def test_transparent_background_counts_as_white_paper(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)  # transparent black everywhere...
    rgba[2:6, 2:6] = (0, 0, 0, 255)  # ...but an opaque black square
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    pixels = read_images(tmp_path / "alpha.png", SHAPE).pixels.reshape(8, 8)
    assert pixels[2:6, 2:6].min() == 1.0 and pixels.sum() == 16.0


def test_jpeg_files_are_read(tmp_path: Path) -> None:
    square = np.zeros((8, 8))
    square[2:6, 2:6] = 1.0
    gray = (255 * (1 - square)).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "square.jpg", quality=95)
    pixels = read_images(tmp_path / "square.jpg", SHAPE).pixels.reshape(8, 8)
    np.testing.assert_allclose(pixels, square, atol=0.15)  # JPEG is lossy


def test_binarize_maps_values_at_or_above_the_cut_to_one(tmp_path: Path) -> None:
    Image.fromarray(np.asarray([[0, 127], [128, 255]], dtype=np.uint8), mode="L").save(
        tmp_path / "g.png"
    )
    shape = ImageShape(2, 2)
    assert read_images(tmp_path / "g.png", shape, binarize=0.5).pixels.tolist() == [
        [1.0, 1.0, 0.0, 0.0]
    ]


def test_a_glob_pattern_takes_the_files_it_matches(tmp_path: Path) -> None:
    for name in ("x1.png", "x2.png", "y1.png"):
        Image.new("L", (8, 8), 255).save(tmp_path / name)
    read = read_images(str(tmp_path / "x*.png"), SHAPE)
    assert [Path(label).name for label in read.labels] == ["x1.png", "x2.png"]


def test_a_bad_file_is_one_error_naming_it_unless_skipped(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 0).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (tmp_path / "fake.jpg").write_text("hello")
    with pytest.raises(InputError) as caught:
        read_images(tmp_path, SHAPE)
    assert str(caught.value).startswith(f"{tmp_path / 'broken.png'}:image: ")
    read = read_images(tmp_path, SHAPE, skip_bad=True)
    assert read.labels == ("good.png",)
    assert [line.split(":image: ")[0] for line in read.skipped] == [
        str(tmp_path / "broken.png"),
        str(tmp_path / "fake.jpg"),
    ]
    assert read.skipped[1].endswith(":image: not a PNG or JPEG image")


def test_folders_and_patterns_without_images_say_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError) as caught:
        read_images(tmp_path / "empty", SHAPE)
    assert (
        str(caught.value) == f"{tmp_path / 'empty'}:folder: contains no .png, .jpg or .jpeg files"
    )
    with pytest.raises(InputError, match=r":pattern: matches no files$"):
        read_images(str(tmp_path / "*.png"), SHAPE)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_text("no")
    with pytest.raises(InputError, match=r"bad:files: none of 1 files is a readable image$"):
        read_images(tmp_path / "bad", SHAPE, skip_bad=True)


def test_the_course_images_as_pngs_score_exactly_as_the_text_file(
    seed_model_path: Path, tmp_path: Path
) -> None:
    folder = course_pngs(SEED_TEST, tmp_path / "test")
    model = str(seed_model_path)
    from_text = pixelwatch("score", "--model", model, "--json", str(SEED_TEST))
    from_pngs = pixelwatch("score", "--model", model, "--json", str(folder))
    assert from_pngs.returncode == 0, from_pngs.stderr
    text_rows = [json.loads(line) for line in from_text.stdout.splitlines()]
    png_rows = [json.loads(line) for line in from_pngs.stdout.splitlines()]
    assert [r["where"] for r in png_rows] == [f"img{i:02d}.png" for i in range(4)]
    assert [r["anomaly"] for r in png_rows] == [r["anomaly"] for r in text_rows]
    assert [r["anomaly"] for r in png_rows] == [False, False, True, False]  # the corners
    assert [r["scores"] for r in png_rows] == [r["scores"] for r in text_rows]


def test_training_on_the_course_pngs_gives_the_text_files_model(tmp_path: Path) -> None:
    folder = course_pngs(SEED_TRAIN, tmp_path / "train")
    options = TrainOptions(epochs=100, report=False)
    from_text = train_and_export(SEED_TRAIN, tmp_path / "text.onnx", options)
    from_pngs = train_and_export(folder, tmp_path / "pngs.onnx", options)
    probe = read_images(SEED_TEST, SHAPE).pixels
    text_scores = load_model(from_text.model_path).score(probe)
    png_scores = load_model(from_pngs.model_path).score(probe)
    np.testing.assert_array_equal(png_scores.reconstruction, text_scores.reconstruction)
    # The digest covers the files read: names and contents.
    assert from_pngs.metadata.training_sha256 != from_text.metadata.training_sha256
    (folder / "img01.png").rename(folder / "img09.png")
    renamed = train_and_export(folder, tmp_path / "renamed.onnx", options)
    assert renamed.metadata.training_sha256 != from_pngs.metadata.training_sha256


def test_train_reads_a_glob_and_lists_the_files_it_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = course_pngs(SEED_TRAIN, tmp_path / "train")
    (folder / "img99.png").write_bytes(b"garbage")
    parser = argparse.ArgumentParser(prog="pixelwatch train")
    configure_parser(parser)
    out = tmp_path / "m.onnx"
    argv = ["--data", str(folder / "*.png"), "--out", str(out), "--epochs", "5", "--skip-bad"]
    assert run(parser.parse_args([*argv, "--no-progress"])) == 0
    captured = capsys.readouterr()
    assert captured.err == f"skipped {folder / 'img99.png'}:image: not a PNG or JPEG image\n"
    printed = captured.out.splitlines()
    assert printed[0].startswith("trained a dense autoencoder on 2 images")
    assert printed[1] == "skipped    1 unreadable image files (listed above)"


def test_a_folder_of_text_files_is_not_called_missing(
    seed_model_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "seed_test.txt").write_text(SEED_TEST.read_text())
    result = pixelwatch("score", "--model", str(seed_model_path), str(tmp_path))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {tmp_path}:folder: contains no .png, .jpg or .jpeg files; "
        "give a text, .csv or .npy file by its own path\n"
    )


def test_score_without_pillow_names_the_extra_to_install(
    seed_model_path: Path, tmp_path: Path
) -> None:
    folder = course_pngs(SEED_TEST, tmp_path / "test")
    result = pixelwatch("score", "--model", str(seed_model_path), str(folder), block_pillow=True)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {folder}: reading PNG or JPEG files needs Pillow, the images extra: "
        "pip install 'pixelwatch[images]'\n"
    )
    text = pixelwatch("score", "--model", str(seed_model_path), str(SEED_TEST), block_pillow=True)
    assert text.returncode == 0, text.stderr  # text files need no Pillow


def test_produce_without_pillow_names_the_extra_before_connecting(tmp_path: Path) -> None:
    folder = course_pngs(SEED_TEST, tmp_path / "test")
    result = pixelwatch("produce", str(folder), "--bootstrap", "127.0.0.1:1", block_pillow=True)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {folder}: reading PNG or JPEG files needs Pillow")
    assert len(result.stderr.splitlines()) == 1


def test_no_service_module_imports_pillow() -> None:
    modules = sorted(m.name for m in pkgutil.walk_packages(service.__path__, "service."))
    assert "service.scoring.image_files" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'PIL')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_evaluate_reads_folders_and_patterns_like_arrays(
    seed_model_path: Path, tmp_path: Path
) -> None:
    test = read_images(SEED_TEST, SHAPE).pixels
    normal, anomalous = (
        np.concatenate([read_images(SEED_TRAIN, SHAPE).pixels, test[[0, 1, 3]]]),
        test[[2]],
    )
    folder = tmp_path / "normal"
    folder.mkdir()
    for index, pixels in enumerate(normal):
        ink_to_png(pixels, folder / f"n{index}.png")
    ink_to_png(anomalous[0], tmp_path / "odd-corners.png")
    (folder / "broken.png").write_bytes(b"junk")
    np.save(tmp_path / "normal.npy", normal)
    np.save(tmp_path / "anomalous.npy", anomalous)
    model = str(seed_model_path)
    command = ["evaluate", "--model", model, "--json"]
    arrays = pixelwatch(
        *command, "--normal", str(tmp_path / "normal.npy"),
        "--anomalous", str(tmp_path / "anomalous.npy"),
    )  # fmt: skip
    files = pixelwatch(
        *command, "--skip-bad", "--normal", str(folder),
        "--anomalous", str(tmp_path / "odd-*.png"),
    )  # fmt: skip
    assert files.returncode == 0, files.stderr
    assert files.stderr == f"skipped {folder / 'broken.png'}:image: not a PNG or JPEG image\n"
    by_arrays, by_files = json.loads(arrays.stdout), json.loads(files.stdout)
    assert (by_files["normal"], by_files["anomalous"]) == (5, 1)
    for key in ("auroc", "average_precision", "fpr", "recall", "tp", "fp", "tn", "fn"):
        assert by_files[key] == by_arrays[key], key
