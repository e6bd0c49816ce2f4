"""The shared training loop: seeded, deterministic mini-batch Adam on `training_loss`.

The same seed and data give bit-identical weights: initialisation and shuffling draw from
generators seeded here, deterministic algorithms are on while training, and the caller's
global torch random state is restored afterwards.

Training runs on one intra-op thread: these networks are so small that a second thread only
adds synchronisation, and on a busy machine its spin-waiting slowed training down tenfold.

Early stopping: given held-out images and a patience, the loop measures their reconstruction
loss (plain mean squared error, whatever the architecture's training objective) after every
epoch, stops once it has not improved for `patience` epochs, and restores the weights of the
best epoch. Without held-out images it runs every epoch, as the course does.
"""

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from model_export.architectures import Autoencoder, build_autoencoder
from service.errors import PixelwatchError
from service.progress import progress_bar
from service.scoring.images import ImageShape, Pixels

# A held-out loss counts as better only when it falls below the best by this share of it, so
# that a long plateau of tiny gains does not keep training alive.
MIN_IMPROVEMENT: Final = 1e-3
LR_DROP: Final = 4.0


class TrainingError(PixelwatchError):
    """Training could not produce a usable network (for example the loss diverged)."""


@dataclass(frozen=True)
class FitSettings:
    epochs: int = 500  # the most epochs to run
    lr: float = 1e-3
    batch_size: int = 1
    seed: int = 0
    progress: bool = False
    patience: int = 0  # epochs without held-out improvement before stopping; 0: never stop
    lr_drops: int = 0  # plateaus met by dividing the learning rate by LR_DROP before stopping


@dataclass(frozen=True)
class Trained:
    """A trained network (in eval mode) and how its training went.

    `losses[i]` is the mean training loss of epoch i + 1; `holdout_losses[i]` the held-out
    reconstruction loss after it (empty without held-out images). The network carries the
    weights of `best_epoch`, which is the last epoch run unless training stopped early.
    """

    autoencoder: Autoencoder
    losses: tuple[float, ...]
    holdout_losses: tuple[float, ...] = ()
    best_epoch: int = 0

    @property
    def epochs_run(self) -> int:
        return len(self.losses)

    @property
    def kept_epoch(self) -> int:
        return self.best_epoch or self.epochs_run

    @property
    def final_loss(self) -> float:
        """The training loss of the epoch whose weights were kept."""
        return self.losses[self.kept_epoch - 1]


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
    holdout: Pixels | None = None,
    console: Console | None = None,
) -> Trained:
    """Build `arch` and fit it to `pixels`, reproducibly for `settings.seed`."""
    with seeded(settings.seed), one_thread():
        autoencoder = build_autoencoder(arch, shape, params)
        return fit(autoencoder, pixels, settings, holdout, console)


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread while training; the caller's setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fit(
    autoencoder: Autoencoder,
    pixels: Pixels,
    settings: FitSettings,
    holdout: Pixels | None = None,
    console: Console | None = None,
) -> Trained:
    """Mini-batch Adam over shuffled images, stopping early on `holdout` if it is given."""
    data = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    held = None
    if holdout is not None and len(holdout) and settings.patience > 0:
        held = torch.from_numpy(np.ascontiguousarray(holdout, dtype=np.float32))
    count = len(data)
    shuffle = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=settings.lr)
    losses: list[float] = []
    holdout_losses: list[float] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    drops, plateau = 0, 0
    autoencoder.train()
    with _progress(settings, held is not None, console) as report:
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
            if held is None:
                report(epoch, mean, None)
                continue
            held_loss = reconstruction_loss(autoencoder, held)
            holdout_losses.append(held_loss)
            report(epoch, mean, held_loss)
            if best is None or held_loss < best[0] * (1.0 - MIN_IMPROVEMENT):
                best = (held_loss, epoch, copy.deepcopy(autoencoder.state_dict()))
            elif epoch - max(best[1], plateau) >= settings.patience:
                if drops == settings.lr_drops:
                    break
                drops, plateau = drops + 1, epoch
                for group in optimizer.param_groups:
                    group["lr"] = group["lr"] / LR_DROP
    if best is not None:
        autoencoder.load_state_dict(best[2])
    autoencoder.eval()
    return Trained(autoencoder, tuple(losses), tuple(holdout_losses), best[1] if best else 0)


def reconstruction_loss(autoencoder: Autoencoder, pixels: torch.Tensor) -> float:
    """Mean squared error of the network's raw reconstruction, in eval mode, no gradients."""
    autoencoder.eval()
    try:
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(autoencoder(pixels), pixels).item())
    finally:
        autoencoder.train()


@contextmanager
def _progress(
    settings: FitSettings, held_out: bool, console: Console | None
) -> Iterator[Callable[[int, float, float | None], None]]:
    """Epoch, losses and time left on stderr (only on a terminal, and only if asked for).

    With early stopping the time left is an upper bound: it assumes every epoch runs.
    """
    columns = [
        TextColumn("training"),
        BarColumn(),
        TextColumn("epoch"),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
    ]
    if held_out:
        columns.append(TextColumn("held-out {task.fields[held]}"))
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    bar = progress_bar(*columns, enabled=settings.progress, console=console)
    with bar:
        task = bar.add_task("training", total=settings.epochs, loss="-", held="-")

        def report(epoch: int, loss: float, held: float | None) -> None:
            shown = "-" if held is None else f"{held:.6f}"
            bar.update(task, completed=epoch, loss=f"{loss:.6f}", held=shown)

        yield report
