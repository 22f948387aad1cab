"""mvm_jax.evaluate.report: top-k accuracy, multi-view averaging, confusion matrix."""

import numpy as np
import pytest

from mvm_jax.evaluate import report


def test_topk_clips_to_classes_and_views_average():
  scores = np.array([[0.1, 0.5, 0.4], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], np.float32)
  labels = np.array([2, 0, 2])
  assert report.topk_accuracy(scores, labels, 1) == pytest.approx(200 / 3)
  assert report.topk_accuracy(scores, labels, 5) == 100.0  # top-5 of 3 classes
  averaged, record_labels = report.aggregate_views(scores, labels, np.array([4, 1, 4]))
  np.testing.assert_allclose(averaged, [[0.6, 0.3, 0.1], [0.15, 0.35, 0.5]], rtol=1e-6)
  np.testing.assert_array_equal(record_labels, [0, 2])
  cm = report.confusion_matrix(np.array([1, 0, 2]), labels, 3)
  np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 0, 0], [0, 1, 1]])
