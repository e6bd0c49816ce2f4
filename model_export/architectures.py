"""Autoencoder architectures behind a registry: name -> builder(shape, params) -> module.

Every architecture is an `Autoencoder`: `forward` maps pixels [batch, width*height] to a raw
reconstruction of the same shape (the export step binarizes or clamps it), and
`training_loss` is what the shared training loop minimises. Variants that need a different
objective (denoising, sparse, variational, contractive) override `training_loss`; everything
else (training, export, calibration) stays the same.

>>> model = build_autoencoder("dense", ImageShape(8, 8), {"hidden": 8})
>>> resolve_params("dense", {"hidden": 8})
{'hidden': 8, 'code': 4, 'activation': 'tanh'}
>>> tuple(model(torch.zeros(3, 64)).shape)
(3, 64)
"""

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import torch
from torch import nn

from service.errors import PixelwatchError
from service.images import ImageShape

Activation = Literal["tanh", "sigmoid", "identity"]
ACTIVATIONS: Final[tuple[Activation, ...]] = get_args(Activation)


class ArchitectureError(PixelwatchError):
    """An unknown architecture, or parameters it does not accept."""


class Autoencoder(nn.Module):
    """An encoder and a decoder; the reconstruction objective is overridable per variant."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(pixels))  # type: ignore[no-any-return]  # nn.Module call

    def training_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error, as in the course."""
        return nn.functional.mse_loss(self(pixels), pixels)


@dataclass(frozen=True)
class DenseParams:
    """The course's network: n -> hidden -> code -> hidden -> n."""

    hidden: int = 16
    code: int = 4
    activation: Activation = "tanh"

    def __post_init__(self) -> None:
        for name in ("hidden", "code"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ArchitectureError(
                    f"dense: {name} must be a whole number >= 1 (got {value!r})"
                )
        if self.activation not in ACTIVATIONS:
            raise ArchitectureError(
                f"dense: activation must be one of {', '.join(ACTIVATIONS)} "
                f"(got {self.activation!r})"
            )


def output_activation(name: Activation) -> nn.Module:
    layers: dict[Activation, Callable[[], nn.Module]] = {
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "identity": nn.Identity,
    }
    return layers[name]()


def _dense(shape: ImageShape, params: DenseParams) -> Autoencoder:
    n = shape.size
    encoder = nn.Sequential(
        nn.Linear(n, params.hidden), nn.ReLU(), nn.Linear(params.hidden, params.code)
    )
    decoder = nn.Sequential(
        nn.Linear(params.code, params.hidden),
        nn.ReLU(),
        nn.Linear(params.hidden, n),
        output_activation(params.activation),
    )
    return Autoencoder(encoder, decoder)


@dataclass(frozen=True)
class Architecture:
    """A registry entry: its parameter dataclass (all fields defaulted) and its builder."""

    name: str
    summary: str
    params: type[Any]
    builder: Callable[[ImageShape, Any], Autoencoder]


ARCHITECTURES: Final[dict[str, Architecture]] = {
    "dense": Architecture("dense", "the course's fully connected network", DenseParams, _dense),
}


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ArchitectureError(f"unknown architecture {name!r} (known: {known})") from None


def _params(name: str, given: Mapping[str, Any]) -> Any:
    spec = architecture(name)
    accepted = {f.name for f in dataclasses.fields(spec.params)}
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise ArchitectureError(
            f"{name}: unknown parameter(s) {', '.join(unknown)} "
            f"(accepted: {', '.join(sorted(accepted))})"
        )
    return spec.params(**given)


def resolve_params(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter of `name`, defaults filled in; raises on unknown or bad values."""
    return dataclasses.asdict(_params(name, given))


def build_autoencoder(name: str, shape: ImageShape, params: Mapping[str, Any]) -> Autoencoder:
    """A freshly initialised network (initialisation draws from torch's global generator)."""
    return architecture(name).builder(shape, _params(name, params))
