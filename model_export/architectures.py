"""Autoencoder architectures behind a registry: name -> builder(shape, params) -> module.

Every architecture is an `Autoencoder`: `forward` maps pixels [batch, width*height] to a raw
reconstruction of the same shape (the export step binarizes or clamps it), and
`training_loss` is what the shared training loop minimises. Variants that need a different
objective (denoising, sparse, variational, contractive) override `training_loss`; everything
else (training, export, calibration) stays the same. Networks that want another layout
(conv: [batch, 1, height, width]; seq2seq: rows as a sequence) reshape inside `forward`, so
the exported graph keeps the one input contract, `pixels` [batch, width*height].

`encode` gives the latent code the decoder starts from, which the scoring graph's memory
bank stores: the `code`-wide bottleneck layer (linear for dense, deep and denoising; the
sigmoid code for sparse and contractive; the dense layer after the convolutions for conv;
the projection of the row reader's last GRU state for seq2seq) and, for vae, the mean of the
Gaussian code.

Hyper-parameters are frozen dataclasses whose fields all have defaults; their values are
checked from the field types (whole numbers >= 1, numbers within the bounds given in the
field's metadata, one of a `Literal`'s choices), so a bad value fails before training.

>>> model = build_autoencoder("dense", ImageShape(8, 8), {"hidden": 8})
>>> resolve_params("dense", {"hidden": 8})
{'hidden': 8, 'code': 4, 'activation': 'tanh'}
>>> tuple(model(torch.zeros(3, 64)).shape)
(3, 64)
>>> parse_params("denoising", ["noise=masking", "level=0.25"])
{'noise': 'masking', 'level': 0.25}
"""

import dataclasses
import itertools
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import torch
from torch import nn

from service.errors import PixelwatchError
from service.scoring.images import ImageShape

Activation = Literal["tanh", "sigmoid", "identity"]
ACTIVATIONS: Final[tuple[Activation, ...]] = get_args(Activation)
Noise = Literal["gaussian", "masking", "salt_pepper"]
Penalty = Literal["l1", "kl"]


class ArchitectureError(PixelwatchError):
    """An unknown architecture, or parameters it does not accept."""


class Autoencoder(nn.Module):
    """An encoder and a decoder; the reconstruction objective is overridable per variant."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The latent code [batch, code]: the bottleneck the decoder starts from."""
        return self.encoder(pixels)  # type: ignore[no-any-return]  # nn.Module call

    def first_layer(self, pixels: torch.Tensor) -> torch.Tensor:
        """The encoder's first layer of features, flattened [batch, n]: its output after the
        first non-linearity (a dense layer's hidden units, a convolution's feature maps).

        A memory bank can store these beside the codes (`--memory-features`): they keep the
        local detail that the code compresses away, as PatchCore's mid-level features do.
        """
        if not isinstance(self.encoder, nn.Sequential):
            raise ArchitectureError(
                f"{type(self).__name__}'s encoder has no first layer of features to store "
                "(use --memory-features code)"
            )
        features: torch.Tensor = pixels
        weighted = False  # a Linear or convolution seen: the next non-linearity ends it
        for layer in self.encoder:
            features = layer(features)
            if isinstance(layer, nn.Linear | nn.Conv2d):
                weighted = True
            elif weighted and not isinstance(layer, nn.Flatten | nn.Unflatten | nn.Dropout):
                return features.flatten(1)
        raise ArchitectureError(
            f"{type(self).__name__}'s encoder has no non-linearity before its code "
            "(use --memory-features code)"
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(pixels))  # type: ignore[no-any-return]  # nn.Module call

    def training_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error, as in the course."""
        return nn.functional.mse_loss(self(pixels), pixels)


# --- parameters ---------------------------------------------------------------------------


def _bounded(default: float, low: float, high: float = math.inf) -> Any:
    """A float field that must lie in [low, high]."""
    return field(default=default, metadata={"range": (low, high)})


class _Checked:
    """Validates every field of a params dataclass from its annotation (and bounds)."""

    arch: str = "?"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for spec in dataclasses.fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            _check(self.arch, spec, hints[spec.name], getattr(self, spec.name))


def _check(arch: str, spec: dataclasses.Field[Any], kind: Any, value: Any) -> None:
    name = spec.name
    if typing.get_origin(kind) is Literal:
        choices = get_args(kind)
        if value not in choices:
            raise ArchitectureError(
                f"{arch}: {name} must be one of {', '.join(choices)} (got {value!r})"
            )
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ArchitectureError(f"{arch}: {name} must be a whole number >= 1 (got {value!r})")
    elif kind is float:
        low, high = spec.metadata.get("range", (0.0, math.inf))
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not low <= value <= high:
            where = f"between {low:g} and {high:g}" if math.isfinite(high) else f">= {low:g}"
            raise ArchitectureError(f"{arch}: {name} must be a number {where} (got {value!r})")


@dataclass(frozen=True)
class DenseParams(_Checked):
    """The course's network: n -> hidden -> code -> hidden -> n."""

    arch = "dense"
    hidden: int = 16
    code: int = 4
    activation: Activation = "tanh"


@dataclass(frozen=True)
class DeepParams(_Checked):
    """`depth` hidden layers per side, halving from `hidden` (n -> 32 -> 16 -> code by default)."""

    arch = "deep"
    hidden: int = 32
    depth: int = 2
    code: int = 8
    activation: Activation = "sigmoid"


@dataclass(frozen=True)
class ConvParams(_Checked):
    """Two 3x3 convolutions (the second with stride 2), a dense code, and the mirror image."""

    arch = "conv"
    channels: int = 8
    code: int = 8
    activation: Activation = "sigmoid"


@dataclass(frozen=True)
class DenoisingParams(_Checked):
    """The dense network trained to undo `noise` of strength `level` added to its input."""

    arch = "denoising"
    hidden: int = 32
    code: int = 8
    activation: Activation = "sigmoid"
    noise: Noise = "gaussian"  # gaussian: N(0, level^2); masking / salt_pepper: probability
    level: float = _bounded(0.1, 0.0, 1.0)


@dataclass(frozen=True)
class SparseParams(_Checked):
    """A wider sigmoid code kept sparse by an L1 or KL penalty of strength `weight`."""

    arch = "sparse"
    hidden: int = 32
    code: int = 16
    activation: Activation = "sigmoid"
    penalty: Penalty = "l1"
    weight: float = _bounded(1e-3, 0.0)  # for penalty=kl try 0.01 to 0.05
    target: float = _bounded(0.05, 1e-6, 1.0 - 1e-6)  # KL: the desired mean activation


@dataclass(frozen=True)
class VaeParams(_Checked):
    """A Gaussian code; the exported graph decodes the mean (no sampling at scoring time)."""

    arch = "vae"
    hidden: int = 32
    code: int = 8
    activation: Activation = "sigmoid"
    beta: float = _bounded(0.1, 0.0)  # weight of the KL term, per pixel


@dataclass(frozen=True)
class ContractiveParams(_Checked):
    """A sigmoid code whose Jacobian with respect to the input is penalised (`weight`)."""

    arch = "contractive"
    hidden: int = 32
    code: int = 8
    activation: Activation = "sigmoid"
    weight: float = _bounded(1e-3, 0.0)


@dataclass(frozen=True)
class Seq2SeqParams(_Checked):
    """A GRU reads the image row by row into a code; another GRU writes it back row by row."""

    arch = "seq2seq"
    hidden: int = 64
    code: int = 8
    activation: Activation = "sigmoid"


# --- building blocks ----------------------------------------------------------------------


def output_activation(name: Activation) -> nn.Module:
    layers: dict[Activation, Callable[[], nn.Module]] = {
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "identity": nn.Identity,
    }
    return layers[name]()


def _mlp(sizes: list[int], *, last: nn.Module | None = None) -> nn.Sequential:
    """Linear layers of these sizes with ReLU between them (and `last` after the last)."""
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(itertools.pairwise(sizes)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(width_in, width_out))
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


def _pair(
    n: int, widths: list[int], code: int, activation: Activation, *, code_layer: nn.Module | None
) -> tuple[nn.Sequential, nn.Sequential]:
    """encoder n -> widths -> code, decoder code -> reversed widths -> n -> activation."""
    encoder = _mlp([n, *widths, code], last=code_layer)
    decoder = _mlp([code, *reversed(widths), n], last=output_activation(activation))
    return encoder, decoder


# --- variants -----------------------------------------------------------------------------


class DenoisingAutoencoder(Autoencoder):
    """Reconstructs the clean image from a corrupted copy (corruption only while training)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, noise: Noise, level: float):
        super().__init__(encoder, decoder)
        self.noise: Noise = noise
        self.level = level

    def corrupt(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.noise == "gaussian":
            return (pixels + self.level * torch.randn_like(pixels)).clamp(0.0, 1.0)
        hit = torch.rand_like(pixels) < self.level
        if self.noise == "masking":
            return torch.where(hit, 0.0, pixels)
        salt = (torch.rand_like(pixels) < 0.5).to(pixels.dtype)
        return torch.where(hit, salt, pixels)

    def training_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(self(self.corrupt(pixels)), pixels)


class SparseAutoencoder(Autoencoder):
    """Reconstruction error plus a sparsity penalty on the (sigmoid) code."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, params: SparseParams):
        super().__init__(encoder, decoder)
        self.penalty: Penalty = params.penalty
        self.weight = params.weight
        self.target = params.target

    def training_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        code: torch.Tensor = self.encoder(pixels)
        error = nn.functional.mse_loss(self.decoder(code), pixels)
        if self.penalty == "l1":
            return error + self.weight * code.abs().sum(dim=1).mean()
        rho, rho_hat = self.target, code.mean(dim=0).clamp(1e-6, 1.0 - 1e-6)
        kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
        return error + self.weight * kl.sum()


class VariationalAutoencoder(Autoencoder):
    """A Gaussian code; `forward` (and so the export) decodes its mean, without sampling."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, p: VaeParams):
        super().__init__(encoder, decoder)
        self.mean = nn.Linear(p.hidden, p.code)
        self.log_var = nn.Linear(p.hidden, p.code)
        self.beta = p.beta

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """The mean of the Gaussian code (what the decoder sees at scoring time)."""
        return self.mean(self.encoder(pixels))  # type: ignore[no-any-return]  # nn.Module call

    def training_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        features: torch.Tensor = self.encoder(pixels)
        mean: torch.Tensor = self.mean(features)
        log_var: torch.Tensor = self.log_var(features).clamp(-10.0, 10.0)
        code = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        error = nn.functional.mse_loss(self.decoder(code), pixels)
        kl = -0.5 * (1 + log_var - mean.square() - log_var.exp()).sum(dim=1).mean()
        return error + self.beta * kl / pixels.shape[1]


class ContractiveAutoencoder(Autoencoder):
    """Reconstruction error plus `weight` times the squared Frobenius norm of d code / d input."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, weight: float):
        super().__init__(encoder, decoder)
        self.weight = weight

    def training_loss(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.detach().requires_grad_(True)
        code: torch.Tensor = self.encoder(pixels)
        error = nn.functional.mse_loss(self.decoder(code), pixels)
        # Row u of every image's Jacobian is the gradient of code unit u: one batched backward
        # pass with the code's identity matrix as the (batched) output gradients.
        units = torch.eye(code.shape[1], dtype=code.dtype).unsqueeze(1)
        (rows,) = torch.autograd.grad(
            code, pixels, units.expand(-1, *code.shape), create_graph=True, is_grads_batched=True
        )
        jacobian = rows.square().sum(dim=(0, 2)).mean()  # squared Frobenius norm, batch mean
        return error + self.weight * jacobian


class ConvAutoencoder(Autoencoder):
    """Reshapes [batch, h*w] to [batch, 1, h, w] inside, so the graph input stays flat."""

    def __init__(self, shape: ImageShape, params: ConvParams):
        c, h, w = params.channels, shape.height, shape.width
        half_h, half_w = (h + 1) // 2, (w + 1) // 2  # a 3x3 stride-2 convolution, padding 1
        flat = 2 * c * half_h * half_w
        encoder = nn.Sequential(
            nn.Unflatten(1, (1, h, w)),
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, params.code),
        )
        decoder = nn.Sequential(
            nn.Linear(params.code, flat),
            nn.ReLU(),
            nn.Unflatten(1, (2 * c, half_h, half_w)),
            # output_padding restores an even side: (half - 1) * 2 - 2 + 3 + pad == side
            nn.ConvTranspose2d(
                2 * c,
                c,
                3,
                stride=2,
                padding=1,
                output_padding=(h - 2 * half_h + 1, w - 2 * half_w + 1),
            ),
            nn.ReLU(),
            nn.Conv2d(c, 1, 3, padding=1),
            nn.Flatten(),
            output_activation(params.activation),
        )
        super().__init__(encoder, decoder)


class _RowReader(nn.Module):
    """[batch, h*w] -> a GRU over the h rows -> its last hidden state -> code."""

    def __init__(self, shape: ImageShape, hidden: int, code: int):
        super().__init__()
        self.rows = nn.Unflatten(1, (shape.height, shape.width))
        self.gru = nn.GRU(shape.width, hidden, batch_first=True)
        self.code = nn.Linear(hidden, code)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(self.rows(pixels))
        return self.code(last[0])  # type: ignore[no-any-return]  # nn.Module call


class _RowWriter(nn.Module):
    """code -> a GRU fed the code at each of the h steps -> one row per step -> [batch, h*w]."""

    def __init__(self, shape: ImageShape, hidden: int, code: int, activation: Activation):
        super().__init__()
        self.height = shape.height
        self.gru = nn.GRU(code, hidden, batch_first=True)
        self.row = nn.Linear(hidden, shape.width)
        self.out = nn.Sequential(nn.Flatten(), output_activation(activation))

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        steps, _ = self.gru(code.unsqueeze(1).expand(-1, self.height, -1))
        return self.out(self.row(steps))  # type: ignore[no-any-return]  # nn.Module call


# --- builders and the registry ------------------------------------------------------------


def _dense(shape: ImageShape, p: DenseParams) -> Autoencoder:
    return Autoencoder(*_pair(shape.size, [p.hidden], p.code, p.activation, code_layer=None))


def _deep(shape: ImageShape, p: DeepParams) -> Autoencoder:
    widths = [max(p.hidden >> i, p.code) for i in range(p.depth)]
    return Autoencoder(*_pair(shape.size, widths, p.code, p.activation, code_layer=None))


def _conv(shape: ImageShape, p: ConvParams) -> Autoencoder:
    return ConvAutoencoder(shape, p)


def _denoising(shape: ImageShape, p: DenoisingParams) -> Autoencoder:
    pair = _pair(shape.size, [p.hidden], p.code, p.activation, code_layer=None)
    return DenoisingAutoencoder(*pair, p.noise, p.level)


def _sparse(shape: ImageShape, p: SparseParams) -> Autoencoder:
    pair = _pair(shape.size, [p.hidden], p.code, p.activation, code_layer=nn.Sigmoid())
    return SparseAutoencoder(*pair, p)


def _vae(shape: ImageShape, p: VaeParams) -> Autoencoder:
    trunk = nn.Sequential(nn.Linear(shape.size, p.hidden), nn.ReLU())
    decoder = _mlp([p.code, p.hidden, shape.size], last=output_activation(p.activation))
    return VariationalAutoencoder(trunk, decoder, p)


def _contractive(shape: ImageShape, p: ContractiveParams) -> Autoencoder:
    pair = _pair(shape.size, [p.hidden], p.code, p.activation, code_layer=nn.Sigmoid())
    return ContractiveAutoencoder(*pair, p.weight)


def _seq2seq(shape: ImageShape, p: Seq2SeqParams) -> Autoencoder:
    reader = _RowReader(shape, p.hidden, p.code)
    return Autoencoder(reader, _RowWriter(shape, p.hidden, p.code, p.activation))


@dataclass(frozen=True)
class Architecture:
    """A registry entry: its parameter dataclass (all fields defaulted) and its builder."""

    name: str
    summary: str
    params: type[Any]
    builder: Callable[[ImageShape, Any], Autoencoder]


ARCHITECTURES: Final[dict[str, Architecture]] = {
    a.name: a
    for a in (
        Architecture("dense", "the course's fully connected network", DenseParams, _dense),
        Architecture("deep", "several fully connected layers per side", DeepParams, _deep),
        Architecture("conv", "convolutional encoder and decoder", ConvParams, _conv),
        Architecture(
            "denoising", "trained to remove noise from its input", DenoisingParams, _denoising
        ),
        Architecture("sparse", "L1 or KL sparsity on a wider code", SparseParams, _sparse),
        Architecture("vae", "variational; scores the mean path", VaeParams, _vae),
        Architecture(
            "contractive", "penalises the encoder's Jacobian", ContractiveParams, _contractive
        ),
        Architecture("seq2seq", "GRUs over the image rows", Seq2SeqParams, _seq2seq),
    )
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


def parse_params(name: str, pairs: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (as given to --arch-param) typed by `name`'s parameter fields."""
    hints = typing.get_type_hints(architecture(name).params)
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not equals or not key:
            raise ArchitectureError(f"--arch-param {pair!r}: expected KEY=VALUE")
        kind = hints.get(key, str)  # an unknown key is reported by resolve_params
        try:
            parsed[key] = kind(text) if kind in (int, float) else text
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ArchitectureError(f"{name}: {key} must be {what} (got {text!r})") from None
    return parsed


def build_autoencoder(name: str, shape: ImageShape, params: Mapping[str, Any]) -> Autoencoder:
    """A freshly initialised network (initialisation draws from torch's global generator)."""
    return architecture(name).builder(shape, _params(name, params))
