"""Output records, written batch-wise: the encoding half of the hot path.

Building a dict per image and serialising it costs more than the rest of the path together.
So the parts that only change with the model (field names, the model reference, metric and
threshold) are serialised once, into a byte template; the numbers of a whole batch are
serialised in one orjson call (float32, shortest form) and split per image; each record is
then one `%` substitution. The output is the JSON the schemas describe
(deploy/schemas/score.schema.json and score-full.schema.json), field for field.

>>> encoder = RecordEncoder(b'{"version":"v1","sha256":"00"}', "hamming", 0.6, ("hamming",))
>>> import numpy as np
>>> [row] = encoder.numbers(np.array([[0.6875, 0.6875]], dtype=np.float32))
>>> encoder.compact(b'"img-1"', True, row, b'{"topic":"t","partition":0,"offset":7}', 42)
b'{"id":"img-1","anomaly":true,"similarity":0.6875,"scores":{"hamming":0.6875},"model":{"version":"v1","sha256":"00"},"source":{"topic":"t","partition":0,"offset":7},"ts":42}'
"""

from collections.abc import Sequence

import numpy as np
import orjson
from numpy.typing import NDArray

_BOOL = (b"false", b"true")


class RecordEncoder:
    """Compact and full score records for one model, metric and threshold."""

    def __init__(
        self, model_ref: bytes, metric: str, threshold: float, metrics: Sequence[str]
    ) -> None:
        scores = b",".join(orjson.dumps(m) + b":%s" for m in metrics)
        head = b'{"id":%s,"anomaly":%s,"similarity":%s,'
        self._compact = (
            head + b'"scores":{' + scores + b'},"model":' + model_ref + b',"source":%s,"ts":%d}'
        )
        self._verdict = (
            b'{"id":%s,"index":%d,"anomaly":%s,"similarity":%s,"scores":{' + scores + b'},"ts":%d}'
        )
        self._message = b'{"source":%s,"model":' + model_ref + b',"images":[%s],"dead":[%s]}'
        self._full = (
            head
            + b'"metric":'
            + orjson.dumps(metric)
            + b',"threshold":'
            + orjson.dumps(float(threshold))
            + b',"scores":{'
            + scores
            + b'},"model":'
            + model_ref
            + b',"pixels":%s,"reconstruction":%s,"source":%s,"ts":%d,"detected_at":%s}'
        )

    def verdict(
        self, ident: bytes, index: int, anomaly: bool, numbers: Sequence[bytes], ts: int
    ) -> bytes:
        """One image in a message's scores record (schemas.ImageVerdict)."""
        return self._verdict % (ident, index, _BOOL[anomaly], *numbers, ts)

    def message(self, source: bytes, verdicts: list[bytes], dead: list[tuple[int, str]]) -> bytes:
        """A multi-image message's scores record (schemas.MessageScores)."""
        dead_json = b",".join(b'{"index":%d,"reason":"%s"}' % (i, r.encode()) for i, r in dead)
        return self._message % (source, b",".join(verdicts), dead_json)

    def numbers(self, columns: NDArray[np.float32]) -> list[tuple[bytes, ...]]:
        """Rows of [similarity, score per metric] as JSON number texts: one orjson call and
        one split per column, not per row (a split per row was a fifth of a grouped batch)."""
        if not len(columns):
            return []
        texts = [
            # `[a,b,c]`: numbers contain no brackets or commas, so splitting is exact.
            orjson.dumps(np.ascontiguousarray(column), option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
            for column in np.asarray(columns).T
        ]
        return list(zip(*(text.split(b",") for text in texts), strict=True))

    def compact(
        self, ident: bytes, anomaly: bool, numbers: Sequence[bytes], source: bytes, ts: int
    ) -> bytes:
        return self._compact % (ident, _BOOL[anomaly], *numbers, source, ts)

    def full(
        self,
        ident: bytes,
        anomaly: bool,
        numbers: Sequence[bytes],
        pixels: NDArray[np.float32],
        reconstruction: NDArray[np.float32],
        source: bytes,
        ts: int,
        detected_at: bytes,
    ) -> bytes:
        return self._full % (
            ident,
            _BOOL[anomaly],
            *numbers,
            orjson.dumps(pixels, option=orjson.OPT_SERIALIZE_NUMPY),
            orjson.dumps(reconstruction, option=orjson.OPT_SERIALIZE_NUMPY),
            source,
            ts,
            detected_at,
        )
