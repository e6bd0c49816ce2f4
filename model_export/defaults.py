"""The `auto` defaults of `pixelwatch train`: architecture, code size and metric from the data.

The rule (`pixelwatch train --help` and docs/training.md say the same); a flag given always
wins, only what is left `auto` is chosen:

- Fewer than `MANY_IMAGES` images (the course trains on two): the course's model, `dense`
  with its own sizes (code 4) and the `hamming` metric. The course's demo is unchanged.
- `MANY_IMAGES` or more, of *one kind* (their `likeness` is at least `ONE_KIND_LIKENESS`):
  the course's model too. An encoder that saw one kind of image maps other kinds near its
  codes, so the memory metric is weak there and reconstruction is what separates.
- `MANY_IMAGES` or more, of *many kinds* (likeness below `ONE_KIND_LIKENESS`): `conv` with
  a code of `code_for(pixels)` = 4 x sqrt(pixels), rounded, within [`MIN_CODE`,
  `MAX_CODE`] (32 at 8x8, 112 at 28x28), scored by the `memory` metric (the distance to
  the nearest stored training code): a novelty is then a new kind, far from every stored
  code, while the decoder learns to reconstruct it.
- A code size is chosen only with the architecture: `--arch conv` alone keeps conv's own
  default code, as any explicit architecture keeps its own sizes.

`likeness` is the mean cosine similarity between each image and the mean image, both
thresholded at 0.5 (the course's ink): images of one kind share their strokes, so each is
close to their mean; images of many kinds average to a blur that is close to none. It is
measured on the normal training images only. `ONE_KIND_LIKENESS` lies between the digits'
two cases: every digit's images alone measure above it, every nine digits' images below,
in gray and binary mode, at 8x8 and upscaled to 28x28, and with as few images of the nine
digits as one digit has (tests/test_defaults.py holds the rule to that). The image count
cannot tell the two apart: in a probe with about 125 images of nine digits, conv with
`memory` still ranked above the course's model on each held-out digit tried.

Synthetic anomalies made from normal digits (noise, occlusion, two images mixed, shifts)
were tried for this choice and rejected: they ranked `memory` above Hamming for one digit,
where the digits' real novelties rank Hamming far above it. They are pixel-level defects,
not new kinds of image.

>>> ones = np.zeros((2, 64), dtype=np.float32); ones[:, :8] = 1.0
>>> choose(ones, ImageShape(8, 8), "auto", {}, "auto").describe()
"arch dense, code 4, metric hamming: the course's model, for 2 images (fewer than 100)"
>>> [code_for(ImageShape(side, side).size) for side in (2, 8, 16, 28, 64)]
[8, 32, 64, 112, 128]
>>> round(likeness(np.eye(4, dtype=np.float32)), 3), likeness(np.ones((3, 4), np.float32))
(0.5, 1.0)
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np

from model_export.architectures import ArchitectureError, resolve_params
from service.scoring.images import ImageShape, Pixels
from service.scoring.model import DefaultsChoice
from service.scoring.similarity import METRICS, MetricName

AUTO: Final = "auto"
MANY_IMAGES: Final = 100  # images; the same count from which training holds images out
ONE_KIND_LIKENESS: Final = 0.80  # likeness from which images count as one kind
INK: Final = 0.5  # likeness compares images thresholded here, as binary mode does
COURSE_ARCH: Final = "dense"
COURSE_METRIC: Final[MetricName] = "hamming"
MANY_ARCH: Final = "conv"
MANY_METRIC: Final[MetricName] = "memory"
CODE_PER_ROOT_PIXEL: Final = 4
MIN_CODE: Final = 8
MAX_CODE: Final = 128

Setting = Literal["arch", "code", "metric"]
Rule = Literal["course", "one-kind", "many-kinds"]


def code_for(pixels: int) -> int:
    """4 x sqrt(pixels), rounded, within [MIN_CODE, MAX_CODE]: 32 for 8x8 images."""
    return min(MAX_CODE, max(MIN_CODE, round(CODE_PER_ROOT_PIXEL * math.sqrt(pixels))))


def likeness(pixels: Pixels) -> float:
    """Mean cosine similarity of each image to the mean image, both thresholded at INK.

    1.0 when the images are all alike, or when the mean has no ink (nothing to tell kinds
    apart by); a blank image counts as unlike the mean (0).
    """
    ink = np.asarray(pixels, dtype=np.float64) >= INK
    mean = ink.mean(axis=0)
    centre = float(np.linalg.norm(mean))
    if centre == 0.0:
        return 1.0
    norms = np.sqrt(ink.sum(axis=1))
    dots = ink @ mean
    cosines = np.divide(dots, norms * centre, out=np.zeros_like(dots), where=norms > 0)
    return float(np.mean(cosines))


@dataclass(frozen=True)
class Choice:
    """The architecture, its parameters and the metric to train with, and what was chosen."""

    rule: Rule
    images: int
    arch: str
    arch_params: Mapping[str, Any]  # as given, plus the chosen code size
    metric: MetricName
    chosen: tuple[Setting, ...]  # left to auto
    likeness: float | None = None  # measured from MANY_IMAGES images on

    @property
    def code(self) -> int:
        return int(resolve_params(self.arch, self.arch_params)["code"])

    def describe(self) -> str:
        """What was chosen (the code size with the architecture), and why."""
        parts = [f"arch {self.arch}, code {self.code}"] if "arch" in self.chosen else []
        parts += [f"metric {self.metric}"] if "metric" in self.chosen else []
        if self.rule == "course":
            why = f"the course's model, for {self.images} images (fewer than {MANY_IMAGES})"
        else:
            kind = "one kind" if self.rule == "one-kind" else "many kinds"
            sign = ">=" if self.rule == "one-kind" else "<"
            why = (
                f"for {self.images} images of {kind} (likeness {self.likeness:.3f} {sign} "
                f"{ONE_KIND_LIKENESS:.2f})"
            )
        return f"{', '.join(parts)}: {why}"

    def metadata(self) -> DefaultsChoice | None:
        """What the model file records; None when every setting was given as a flag."""
        if not self.chosen:
            return None
        return DefaultsChoice(
            rule=self.rule,
            images=self.images,
            chosen=list(self.chosen),
            arch=self.arch,
            code=self.code,
            metric=self.metric,
            likeness=self.likeness,
        )


def choose(
    pixels: Pixels, shape: ImageShape, arch: str, params: Mapping[str, Any], metric: str
) -> Choice:
    """Resolve `auto` for the architecture (with its code size) and the metric from the
    normal images `pixels` [N, pixels]."""
    images = len(pixels)
    rule: Rule = "course"
    similar = None
    if images >= MANY_IMAGES and AUTO in (arch, metric):
        similar = likeness(pixels)
        rule = "one-kind" if similar >= ONE_KIND_LIKENESS else "many-kinds"
    many = rule == "many-kinds"
    chosen: list[Setting] = []
    chosen_params = dict(params)
    if arch == AUTO:
        chosen.append("arch")
        arch = MANY_ARCH if many else COURSE_ARCH
        if many and "code" not in params:
            chosen.append("code")
            chosen_params["code"] = code_for(shape.size)
    if metric == AUTO:
        chosen.append("metric")
        metric = MANY_METRIC if many else COURSE_METRIC
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    if "arch" in chosen:  # parameters given for auto must suit the choice
        try:
            resolve_params(arch, chosen_params)
        except ArchitectureError as exc:
            raise ArchitectureError(f"--arch auto chose {arch}: {exc}") from None
    return Choice(
        rule=rule,
        images=images,
        arch=arch,
        arch_params=chosen_params,
        metric=metric,
        chosen=tuple(chosen),
        likeness=similar,
    )
