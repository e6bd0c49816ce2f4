"""Training defaults on real data: time and detection of `pixelwatch train` on the digits.

The data is the leave-one-class-out case: nine of scikit-learn's ten digit classes are
normal, the tenth is the anomaly. The normal images are shuffled (seeded by the class left
out) and split 70/30: 70% (about 1,130 images) is the training file, the other 30% are the
normal test images, and every image of the left-out class is an anomalous test image.

Each configuration runs the real command, `pixelwatch train --data train.npy --arch dense
--metric hamming --mode gray --fpr 0.05 ...`, in a process of its own and is timed from
start to exit; the model is then scored on the test images: the AUROC of its Hamming
similarity, and the share of normal test images its calibrated threshold flags (the target
is 0.05).

    python tests/benchmarks/training.py [--classes 1] [--configs default,course] [--out DIR]

Configurations: `default` (no training flags), `course` (the defaults before they scaled:
batch size 1, 500 epochs, lr 0.001, no early stopping; slow), `digits-bench` (the digits
benchmark's batch 32, 300 epochs, lr 0.003), and `NAME=FLAGS` for any other.
"""

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from service.progress import progress_bar
from service.scoring.model import load_model

TRAIN_SHARE = 0.7
# The architecture and metric these figures were measured with (train's defaults are auto).
COMMON = ["--arch", "dense", "--metric", "hamming", "--mode", "gray", "--fpr", "0.05"]
COMMON += ["--no-progress"]
CONFIGS = {
    "default": [],
    "course": ["--batch-size", "1", "--epochs", "500", "--lr", "0.001", "--patience", "0"],
    "digits-bench": ["--batch-size", "32", "--epochs", "300", "--lr", "0.003", "--patience", "0"],
}


@dataclass(frozen=True)
class Result:
    config: str
    flags: str
    left_out: int
    train_images: int
    seconds: float  # wall clock, start to exit
    cpu_seconds: float  # user + system time of the process: less sensitive to a busy machine
    auroc: float
    fresh_fpr: float  # normal test images flagged by the --fpr 0.05 threshold
    epochs_run: int
    batch_size: int
    lr: float


def split(left_out: int, directory: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write the training file; return it with the normal and anomalous test images."""
    bunch = load_digits()
    pixels = (bunch.images.astype(np.float32) / 16.0).reshape(-1, 64)
    normal = np.flatnonzero(bunch.target != left_out)
    order = np.random.default_rng([0, left_out]).permutation(normal)
    cut = int(len(order) * TRAIN_SHARE)
    train = directory / f"train-{left_out}.npy"
    np.save(train, pixels[np.sort(order[:cut])])
    return train, pixels[np.sort(order[cut:])], pixels[bunch.target == left_out]


def run_one(name: str, flags: list[str], left_out: int, directory: Path) -> Result:
    train, normal, anomalous = split(left_out, directory)
    model = directory / f"{name}-{left_out}.onnx"
    command = [sys.executable, "-m", "service.cli", "train", "--data", str(train)]
    command += ["--out", str(model), *COMMON, *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    loaded = load_model(model)
    similarity = loaded.score(np.concatenate([normal, anomalous]), metric="hamming").similarity
    labels = np.repeat([0, 1], [len(normal), len(anomalous)])
    params = loaded.metadata.arch_params
    return Result(
        config=name,
        flags=" ".join(flags),
        left_out=left_out,
        train_images=int(np.load(train).shape[0]),
        seconds=seconds,
        cpu_seconds=cpu,
        auroc=float(roc_auc_score(labels, -similarity.astype(np.float64))),
        fresh_fpr=float(np.mean(similarity[: len(normal)] < loaded.metadata.threshold)),
        epochs_run=int(params.get("epochs_run", params["epochs"])),
        batch_size=int(params["batch_size"]),
        lr=float(params["lr"]),
    )


def parse_configs(text: str) -> dict[str, list[str]]:
    chosen: dict[str, list[str]] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, flags = item.partition("=")
        chosen[name] = shlex.split(flags) if flags else CONFIGS[name]
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="1", help="digits left out, comma-separated")
    parser.add_argument("--configs", default="default,digits-bench,course")
    parser.add_argument("--out", type=Path, default=Path("bench-results/training"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    classes = [int(c) for c in args.classes.split(",")]
    configs = parse_configs(args.configs)
    results: list[Result] = []
    bar = progress_bar(enabled=not args.no_progress)
    with tempfile.TemporaryDirectory() as tmp, bar:
        task = bar.add_task("training runs", total=len(classes) * len(configs))
        for name, flags in configs.items():
            for left_out in classes:
                results.append(run_one(name, flags, left_out, Path(tmp)))
                bar.advance(task)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg(), **platform.uname()._asdict()},
        "results": [asdict(r) for r in results],
    }
    (args.out / "training.json").write_text(json.dumps(payload, indent=1) + "\n")
    table = Table(
        "config", "left out", "images", "batch", "lr", "epochs", "seconds", "CPU s", "AUROC", "FPR"
    )
    for r in results:
        table.add_row(
            r.config, str(r.left_out), str(r.train_images), str(r.batch_size), f"{r.lr:g}",
            str(r.epochs_run), f"{r.seconds:.1f}", f"{r.cpu_seconds:.1f}", f"{r.auroc:.4f}",
            f"{r.fresh_fpr:.3f}",
        )  # fmt: skip
    for name in configs:
        mine = [r for r in results if r.config == name]
        table.add_row(
            f"{name} (mean)", "", "", "", "", "",
            f"{np.mean([r.seconds for r in mine]):.1f}",
            f"{np.mean([r.cpu_seconds for r in mine]):.1f}",
            f"{np.mean([r.auroc for r in mine]):.4f}",
            f"{np.mean([r.fresh_fpr for r in mine]):.3f}",
        )  # fmt: skip
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
