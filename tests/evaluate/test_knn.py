"""mvm_jax.evaluate.knn: weighted k-NN votes against a NumPy reference."""

import numpy as np

from mvm_jax.evaluate import knn


def _knn_reference(train_x, train_y, test_x, num_classes, k, temperature):
  """Straightforward weighted k-NN: per query, sort by cosine similarity, sum exp(sim/τ) per label."""
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sims = unit(test_x.astype(np.float64)) @ unit(train_x.astype(np.float64)).T
  votes = np.zeros((test_x.shape[0], num_classes))
  for q in range(test_x.shape[0]):
    for j in np.argsort(-sims[q])[: min(k, train_x.shape[0])]:
      votes[q, train_y[j]] += np.exp(sims[q, j] / temperature)
  return votes


def test_knn_votes_match_numpy_reference():
  rng = np.random.default_rng(0)
  train_x, test_x = rng.standard_normal((30, 6)), rng.standard_normal((7, 6))
  train_y = rng.integers(0, 4, 30)
  ks = (1, 3, 10, 100)
  scores = knn.knn_scores(train_x, train_y, test_x, 4, ks, temperature=0.07, chunk_size=3)
  for k in ks:
    np.testing.assert_allclose(scores[k], _knn_reference(train_x, train_y, test_x, 4, k, 0.07), rtol=1e-4)
  # k beyond the train set is clipped: every train clip votes.
  np.testing.assert_allclose(scores[100], _knn_reference(train_x, train_y, test_x, 4, 30, 0.07), rtol=1e-4)
