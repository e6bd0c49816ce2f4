"""The self-contained ONNX scoring graph: network, reconstruction convention and metrics.

`ScoringGraph` wraps a trained network so that one graph does all the runtime needs: it
turns the raw output into the reconstruction (thresholded at 0.5 in binary mode, the
course's convention; clamped to [0, 1] in gray mode) and computes every similarity of
`service.scoring.similarity` with the same formulas and edge cases. The runtime only feeds pixels.
"""

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import onnx
import torch
from torch import nn

from service.errors import PixelwatchError
from service.scoring.model import INPUT_NAME, METADATA_PREFIX, RECONSTRUCTION, Mode, ModelMetadata
from service.scoring.similarity import METRICS, MetricName

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


METRIC_FUNCTIONS: Final[dict[MetricName, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]] = {
    "hamming": hamming,
    "ruzicka": ruzicka,
    "dice": dice,
    "cosine": cosine,
}
OUTPUT_NAMES: Final[tuple[str, ...]] = (RECONSTRUCTION, *METRICS)


class ScoringGraph(nn.Module):
    """pixels -> (reconstruction, *similarities in METRICS order)."""

    def __init__(self, network: nn.Module, mode: Mode) -> None:
        super().__init__()
        self.network = network
        self.mode: Mode = mode

    def reconstruct(self, pixels: torch.Tensor) -> torch.Tensor:
        raw: torch.Tensor = self.network(pixels)
        if self.mode == "binary":
            return (raw >= BINARY_CUT).to(pixels.dtype)
        return raw.clamp(0.0, 1.0)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reconstruction = self.reconstruct(pixels)
        return (reconstruction, *(METRIC_FUNCTIONS[m](pixels, reconstruction) for m in METRICS))


def export_scoring_graph(
    network: nn.Module, size: int, mode: Mode, metadata: ModelMetadata, out: Path
) -> None:
    """Write one .onnx file (weights inside) taking `pixels` [batch, size], batch dynamic."""
    graph = ScoringGraph(network, mode).eval()
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
