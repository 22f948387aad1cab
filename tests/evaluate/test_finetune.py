"""Fine-tuning: layer decay, Mixup/CutMix, token dropping, and an end-to-end run with multi-view testing."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax.evaluate import finetune, mixup
from mvm_jax.models import mae as mae_lib
from mvm_jax.models import vit
from mvm_jax.train import optimizer


def test_layer_decay_scales():
  params = {
    'encoder': {
      'patch_embed': {'proj': {'kernel': 0}},
      'cls_token': 0,
      'block0': {'w': 0},
      'block2': {'w': 0},
      'norm': {'scale': 0},
    },
    'head': {'kernel': 0},
  }
  scales = optimizer.layer_decay_scales(params, depth=3, decay=0.5)
  assert scales['encoder']['patch_embed']['proj']['kernel'] == 0.5**4
  assert scales['encoder']['cls_token'] == 0.5**4
  assert scales['encoder']['block0']['w'] == 0.5**3
  assert scales['encoder']['block2']['w'] == 0.5**1
  assert scales['encoder']['norm']['scale'] == 1.0 and scales['head']['kernel'] == 1.0


def test_smooth_one_hot():
  t = mixup.smooth_one_hot(jnp.array([1, 0]), 4, 0.1)
  np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(t[0], [0.025, 0.925, 0.025, 0.025], rtol=1e-6)


@pytest.mark.parametrize('mix,cut', [(0.8, 0.0), (0.0, 1.0)])
def test_mix_batch_is_a_convex_mix_consistent_with_the_targets(mix, cut):
  rng = jax.random.PRNGKey(3)
  video = jax.random.normal(rng, (4, 2, 8, 8, 3))
  targets = jax.nn.one_hot(jnp.arange(4), 4)
  mixed, mixed_targets = mixup.mix_batch(
    jax.random.PRNGKey(0), video, targets, mixup_alpha=mix, cutmix_alpha=cut, switch_prob=0.5, prob=1.0
  )
  np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
  lam = float(mixed_targets[0, 0])  # sample 0 mixed with sample 3 (the reversed batch)
  assert float(mixed_targets[0, 3]) == pytest.approx(1 - lam, abs=1e-6)
  if cut:  # pixels come from one of the two clips, the same box in every frame; λ = unpasted share
    from_self = np.isclose(mixed[0], video[0]).all(-1)
    assert (from_self[0] == from_self[1]).all()
    assert from_self.mean() == pytest.approx(lam, abs=1e-6)
  else:
    np.testing.assert_allclose(mixed[0], lam * video[0] + (1 - lam) * video[3], rtol=1e-5, atol=1e-5)


def test_mix_batch_with_prob_zero_changes_nothing():
  video = jnp.ones((2, 1, 4, 4, 3))
  targets = jax.nn.one_hot(jnp.arange(2), 2)
  out, t = mixup.mix_batch(
    jax.random.PRNGKey(0), video, targets, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, prob=0.0
  )
  np.testing.assert_array_equal(out, video)
  np.testing.assert_array_equal(t, targets)


@pytest.mark.parametrize('ratio', [0.0, 0.5, 0.75])
def test_token_keep_count_follows_the_ratio(ratio):
  keep = mixup.finetune_token_keep(jax.random.PRNGKey(0), 3, 64, jnp.float32(ratio))
  np.testing.assert_array_equal(keep.sum(1), round(64 * (1 - ratio)))


def test_mask_ratio_cosine_schedule():
  assert float(finetune.mask_ratio_at(0, 100, 0.5)) == pytest.approx(0.5)
  assert float(finetune.mask_ratio_at(50, 100, 0.5)) == pytest.approx(0.25)
  assert float(finetune.mask_ratio_at(100, 100, 0.5)) == pytest.approx(0.0, abs=1e-7)


def test_dropped_tokens_do_not_reach_the_classifier(config):
  clf = mae_lib.classifier_from_config(config, num_classes=3)
  video = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 32, 32, 3))
  params = clf.init({'params': jax.random.PRNGKey(1)}, video)['params']
  params = jax.tree.map(lambda p: p + 0.01, params)  # non-zero head
  n = int(np.prod(clf.encoder.grid))
  keep = mixup.finetune_token_keep(jax.random.PRNGKey(2), 2, n, jnp.float32(0.5))
  apply = jax.jit(lambda v, k: clf.apply({'params': params}, v, token_keep=k))
  logits = apply(video, keep)
  patches = vit.patchify(video, clf.encoder.patch)
  noisy = vit.unpatchify(
    jnp.where(keep[..., None], patches, patches * 7.0), clf.encoder.grid, clf.encoder.patch
  )
  np.testing.assert_allclose(apply(noisy, keep), logits, atol=1e-4)
  everything = jnp.ones((2, n), bool)
  np.testing.assert_allclose(apply(video, everything), clf.apply({'params': params}, video), atol=1e-5)


@pytest.mark.slow
def test_finetune_end_to_end_with_multiview_testing(config, tmp_path):
  from mvm_jax.config import sibling_config
  from mvm_jax.train import loop
  from tests.conftest import REPO

  config.total_steps = 2
  pretrain_dir = tmp_path / 'pretrain'
  loop.train_and_evaluate(config, str(pretrain_dir))

  ft = sibling_config(str(REPO / 'configs' / 'x.py'), 'finetune').get_config('tiny')
  ft.init_from = str(pretrain_dir)
  ft.data.update(num_workers=0, eval_temporal_views=2, eval_spatial_views=3, repeated_sampling=1)
  ft.batch_size, ft.total_steps, ft.warmup_steps = 8, 4, 1
  ft.mesh.shape = (1, 1, 1)
  ft.finetune.update(eval_every_steps=100, mask_ratio=0.5, eval_batch_size=12)
  ft.async_checkpointing = False
  result = finetune.finetune_and_evaluate(ft, str(tmp_path / 'ft'))
  assert result['step'] == 4
  ev = result['eval']
  assert ev['views_per_video'] == 6 and ev['num_test'] == 20  # builtin test_windows
  assert 0.0 <= ev['top1'] <= 100.0 and ev['top5'] >= ev['top1']
  saved = json.load(open(tmp_path / 'ft' / 'results.json'))['finetune']
  assert saved['top1'] == ev['top1']
  assert os.path.exists(tmp_path / 'ft' / 'finetune_confusion.png')
