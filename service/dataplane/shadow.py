"""Shadow scoring: a candidate model scores every batch beside the live one.

The live batch is decoded once; the shadow reuses its pixels, so a shadow costs one more
onnxruntime call per batch plus one small record per image for the shadow topic. Its
verdicts never reach the scores or anomalies topics and never hold up an offset commit: a
shadow that fails, or whose records the broker refuses, is counted and logged, and the live
path goes on as if there were none.

A shadow record, keyed by the image's id like its score:

    {"id": "cam-7/000123", "agree": false,
     "live": {"version": "20261126T171150Z", "sha256": "e3eb…",
              "similarity": 0.61, "anomaly": false},
     "shadow": {"version": "20261203T090000Z", "sha256": "77a0…",
                "similarity": 0.55, "anomaly": true}}
"""

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np
import orjson
from numpy.typing import NDArray

if TYPE_CHECKING:  # pipeline.py refers to ShadowVerdicts: no import cycle at run time
    from service.dataplane.pipeline import BatchResult, BatchScorer, Header

HEADER_SHADOW_VERSION: Final = "pixelwatch.shadow.version"
HEADER_SHADOW_SHA256: Final = "pixelwatch.shadow.sha256"


@dataclass(slots=True)
class ShadowVerdicts:
    """What the shadow said about one batch, row i for scored image i of the live result."""

    version: str
    sha256: str
    similarity: NDArray[np.float32]
    anomaly: NDArray[np.bool_]
    difference: NDArray[np.float32]  # shadow similarity minus live similarity
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    headers: "list[Header]" = field(default_factory=list)

    @property
    def images(self) -> int:
        return len(self.similarity)


class ShadowScorer:
    """Scores a live batch result again with `scorer`'s model, metric and threshold (as the
    candidate would be configured if it were live)."""

    def __init__(self, scorer: "BatchScorer") -> None:
        self.scorer = scorer
        model = scorer.model
        self._ref: Final = {"version": model.version, "sha256": model.sha256}

    @property
    def version(self) -> str:
        return self.scorer.model.version

    @property
    def sha256(self) -> str:
        return self.scorer.model.sha256

    def score(self, live: "BatchScorer", result: "BatchResult") -> ShadowVerdicts:
        scorer = self.scorer
        scored = scorer.model.score(result.pixels, metric=scorer.metric, threshold=scorer.threshold)
        similarity, anomaly = scored.similarity, scored.anomaly
        verdicts = ShadowVerdicts(
            version=self.version,
            sha256=self.sha256,
            similarity=similarity,
            anomaly=anomaly,
            difference=similarity - result.similarity,
        )
        live_ref = {"version": live.model.version, "sha256": live.model.sha256}
        agree = (anomaly == result.anomaly).tolist()
        for row, (key, live_sim, live_flag, sim, flag) in enumerate(
            zip(
                result.keys,
                result.similarity.tolist(),
                result.anomaly.tolist(),
                similarity.tolist(),
                anomaly.tolist(),
                strict=True,
            )
        ):
            body = {
                "id": key.decode(),
                "agree": agree[row],
                "live": {**live_ref, "similarity": live_sim, "anomaly": live_flag},
                "shadow": {**self._ref, "similarity": sim, "anomaly": flag},
            }
            verdicts.records.append((key, orjson.dumps(body)))
        verdicts.headers = [
            *result.headers,
            (HEADER_SHADOW_VERSION, self.version.encode()),
            (HEADER_SHADOW_SHA256, self.sha256.encode()),
        ]
        return verdicts
