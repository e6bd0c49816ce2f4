"""`make eval-digits`: one-class detection quality on scikit-learn's bundled 8x8 digits.

The protocol (the README's "Detection quality" section explains the choices):

- Data: `sklearn.datasets.load_digits` (1797 images, 8x8, values 0..16, no download),
  scaled to [0, 1]. Gray mode uses these values; binary mode thresholds them at 0.5
  (a pixel is black when its value is >= 0.5, the course's convention). The optional
  `binary-as-gray` mode feeds the thresholded images to gray-mode models.
- One class is normal at a time. For each class c and repetition r, the images of c are
  shuffled with a seed made of (protocol seed, r, c); the first 70% train, the other 30%
  are the normal test images, and every image of the nine other classes is an anomaly.
- Every autoencoder trains with the shared loop (`train.train`, seeded by the split) on the
  same training images and is scored by the export wrapper (`export.ScoringGraph`, which
  the parity tests hold to the ONNX graph within 1e-5); the anomaly score is the negated
  similarity. The baselines (`baselines`) fit and score the same images.
- AUROC per run (scikit-learn); the table shows the mean over classes and repetitions, and
  the standard deviation of the per-repetition means.

Modules: `protocol` (data, splits, the runs), `baselines` (the classical detectors), `table`
(summary, verdicts, markdown), `command` (the command line). Run
`python -m model_export.digits --help` for the knobs; the defaults are the published run.
"""
