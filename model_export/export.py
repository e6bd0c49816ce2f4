"""The self-contained ONNX scoring graph: network, reconstruction convention and metrics.

`ScoringGraph` wraps a trained network so that one graph does all the runtime needs: it
turns the raw output into the reconstruction (thresholded at 0.5 in binary mode, the
course's convention; clamped to [0, 1] in gray mode), computes every reconstruction
similarity of `service.scoring.similarity` with the same formulas and edge cases, and, from
the network's latent code and the memory bank it carries (`model_export.memory`), the
`memory` and `combined` similarities. The runtime only feeds pixels, in one call.
"""

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, cast

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from torch import nn

from model_export.memory import MemoryBank, MemorySettings, fit_memory
from service.errors import PixelwatchError
from service.scoring.model import (
    INPUT_NAME,
    METADATA_PREFIX,
    RECONSTRUCTION,
    MemoryInfo,
    Mode,
    ModelMetadata,
)
from service.scoring.similarity import (
    COMBINED_RECONSTRUCTION,
    METRICS,
    RECONSTRUCTION_METRICS,
    ReconstructionMetric,
)

BINARY_CUT: Final = 0.5  # the course: outputs >= 0.5 are black pixels
# Loggers that narrate an export (registry misses, optimiser passes); a CLI run stays quiet.
_CHATTY_LOGGERS: Final = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


class ExportError(PixelwatchError):
    """The network could not be turned into an ONNX scoring graph."""


def hamming(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    return 1.0 - (inputs - outputs).abs().mean(dim=1)


def ruzicka(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    low = torch.minimum(inputs, outputs).sum(dim=1)
    high = torch.maximum(inputs, outputs).sum(dim=1)
    return _ratio(low, high)


def dice(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    low = torch.minimum(inputs, outputs).sum(dim=1)
    total = (inputs + outputs).sum(dim=1)
    return _ratio(2.0 * low, total)


def cosine(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    dot = (inputs * outputs).sum(dim=1)
    norms = inputs.square().sum(dim=1).sqrt() * outputs.square().sum(dim=1).sqrt()
    positive = norms > 0
    value = torch.where(positive, dot / torch.where(positive, norms, 1.0), 0.0)
    both_blank = (inputs.sum(dim=1) == 0) & (outputs.sum(dim=1) == 0)
    return torch.where(both_blank, 1.0, value.clamp(0.0, 1.0))


def _ratio(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """top / bottom, and 1.0 where bottom is 0 (two blank images are identical)."""
    positive = bottom > 0
    return torch.where(positive, top / torch.where(positive, bottom, 1.0), 1.0)


METRIC_FUNCTIONS: Final[
    dict[ReconstructionMetric, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
] = {
    "hamming": hamming,
    "ruzicka": ruzicka,
    "dice": dice,
    "cosine": cosine,
}
OUTPUT_NAMES: Final[tuple[str, ...]] = (RECONSTRUCTION, *METRICS)


class ScoringGraph(nn.Module):
    """pixels -> (reconstruction, *similarities in METRICS order).

    `network` maps pixels to a raw reconstruction and has `encode` (pixels -> latent code),
    as every `Autoencoder` does. Without a memory bank the graph stops after the
    reconstruction metrics (enough to fit one); only a graph with one can be exported.
    """

    def __init__(self, network: nn.Module, mode: Mode, memory: MemoryBank | None = None) -> None:
        super().__init__()
        self.network = network
        self.mode: Mode = mode
        self.memory = memory

    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        raw: torch.Tensor = self.network(pixels)
        if self.mode == "binary":
            return (raw >= BINARY_CUT).to(pixels.dtype)
        return raw.clamp(0.0, 1.0)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        encode = cast(Callable[[torch.Tensor], torch.Tensor], self.network.encode)
        return encode(pixels)

    def first_layer(self, pixels: torch.Tensor) -> torch.Tensor:
        first = cast(Callable[[torch.Tensor], torch.Tensor], self.network.first_layer)
        return first(pixels)

    def hamming(self, pixels: torch.Tensor) -> torch.Tensor:
        """The reconstruction similarity that `combined` uses, for fitting the memory bank."""
        return METRIC_FUNCTIONS[COMBINED_RECONSTRUCTION](pixels, self.reconstruct(pixels))

    @property
    def memory_info(self) -> MemoryInfo:
        if self.memory is None:
            raise ExportError("the scoring graph has no memory bank; build it with scoring_graph()")
        return self.memory.info

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reconstruction = self.reconstruct(pixels)
        similarities = {
            m: METRIC_FUNCTIONS[m](pixels, reconstruction) for m in RECONSTRUCTION_METRICS
        }
        if self.memory is None:
            return (reconstruction, *similarities.values())
        first = self.first_layer(pixels) if self.memory.first_bank is not None else None
        memory = self.memory(self.encode(pixels), similarities[COMBINED_RECONSTRUCTION], first)
        return (reconstruction, *similarities.values(), *memory)


def scoring_graph(
    network: nn.Module,
    mode: Mode,
    train: NDArray[np.float32],
    calibration: NDArray[np.float32] | None = None,
    settings: MemorySettings | None = None,
) -> ScoringGraph:
    """The complete scoring graph: `network` in eval mode plus a memory bank of its codes of
    `train`, calibrated on `calibration` (held-out normal images) or leave-one-out."""
    graph = ScoringGraph(network.eval(), mode).eval()
    chosen = settings or MemorySettings()
    graph.memory = fit_memory(
        graph.encode, graph.hamming, train, calibration, chosen, first_layer=graph.first_layer
    )
    return graph


def export_scoring_graph(
    graph: ScoringGraph, size: int, metadata: ModelMetadata, out: Path
) -> None:
    """Write one .onnx file (weights and memory bank inside) taking `pixels` [batch, size],
    batch dynamic."""
    if graph.memory is None:
        raise ExportError("the scoring graph has no memory bank; build it with scoring_graph()")
    graph = graph.eval()
    example = torch.zeros(2, size, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                verbose=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_shapes={"pixels": {0: batch}},
                external_data=False,
                optimize=True,
            )
    except Exception as exc:  # the exporter raises many unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"could not export the scoring graph to ONNX: {first}") from exc
    if program is None:  # only the legacy exporter returns None
        raise ExportError("the ONNX exporter returned no program")
    proto = program.model_proto
    _set_metadata(proto, metadata)
    onnx.save_model(proto, str(out), save_as_external_data=False)


def write_metadata(path: Path, metadata: ModelMetadata) -> None:
    """Replace the pixelwatch metadata of an exported graph in place."""
    proto = onnx.load_model(str(path))
    _set_metadata(proto, metadata)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def _set_metadata(proto: onnx.ModelProto, metadata: ModelMetadata) -> None:
    others = [
        (p.key, p.value) for p in proto.metadata_props if not p.key.startswith(METADATA_PREFIX)
    ]
    del proto.metadata_props[:]
    for key, value in [*others, *metadata.to_props().items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's warnings and log narration for the duration of an export."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
