"""The `auto` defaults of `pixelwatch train`: architecture, code size and metric from the data.

The rule (`pixelwatch train --help` and docs/training.md say the same); a flag given always wins,
only what is left `auto` is chosen:

- Fewer than `MANY_IMAGES` images (the course trains on two): the course's model, `dense`
  with its own sizes (code 4) and the `hamming` metric. The course's demo is unchanged.
- `MANY_IMAGES` or more: `conv` with a code of `code_for(pixels)` = 4 x sqrt(pixels),
  rounded, within [`MIN_CODE`, `MAX_CODE`] (32 at 8x8, 112 at 28x28), scored by the `memory`
  metric (the distance to the nearest stored training code). With that many images the
  memory bank holds enough codes to cover a broad normal class, and on the digits
  benchmark's leave-one-out protocol (nine kinds of normal image, a novelty of a tenth)
  conv with a 32-wide code and `memory` is the best configuration in both modes, where the
  course's dense network with Hamming is among the weakest. The code size was compared at
  8, 16, 32 and 64 on 8x8 images (docs/benchmarks.md, *What was tuned on what*); that it
  grows with the square root of the pixel count beyond is an assumption, not a measurement.
- A code size is chosen only with the architecture: `--arch conv` alone keeps conv's own
  default code, as any explicit architecture keeps its own sizes.

No choice here needs anomalies, so none are synthesised: the choice depends only on how
many images there are and their size. Synthetic anomalies made from normal digits (noise,
occlusion, two images mixed, shifts) were tried for choosing between `memory` and
`combined`, and ranked `combined` first where the digits' real novelties rank `memory`
first; they are pixel-level defects, not new kinds of image.

>>> choose(2, ImageShape(8, 8), "auto", {}, "auto").describe()
"arch dense, code 4, metric hamming: the course's model, for 2 images (fewer than 100)"
>>> choose(1130, ImageShape(8, 8), "auto", {}, "dice").describe()
'arch conv, code 32: for 1130 images (100 or more)'
>>> [code_for(ImageShape(side, side).size) for side in (2, 8, 16, 28, 64)]
[8, 32, 64, 112, 128]
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from model_export.architectures import resolve_params
from service.scoring.images import ImageShape
from service.scoring.model import DefaultsChoice
from service.scoring.similarity import METRICS, MetricName

AUTO: Final = "auto"
MANY_IMAGES: Final = 100  # images; the same count from which training holds images out
COURSE_ARCH: Final = "dense"
COURSE_METRIC: Final[MetricName] = "hamming"
MANY_ARCH: Final = "conv"
MANY_METRIC: Final[MetricName] = "memory"
CODE_PER_ROOT_PIXEL: Final = 4
MIN_CODE: Final = 8
MAX_CODE: Final = 128

Setting = Literal["arch", "code", "metric"]


def code_for(pixels: int) -> int:
    """4 x sqrt(pixels), rounded, within [MIN_CODE, MAX_CODE]: 32 for 8x8 images."""
    return min(MAX_CODE, max(MIN_CODE, round(CODE_PER_ROOT_PIXEL * math.sqrt(pixels))))


@dataclass(frozen=True)
class Choice:
    """The architecture, its parameters and the metric to train with, and what was chosen."""

    rule: Literal["course", "many-images"]
    images: int
    arch: str
    arch_params: Mapping[str, Any]  # as given, plus the chosen code size
    metric: MetricName
    chosen: tuple[Setting, ...]  # left to auto

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
            why = f"for {self.images} images ({MANY_IMAGES} or more)"
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
        )


def choose(
    images: int, shape: ImageShape, arch: str, params: Mapping[str, Any], metric: str
) -> Choice:
    """Resolve `auto` for the architecture (with its code size) and the metric."""
    many = images >= MANY_IMAGES
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
    resolve_params(arch, chosen_params)  # parameters given for auto must suit the choice
    return Choice(
        rule="many-images" if many else "course",
        images=images,
        arch=arch,
        arch_params=chosen_params,
        metric=metric,
        chosen=tuple(chosen),
    )
