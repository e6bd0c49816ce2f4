"""Offline training and ONNX export (needs the `train` extra: torch, onnx, matplotlib).

`train_and_export(data, out, TrainOptions(...))` trains an autoencoder on normal images and
writes one self-contained scoring graph that `service.scoring.model.load_model` runs without torch.
"""

from model_export.pipeline import (
    OptionError,
    OutputError,
    TrainOptions,
    TrainResult,
    train_and_export,
)

__all__ = ["OptionError", "OutputError", "TrainOptions", "TrainResult", "train_and_export"]
