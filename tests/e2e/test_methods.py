"""The HPM and ViC-MAE tiny presets train on the built-in clips with their
metrics moving the right way (slow: a few minutes on 2 cores)."""

import numpy as np
import pytest

from configs import hpm, vic_mae
from mvm_jax.train import loop
from tests.conftest import tiny_preset

pytestmark = pytest.mark.slow


def test_hpm_tiny_loss_rank_correlation_rises(tmp_path):
  result = loop.train_and_evaluate(tiny_preset(hpm, 60), str(tmp_path))
  corr = [h['hpm/loss_rank_corr'] for h in result['history']]
  assert corr[0] < 0.15  # the loss predictor starts uninformed
  assert corr[-1] > 0.3 and corr[-1] > corr[0] + 0.2, corr
  assert result['history'][-1]['hpm/hard_fraction'] > 0.05  # α has grown: the teacher picks patches


def test_vic_mae_tiny_contrastive_accuracy_rises_above_chance(tmp_path):
  c = tiny_preset(vic_mae, 200)
  result = loop.train_and_evaluate(c, str(tmp_path))
  history = result['history']
  chance = 1.0 / (2 * c.batch_size - 1)
  accuracy = np.mean([h['contrastive/accuracy'] for h in history[-3:]])
  assert accuracy > 2 * chance, accuracy
  assert history[-1]['loss/infonce'] < 0.8 * history[0]['loss/infonce']
  assert history[-1]['loss/pixel_mse'] < history[0]['loss/pixel_mse']
