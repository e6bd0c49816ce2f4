"""Classical one-class detectors, the yardsticks of the digits benchmark (scikit-learn).

Each baseline fits on normal training images and returns a scorer for test images (so that
fitting and scoring can be timed apart); a higher score means more anomalous. Their
settings are fixed, common defaults, not tuned on the benchmark:

- PCA reconstruction error: squared error after projecting onto 8, 16 or 32 principal
  components (8 is the code size of the default architectures, 16 the usual reference on
  the leave-one-out protocol; fewer if there are fewer training images).
- IsolationForest: scikit-learn's defaults (100 trees), seeded; score = -score_samples.
- kNN distance: Euclidean distance to the k-th nearest training image, k = 1 and k = 5
  (k = 5 is PyOD's default; k = 1 is the plain nearest neighbour).

>>> import numpy as np
>>> train = np.zeros((4, 3), dtype=np.float32); train[:, 0] = [0.0, 0.1, 0.2, 0.3]
>>> test = np.asarray([[0.1, 0.0, 0.0], [0.1, 1.0, 0.0]], dtype=np.float32)
>>> [round(float(s), 3) for s in BASELINES["kNN (k=1)"](train, 0)(test)]
[0.0, 1.0]
"""

from collections.abc import Callable
from typing import Final

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors

from service.scoring.images import Pixels

PCA_COMPONENTS: Final = (8, 16, 32)
Scores = NDArray[np.float64]
Scorer = Callable[[Pixels], Scores]
Baseline = Callable[[Pixels, int], Scorer]  # (training images, seed) -> scorer


def pca_error(components: int) -> Baseline:
    def fit(train: Pixels, seed: int) -> Scorer:
        pca = PCA(n_components=min(components, *train.shape), random_state=seed).fit(train)

        def score(test: Pixels) -> Scores:
            rebuilt = pca.inverse_transform(pca.transform(test))
            return np.asarray(((test - rebuilt) ** 2).sum(axis=1), dtype=np.float64)

        return score

    return fit


def isolation_forest(train: Pixels, seed: int) -> Scorer:
    forest = IsolationForest(random_state=seed).fit(train)
    return lambda test: -np.asarray(forest.score_samples(test), dtype=np.float64)


def knn_distance(k: int) -> Baseline:
    def fit(train: Pixels, seed: int) -> Scorer:
        neighbours = NearestNeighbors(n_neighbors=min(k, len(train))).fit(train)

        def score(test: Pixels) -> Scores:
            distances, _ = neighbours.kneighbors(test)
            return np.asarray(distances[:, -1], dtype=np.float64)

        return score

    return fit


BASELINES: Final[dict[str, Baseline]] = {
    **{f"PCA-{n}": pca_error(n) for n in PCA_COMPONENTS},
    "IsolationForest": isolation_forest,
    "kNN (k=1)": knn_distance(1),
    "kNN (k=5)": knn_distance(5),
}
