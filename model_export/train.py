"""The shared training loop: seeded, deterministic mini-batch Adam on `training_loss`.

The same seed and data give bit-identical weights: initialisation and shuffling draw from
generators seeded here, deterministic algorithms are on while training, and the caller's
global torch random state is restored afterwards.
"""

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from model_export.architectures import Autoencoder, build_autoencoder
from service.errors import PixelwatchError
from service.scoring.images import ImageShape, Pixels


class TrainingError(PixelwatchError):
    """Training could not produce a usable network (for example the loss diverged)."""


@dataclass(frozen=True)
class FitSettings:
    epochs: int = 500
    lr: float = 1e-3
    batch_size: int = 1
    seed: int = 0
    progress: bool = False


@dataclass(frozen=True)
class Trained:
    """A trained network (in eval mode) and its mean training loss per epoch."""

    autoencoder: Autoencoder
    losses: tuple[float, ...]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch and switch on deterministic algorithms; restore both on exit."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def train(
    arch: str,
    shape: ImageShape,
    params: Mapping[str, Any],
    pixels: Pixels,
    settings: FitSettings,
) -> Trained:
    """Build `arch` and fit it to `pixels`, reproducibly for `settings.seed`."""
    with seeded(settings.seed):
        autoencoder = build_autoencoder(arch, shape, params)
        losses = fit(autoencoder, pixels, settings)
    return Trained(autoencoder, tuple(losses))


def fit(autoencoder: Autoencoder, pixels: Pixels, settings: FitSettings) -> list[float]:
    """Mini-batch Adam over shuffled images; returns the mean loss of every epoch."""
    data = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    count = len(data)
    shuffle = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=settings.lr)
    losses: list[float] = []
    autoencoder.train()
    with _progress(settings) as report:
        for epoch in range(1, settings.epochs + 1):
            order = torch.randperm(count, generator=shuffle)
            total = 0.0
            for start in range(0, count, settings.batch_size):
                batch = data[order[start : start + settings.batch_size]]
                loss = autoencoder.training_loss(batch)
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
                optimizer.step()
                total += float(loss.item()) * len(batch)
            mean = total / count
            if not math.isfinite(mean):
                raise TrainingError(
                    f"training diverged at epoch {epoch} (loss {mean}); try a smaller --lr"
                )
            losses.append(mean)
            report(epoch, mean)
    autoencoder.eval()
    return losses


@contextmanager
def _progress(settings: FitSettings) -> Iterator[Callable[[int, float], None]]:
    """A rich progress bar on stderr (only on a terminal, and only if asked for)."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn("training"),
        BarColumn(),
        TextColumn("epoch"),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not (settings.progress and console.is_terminal),
    )
    with bar:
        task = bar.add_task("training", total=settings.epochs, loss="-")

        def report(epoch: int, loss: float) -> None:
            bar.update(task, completed=epoch, loss=f"{loss:.6f}")

        yield report
