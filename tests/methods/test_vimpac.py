"""VIMPAC and its VQ-VAE tokenizer through the training loop: the VQ-VAE trains
as a model, a trained run loads as the frozen tokenizer, VIMPAC tokenizes in
the step, shards like one device, and resumes without checkpointing the
frozen weights."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mvm_jax import config as config_lib
from mvm_jax import frozen_tokenizer, runs
from mvm_jax.data import transforms
from mvm_jax.train import loop


def vqvae_micro_config():
  from configs import vqvae

  c = vqvae.get_config('tiny')
  c.tokenizer.update(codebook_size=32, code_dim=8, widths=(8, 8, 8), num_res_blocks=1)
  c.data.update(crop_size=32, num_workers=0, repeated_sampling=2)
  c.batch_size = 4
  c.total_steps, c.warmup_steps = 2, 1
  c.mesh.shape = (1, 1, 1)
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.image_every_steps = 100
  c.async_checkpointing = False
  return c


def vimpac_micro_config(tokenizer_workdir: str):
  """4×4×4 tokens of a 32-code VQ-VAE; 1 factorized layer × 32; block masks; token CE + InfoNCE."""
  from configs import vimpac

  c = vimpac.get_config('tiny')
  c.tokenizer.workdir = tokenizer_workdir
  c.data.update(num_frames=4, crop_size=32, num_workers=0, repeated_sampling=1)
  c.vimpac.update(vocab_size=32, width=32, depth=1, num_heads=2)
  c.masking.num_blocks = 2
  c.contrastive.projector.update(hidden=32, out=16)
  c.batch_size = 8
  c.total_steps, c.warmup_steps = 3, 1
  c.mesh.shape = (1, 1, 1)
  c.log_every_steps = 1
  c.checkpoint_every_steps = 1
  c.image_every_steps = 100
  c.async_checkpointing = False
  return c


@pytest.fixture(scope='module')
def vq_run(tmp_path_factory):
  """A 2-step VQ-VAE run through the loop (its workdir is a tokenizer)."""
  workdir = str(tmp_path_factory.mktemp('vqvae'))
  result = loop.train_and_evaluate(vqvae_micro_config(), workdir)
  return workdir, result


def test_vqvae_trains_through_the_loop(vq_run):
  workdir, result = vq_run
  assert result['step'] == 2 and all(np.isfinite(result['losses']))
  metrics = result['history'][-1]
  assert (
    metrics['vq/recon_mse'] > 0 and 1.0 <= metrics['vq/perplexity'] <= 32 and 0 < metrics['vq/usage'] <= 1
  )
  assert glob.glob(os.path.join(workdir, 'images', 'reconstruction_step0000002_sample*.png'))
  # The EMA codebook (vq_stats) is trained state: it moved and was checkpointed.
  from mvm_jax import runs

  step, items = runs.latest_state_items(workdir, ('params', 'model_state'))
  assert step == 2 and int(items['model_state']['vq_stats']['quantizer']['count']) == 2


def test_trained_run_loads_as_the_frozen_tokenizer(vq_run):
  """Codes = the VQ-VAE's own encode of the pixels in its training space, whatever
  normalization the VIMPAC run uses."""
  workdir, _ = vq_run
  config = vimpac_micro_config(workdir)
  tok = frozen_tokenizer.load_frozen_tokenizer(config)
  assert (tok.vocab_size, tok.downsample) == (32, 8) and 'step 2' in tok.description
  pixels = np.random.default_rng(0).uniform(size=(2, 3, 32, 32, 3)).astype(np.float32)
  mean, std = np.asarray(transforms.IMAGENET_MEAN), np.asarray(transforms.IMAGENET_STD)
  want = tok.module.apply(tok.variables, (pixels - mean) / std, method='encode')
  np.testing.assert_array_equal(tok.tokenize(tok.variables, (pixels - mean) / std), want)
  assert want.shape == (2, 3, 4, 4) and len(np.unique(want)) > 1
  # A run normalizing differently hands the tokenizer the same pixels.
  config.data.update(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
  other = frozen_tokenizer.load_frozen_tokenizer(config)
  np.testing.assert_array_equal(other.tokenize(other.variables, (pixels - 0.5) / 0.25), want)


def _batches(config, n, seed=0):
  rng = np.random.default_rng(seed)
  d = config.data
  shape = (config.batch_size, 2, d.num_frames, d.crop_size, d.crop_size, 3)
  return [{'video': rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _train(config, batches, devices):
  exp, state = loop.build_experiment(config, samples_per_epoch=64, devices=devices)
  losses, metrics = [], []
  for host_batch in batches:
    state, m = exp.train_step(state, loop.global_batch(host_batch, exp.batch_sharding))
    losses.append(float(m['loss']))
    metrics.append(jax.device_get(m))
  return exp, jax.device_get(state), losses, metrics


@pytest.fixture(scope='module')
def vimpac_one_device(vq_run):
  config = vimpac_micro_config(vq_run[0])
  return config, *_train(config, _batches(config, 2), jax.devices()[:1])


def test_vimpac_step_scores_masked_tokenizer_codes(vq_run, vimpac_one_device):
  config, exp, state, losses, metrics = vimpac_one_device
  assert all(np.isfinite(losses))
  # The tokenizer rides along in the state, frozen: after training it is still the VQ run's checkpoint.
  _, items = runs.latest_state_items(vq_run[0], ('params', 'model_state'))
  want = jax.tree.leaves({'params': items['params'], **items['model_state']})
  got = jax.tree.leaves(state.frozen)
  assert len(got) == len(want) > 0
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
  m = metrics[0]
  for key in ('loss/token_ce', 'loss/infonce', 'token_ce/mask_accuracy', 'contrastive/accuracy'):
    assert key in m
  # Token CE starts near log(V) (uniform over 32 codes); masks are block masks.
  assert abs(float(m['loss/token_ce']) - np.log(32)) < 1.0
  assert 0.0 < float(m['token_ce/masked_fraction']) < 0.6
  # The model's targets are the tokenizer's codes of the clips (views flattened adjacent).
  video = jnp.asarray(_batches(config, 1)[0]['video'])
  flat = video.reshape((-1,) + video.shape[2:])
  tokens = exp.inputs.preprocess(state.frozen, flat)
  tok = frozen_tokenizer.load_frozen_tokenizer(config)
  np.testing.assert_array_equal(tokens, tok.tokenize(tok.variables, flat))
  mask = jnp.zeros(tokens.shape, bool).at[:, 0].set(True)
  out = exp.model.apply({'params': state.params, **state.model_state}, tokens, mask)
  np.testing.assert_array_equal(out['target_tokens'], tokens)
  assert out['logits'].shape == tokens.shape + (32,) and out['projection'].shape == (16, 16)


def test_vimpac_4x2_mesh_matches_one_device(vimpac_one_device):
  config, _, state1, losses1, _ = vimpac_one_device
  c = vimpac_micro_config(config.tokenizer.workdir)
  c.mesh.shape = (4, 2, 1)
  _, state8, losses8, _ = _train(c, _batches(c, 2), jax.devices()[:8])
  np.testing.assert_allclose(losses8, losses1, rtol=2e-5)

  def close(path, a, b):
    name = jax.tree_util.keystr(path)
    # A bias feeding BatchNorm has a zero gradient up to rounding, which Adam
    # blows up to lr-sized steps of either sign: not a sharding difference.
    if 'projector' in name and 'bias' in name and 'bn' not in name:
      return
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=name)

  jax.tree_util.tree_map_with_path(close, state8.params, state1.params)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6),
    state8.model_state,
    state1.model_state,
  )


@pytest.fixture(scope='module')
def vimpac_runs(vq_run, tmp_path_factory):
  """A 3-step VIMPAC run through `train_and_evaluate`, and the same run stopped after step 1 and resumed."""
  config = vimpac_micro_config(vq_run[0])
  root = tmp_path_factory.mktemp('vimpac')
  whole = loop.train_and_evaluate(config, str(root / 'whole'))
  part = str(root / 'part')
  first = loop.train_and_evaluate(config, part, stop_after_steps=1)
  rest = loop.train_and_evaluate(config, part)
  return config, str(root / 'whole'), whole, part, first, rest


def test_vimpac_resumes_without_checkpointing_the_tokenizer(vimpac_runs):
  _, _, whole, part, first, rest = vimpac_runs
  np.testing.assert_allclose(first['losses'] + rest['losses'], whole['losses'], rtol=1e-5)
  handlers = {'state': ocp.PyTreeCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(
    os.path.join(part, 'checkpoints'), item_names=('state', 'data'), item_handlers=handlers
  ) as manager:
    saved = manager.item_metadata(manager.latest_step())['state'].tree
  assert 'backbone' in saved['params'] and not saved.get('frozen')  # tokenizer weights: loaded, never saved
  assert glob.glob(os.path.join(part, 'images', 'tokens_step*.png'))


def test_probe_features_of_a_vimpac_run_are_its_backbone_on_tokenizer_codes(vimpac_runs):
  """The evaluation entry points see a VIMPAC run as an encoder: pixels → its
  tokenizer → the checkpoint's backbone; [CLS] or mean token features."""
  from configs import linear_probe
  from mvm_jax import runs
  from mvm_jax.evaluate import features, frozen
  from mvm_jax.methods import vimpac as vimpac_method

  config, workdir = vimpac_runs[0], vimpac_runs[1]
  probe = linear_probe.get_config('tiny')
  probe.init_from = workdir
  probe.mesh.shape = (1, 1, 1)
  encoder = frozen.load(probe, devices=jax.devices()[:1])
  assert encoder.config.model.name == 'vimpac' and encoder.step == 3
  assert encoder.config.data.crop_size == 32  # clip keys from the run
  video = np.random.default_rng(1).standard_normal((4, 4, 32, 32, 3)).astype(np.float32)
  batch = {'video': video, 'label': np.zeros(4, np.int32), 'index': np.arange(4, dtype=np.int32)}
  got_cls = features.make_extract_fn(encoder, 'cls')(encoder.params, batch)['features'][:, 0]
  got_mean = features.make_extract_fn(encoder, 'mean')(encoder.params, batch)['features'][:, 0]

  tok = frozen_tokenizer.load_frozen_tokenizer(config)
  _, params = runs.latest_params(workdir)
  cls, tokens_out = vimpac_method.backbone(config).apply(
    {'params': params['backbone']}, tok.tokenize(tok.variables, video)
  )
  np.testing.assert_allclose(got_cls, cls, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_mean, tokens_out.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-5)


def test_vimpac_config_errors_name_the_key(vq_run):
  config = vimpac_micro_config('')
  with pytest.raises(config_lib.ConfigError, match='tokenizer.workdir'):
    config_lib.validate(config)
  config = vimpac_micro_config(vq_run[0])
  config.objectives = {'pixel_mse': 1.0}
  with pytest.raises(config_lib.ConfigError, match='objectives.pixel_mse'):
    config_lib.validate(config)
  config = vimpac_micro_config(vq_run[0])
  config.masking.kind = 'random'
  with pytest.raises(config_lib.ConfigError, match='masking.kind'):
    config_lib.validate(config)
  config = vimpac_micro_config(vq_run[0])
  config.vimpac.vocab_size = 64
  with pytest.raises(config_lib.ConfigError, match='vimpac.vocab_size'):
    loop.build_experiment(config, samples_per_epoch=8, devices=jax.devices()[:1])
  config = vqvae_micro_config()
  config.data.crop_size = 36
  with pytest.raises(config_lib.ConfigError, match='tokenizer.widths'):
    config_lib.validate(config)
  config = vimpac_micro_config(vq_run[0])
  config.model.name = 'vit'
  with pytest.raises(config_lib.ConfigError, match='model.name'):
    config_lib.validate(config)


def test_finetune_starts_from_the_vimpac_backbone_and_tests(vimpac_runs, tmp_path):
  """Fine-tuning a VIMPAC run: its tokenizer in the step, its backbone under a [CLS] head."""
  from configs import finetune as finetune_config
  from mvm_jax import runs
  from mvm_jax.evaluate import finetune

  workdir = vimpac_runs[1]
  c = finetune_config.get_config('tiny')
  c.init_from = workdir
  c.update(batch_size=4, total_steps=2, warmup_steps=1, checkpoint_every_steps=2, async_checkpointing=False)
  c.mesh.shape = (1, 1, 1)
  c.data.update(num_workers=0, eval_temporal_views=1, eval_spatial_views=1)
  c.finetune.update(eval_every_steps=100, eval_batch_size=8)
  resolved = finetune.frozen.resolve_config(c)
  _, state = finetune.build_experiment(
    resolved, num_classes=8, samples_per_epoch=40, devices=jax.devices()[:1]
  )
  _, pretrained = runs.latest_params(workdir)
  jax.tree.map(
    np.testing.assert_array_equal, jax.device_get(state.params['backbone']), pretrained['backbone']
  )
  np.testing.assert_array_equal(state.params['head']['kernel'], 0.0)
  result = finetune.finetune_and_evaluate(c, str(tmp_path))
  assert result['step'] == 2 and np.isfinite(result['losses']).all()
  assert result['eval']['views_per_video'] == 1 and 0.0 <= result['eval']['top1'] <= 100.0
  resolved.finetune.mask_ratio = 0.5  # token dropping: pixel ViTs only
  with pytest.raises(config_lib.ConfigError, match=r'finetune\.mask_ratio.*VQ tokens'):
    finetune.build_experiment(resolved, num_classes=8, samples_per_epoch=40, devices=jax.devices()[:1])


def test_token_masker_reads_the_masking_section():
  """`masking` of a VIMPAC config → its block masker on the config's token map (the paper's
  5×16×16 for the 'small' preset), whose ratio default is the closed form for K blocks."""
  from configs import vimpac
  from mvm_jax.masking import blocks
  from mvm_jax.methods import vimpac as vimpac_method

  c = vimpac.get_config('small')
  shape = vimpac_method.token_shape(c)
  assert shape == (5, 16, 16)
  masker = vimpac_method.token_masker(c)
  np.testing.assert_array_equal(
    np.asarray(masker(jax.random.PRNGKey(7), 3)),
    np.asarray(blocks.block_mask(jax.random.PRNGKey(7), 3, shape, c.masking.num_blocks)),
  )
  assert c.masking.ratio == pytest.approx(blocks.expected_block_mask_ratio(shape, 5), abs=1e-4)
  c.masking.update(kind='iid', match_block_ratio=False, ratio=0.5, iid_exact_count=True)
  masks = np.asarray(vimpac_method.token_masker(c)(jax.random.PRNGKey(0), 4))
  assert masks.shape == (4, *shape) and (masks.sum(axis=(1, 2, 3)) == 640).all()  # exactly half


def test_evaluation_asks_the_method_for_depth_and_input_checks():
  """Fine-tuning's layer decay reads `encoder_depth`; evaluators of a VIMPAC run need its tokenizer's
  weights (`validate_evaluation_inputs`), a pixel MAE's need nothing."""
  from configs import mae_st
  from mvm_jax import methods

  config = vimpac_micro_config('')
  method = methods.get(config)
  assert method.encoder_depth(config) == config.vimpac.depth
  with pytest.raises(config_lib.ConfigError, match=r'config\.tokenizer\.workdir: evaluators'):
    method.validate_evaluation_inputs(config, 'evaluators')
  config.tokenizer.workdir = '/some/vqvae/run'
  method.validate_evaluation_inputs(config, 'evaluators')
  mae = mae_st.get_config('tiny')
  assert methods.get(mae).encoder_depth(mae) == mae.model.encoder.depth == 4
  methods.get(mae).validate_evaluation_inputs(mae, 'evaluators')
