"""`make eval-digits`: detection quality on scikit-learn's bundled 8x8 digits, two protocols.

The protocols (docs/benchmarks.md ("Detection quality") explains the choices):

- Data: `sklearn.datasets.load_digits` (1797 images, 8x8, values 0..16, no download),
  scaled to [0, 1]. Gray mode uses these values; binary mode thresholds them at 0.5
  (a pixel is black when its value is >= 0.5, the course's convention). The optional
  `binary-as-gray` mode feeds the thresholded images to gray-mode models.
- one-class: one digit is normal at a time. For each digit d and repetition r, the images
  of d are shuffled with a seed made of (protocol seed, r, d); the first 70% train, the
  other 30% are the normal test images, and every image of the nine other digits is an
  anomaly.
- leave-one-out: one digit is held out as the anomaly at a time; the images of the nine
  others are shuffled (their own seed stream), 70% train, 30% are the normal test images,
  and every image of the held-out digit is an anomaly.
- Every autoencoder trains with the shared loop (`train.train`, seeded by the split) on the
  same training images and is scored by the scoring graph `train` exports
  (`export.scoring_graph`: memory bank included, calibrated leave-one-out), run in torch;
  the parity tests hold it to the ONNX graph within 1e-5. The anomaly score is the negated
  similarity. The baselines (`baselines`) fit and score the same images.
- AUROC per run (scikit-learn); the tables show the mean over digits and repetitions, and
  the standard deviation of the per-repetition means.

Modules: `protocol` (data, splits, the runs), `baselines` (the classical detectors), `table`
(summaries, targets, markdown), `command` (the command line), `memory_cost` (graph size and
scoring speed against the memory bank's size). Run `python -m model_export.digits --help`
for the knobs; the defaults are the published run.
"""
