"""Evaluation of frozen pre-trained encoders: features, linear probe, k-NN, reports.

- :mod:`frozen`: the evaluated config and encoder, from a pre-training workdir
  (``init_from``) or randomly initialised.
- :mod:`features`: pooled encoder features over the eval loaders, cached in
  the workdir.
- :mod:`linear_probe`: standardisation + linear classifier on cached features.
- :mod:`knn`: weighted k-NN (cosine similarity, exp(sim/τ) votes).
- :mod:`report`: top-k accuracy, confusion matrix PNG, ``results.json``.
- :mod:`evaluators`: periodic evaluators during pre-training (``config.evaluators``):
  k-NN, ridge probe, feature statistics, against random-init and raw-pixel floors.
- :mod:`cli`: what the ``mvm_jax.linear_probe`` / ``mvm_jax.knn`` entry points share.
"""
