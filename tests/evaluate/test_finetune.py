"""mvm_jax.evaluate.finetune: the mask-ratio schedule, token dropping, and an end-to-end run with
multi-view testing."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mvm_jax.evaluate import finetune, mixup
from mvm_jax.methods import mae as mae_method
from mvm_jax.models import vit


def test_mask_ratio_cosine_schedule():
  assert float(finetune.mask_ratio_at(0, 100, 0.5)) == pytest.approx(0.5)
  assert float(finetune.mask_ratio_at(50, 100, 0.5)) == pytest.approx(0.25)
  assert float(finetune.mask_ratio_at(100, 100, 0.5)) == pytest.approx(0.0, abs=1e-7)


def test_dropped_tokens_do_not_reach_the_classifier(config):
  clf = mae_method.video_classifier(config, num_classes=3)
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
  from configs import finetune as finetune_config
  from mvm_jax.train import loop

  config.total_steps = 2
  pretrain_dir = tmp_path / 'pretrain'
  loop.train_and_evaluate(config, str(pretrain_dir))

  ft = finetune_config.get_config('tiny')
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
