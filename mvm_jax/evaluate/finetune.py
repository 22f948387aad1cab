"""End-to-end fine-tuning of a pre-trained encoder, with multi-view testing.

Encoder + zero-initialised linear head on the mean of patch tokens (mae_st's
VisionTransformer); AdamW with layer-wise lr decay, drop path, dropout,
Mixup/CutMix with label smoothing, optional token masking that decays from
`finetune.mask_ratio` to 0 (cosine; MAE-ST Table 11). Trains with the shared
loop (`mvm_jax.train.loop.fit`: sharded, resumable, SIGTERM-safe) and
evaluates every `finetune.eval_every_steps` and at the end on the test split,
averaging the softmax over each video's views (`data.eval_temporal_views` ×
`data.eval_spatial_views`).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
from absl import logging

from mvm_jax import config as config_lib
from mvm_jax import data as data_lib
from mvm_jax import methods
from mvm_jax.evaluate import features, frozen, mixup, report
from mvm_jax.export import checkpoints
from mvm_jax import sharding
from mvm_jax.train import loop, optimizer
from mvm_jax.train import state as state_lib


def validate(config) -> None:
  f = config.finetune
  for key in ('dropout', 'label_smoothing', 'mixup_prob', 'mixup_switch_prob'):
    if not 0.0 <= f[key] <= 1.0:
      raise config_lib.ConfigError(f'config.finetune.{key}: {f[key]} is outside [0, 1]')
  if not 0.0 <= f.mask_ratio < 1.0:
    raise config_lib.ConfigError(f'config.finetune.mask_ratio: {f.mask_ratio} is outside [0, 1)')
  if not 0.0 < f.layer_decay <= 1.0:
    raise config_lib.ConfigError(f'config.finetune.layer_decay: {f.layer_decay} is outside (0, 1]')
  if f.eval_every_steps <= 0:
    raise config_lib.ConfigError('config.finetune.eval_every_steps: must be positive')


def mask_ratio_at(step, total_steps: int, start_ratio: float):
  """Cosine decay of the fine-tuning mask ratio from `start_ratio` to 0."""
  progress = jnp.minimum(step / max(total_steps, 1), 1.0)
  return start_ratio * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))


def make_finetune_step(model, tx, schedule, config, num_classes: int, total_steps: int, inputs):
  """train_step(state, batch) -> (state, metrics) for batch {'video' [B, T, H, W, C], 'label' [B]}.

  `inputs` (a `ModelInputs`) normalises the uint8 pixels; its `preprocess(state.frozen, video)`,
  if set, turns the (mixed) pixels into the model's input (a VIMPAC backbone's tokens)."""
  f = config.finetune
  preprocess = inputs.preprocess
  num_tokens = math.prod(model.encoder.grid) if preprocess is None else 0

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    mix_rng, drop_rng, mask_rng = (jax.random.fold_in(rng, i) for i in range(3))
    targets = mixup.smooth_one_hot(batch['label'], num_classes, f.label_smoothing)
    video, targets = mixup.mix_batch(
      mix_rng,
      inputs.normalize(batch['video']),
      targets,
      mixup_alpha=f.mixup_alpha,
      cutmix_alpha=f.cutmix_alpha,
      switch_prob=f.mixup_switch_prob,
      prob=f.mixup_prob,
    )
    token_keep = None
    if f.mask_ratio > 0:
      ratio = mask_ratio_at(state.step, total_steps, f.mask_ratio)
      token_keep = mixup.finetune_token_keep(mask_rng, video.shape[0], num_tokens, ratio)

    kwargs = {'token_keep': token_keep} if preprocess is None else {}
    x = video if preprocess is None else preprocess(state.frozen, video)

    def loss_fn(params):
      logits = model.apply({'params': params}, x, deterministic=False, rngs={'dropout': drop_rng}, **kwargs)
      return optax.softmax_cross_entropy(logits, targets).mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      'loss': loss,
      'train/top1_vs_mixed_argmax': jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1)),
      'grad_norm': optax.tree.norm(grads),
      'lr': schedule(state.step),  # this update's lr of the peak group (head: layer-decay scale 1)
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def build_experiment(
  config, *, num_classes: int, samples_per_epoch: int, devices=None
) -> tuple[loop.Experiment, state_lib.TrainState]:
  """(experiment, initial state): classifier, optimizer with layer decay, jitted step, and the sharded
  state (encoder from `init_from`). `config`: resolved (`frozen.resolve_config`) and valid."""
  mesh = sharding.make_mesh(config.mesh, devices)
  f = config.finetune
  method = methods.get(config)
  depth = method.encoder_depth(config)
  encoder_input = method.encoder_input(config)
  backbone, tok = encoder_input.params_key, encoder_input.tokenizer
  if tok is not None and f.mask_ratio > 0:
    raise config_lib.ConfigError(
      f'config.finetune.mask_ratio: token dropping is for pixel ViT encoders, not a {method.name!r} '
      'encoder of VQ tokens'
    )
  model = method.classifier(config, num_classes, drop_path_rate=f.drop_path, dropout=f.dropout)
  # The frozen tokenizer (if any) runs in the step on the uint8 clips; its variables are not trained.
  inputs = methods.pixel_inputs(config, None if tok is None else tok.tokenize)
  frozen_variables = None if tok is None else tok.variables
  example = jnp.zeros((2, *encoder_input.example.shape[1:]), encoder_input.example.dtype)
  total_steps, warmup_steps = loop.schedule_lengths(config, samples_per_epoch)
  schedule = optimizer.make_schedule(config, total_steps, warmup_steps)

  def init_params(rng):
    return model.init({'params': rng, 'dropout': rng}, example)['params']

  rng = jax.random.PRNGKey(config.seed)
  with sharding.sharding_context(mesh, config.mesh.rules):
    abstract = state_lib.strip_boxes(jax.eval_shape(init_params, rng))
  tx = optimizer.make_finetune_optimizer(config, schedule, abstract, depth)
  state, shardings = state_lib.create_sharded_state(
    lambda r: {'params': init_params(r)}, tx, mesh, rng, rules=config.mesh.rules, frozen=frozen_variables
  )
  if frozen.pretrained_run(config.init_from):  # not for '' or 'random:RUN' (random init)
    step, pretrained = checkpoints.load_pretrained(config.init_from)
    weights = frozen.pick_params(pretrained[backbone], abstract[backbone], backbone)
    params = dict(state.params, **{backbone: jax.device_put(weights, shardings.params[backbone])})
    state = state.replace(params=params)
    logging.info('%s initialised from %s (step %d).', backbone.capitalize(), config.init_from, step)
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = make_finetune_step(model, tx, schedule, config, num_classes, total_steps, inputs)
  exp = loop.Experiment(
    config=ml_collections.FrozenConfigDict(config),
    mesh=mesh,
    method=None,
    model=model,
    inputs=inputs,
    masker=None,
    grid=method.token_grid(config),
    tx=tx,
    schedule=schedule,
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    steps_per_epoch=max(1, samples_per_epoch // config.batch_size),
    train_step=loop.jit_train_step(step_fn, mesh, config.mesh.rules, shardings, batch_sharding),
    abstract_state=state_lib.abstract_with_shardings(state, shardings),
    state_shardings=shardings,
    batch_sharding=batch_sharding,
    batch_keys=('video', 'label'),
  )
  return exp, state


def evaluate(exp: loop.Experiment, state: state_lib.TrainState, split: str | None = None) -> dict:
  """Multi-view test of `state` on `split` (default `finetune.test_split`): softmax averaged
  over each video's views → top-1/top-5 and confusion."""
  config = exp.config
  split = split or config.finetune.test_split
  dp = sharding.data_parallel_size(exp.mesh)
  batch_size = max(dp, (config.finetune.eval_batch_size // dp) * dp)
  loader, info = data_lib.make_loader(
    config.data, split=split, global_batch_size=batch_size, seed=config.seed, train=False
  )

  inputs = exp.inputs
  preprocess = inputs.preprocess

  def probabilities(params, frozen_variables, video):
    video = inputs.normalize(video)
    x = video if preprocess is None else preprocess(frozen_variables, video)
    return jax.nn.softmax(exp.model.apply({'params': params}, x))

  with sharding.sharding_context(exp.mesh, exp.config.mesh.rules):
    predict = jax.jit(probabilities, out_shardings=exp.batch_sharding)
  # Every process runs the same number of steps (padded; the shards may differ by a record),
  # keeps the probabilities of its own rows, and all rows are gathered at the end.
  from jax.experimental import multihost_utils

  local = batch_size // jax.process_count()
  steps = math.ceil(math.ceil(info.num_records / jax.process_count()) / local)
  d = config.data
  views = d.eval_temporal_views * d.eval_spatial_views
  rows = local * views  # per step and process, padded
  sample_shape = (d.num_frames, d.crop_size, d.crop_size, 3)  # until a batch shows it
  scores, labels, index, valid = [], [], [], []
  iterator = iter(loader)
  try:
    for _ in range(steps):
      host_batch = next(iterator, None)
      if host_batch is None:
        host_batch = {'video': np.zeros((0, *sample_shape), np.uint8), 'label': [], 'index': []}
      video = np.asarray(host_batch['video'])
      video = video.reshape((-1,) + video.shape[-4:])  # [b * V, T, H, W, C], views of a clip together
      sample_shape, n = video.shape[1:], video.shape[0]
      video = np.concatenate([video, np.zeros((rows - n, *sample_shape), video.dtype)])
      for key, out in (('label', labels), ('index', index)):
        out.append(np.pad(np.repeat(np.asarray(host_batch[key], np.int32), views), (0, rows - n)))
      valid.append(np.arange(rows) < n)
      for start in range(0, rows, local):
        chunk = jax.make_array_from_process_local_data(exp.batch_sharding, video[start : start + local])
        probs = predict(state.params, state.frozen, chunk)
        probs = multihost_utils.global_array_to_host_local_array(probs, exp.mesh, exp.batch_sharding.spec)
        scores.append(np.asarray(probs))  # [local, classes]: this process's rows
  finally:
    iterator.close()
  gathered = multihost_utils.process_allgather(
    {
      'scores': np.concatenate(scores),
      'label': np.concatenate(labels),
      'index': np.concatenate(index),
      'valid': np.concatenate(valid).astype(np.int32),
    }
  )  # [processes, steps * rows, ...]
  keep = np.asarray(gathered['valid']).reshape(-1).astype(bool)
  scores = np.asarray(gathered['scores']).reshape(keep.shape[0], -1)[keep]
  labels, index = (np.asarray(gathered[k]).reshape(-1)[keep] for k in ('label', 'index'))
  video_scores, video_labels = report.aggregate_views(scores, labels, index)
  metrics = report.classification_metrics(video_scores, video_labels, info.num_classes)
  metrics['views_per_video'] = int(round(len(index) / max(1, len(video_labels))))
  metrics['class_names'] = list(info.class_names)
  return metrics


def finetune_and_evaluate(config, workdir: str, *, stop_after_steps=None) -> dict:
  """Fine-tune per `config` (resumable), then test with multi-view; writes results.json + confusion PNG.

  The config is whole only here, with the model and clip keys of `init_from`'s run merged in
  (`frozen.resolve_config`), so this driver validates it, once, before anything is built (the
  command line has checked the `finetune` section: `validate`)."""
  config = frozen.resolve_config(config)
  config_lib.validate(config, pretraining=False)
  features.resolve_splits(config, 'finetune')
  loader, data_info = data_lib.make_loader(
    config.data,
    split=config.finetune.train_split,
    global_batch_size=config.batch_size,
    seed=config.seed,
    train=True,
  )
  exp, state = build_experiment(
    config, num_classes=data_info.num_classes, samples_per_epoch=data_info.samples_per_epoch
  )

  def periodic_eval(step, state, batch):  # on every process: evaluate() is collective
    del batch
    if step % config.finetune.eval_every_steps == 0 and step != exp.total_steps:
      m = evaluate(exp, state)
      logging.info('step %d: test top1 %.2f top5 %.2f', step, m['top1'], m['top5'])
      return {'test/top1': m['top1'], 'test/top5': m['top5']}
    return None

  state, result = loop.fit(
    exp, state, loader, data_info, workdir, hooks=[periodic_eval], stop_after_steps=stop_after_steps
  )
  if result['step'] < exp.total_steps:
    return result
  metrics = evaluate(exp, state)
  if jax.process_index() == 0:
    png = report.save_confusion_png(
      os.path.join(workdir, 'finetune_confusion.png'),
      np.asarray(metrics['confusion']),
      metrics['class_names'],
      f'fine-tune, step {result["step"]}',
    )
    metrics['confusion_png'] = png
    metrics['init_from'] = config.init_from
    report.write_results(workdir, 'finetune', metrics)
  result['eval'] = metrics
  result['summary'] = (
    f'finetune: top1 {metrics["top1"]:.1f} top5 {metrics["top5"]:.1f} '
    f'({metrics["views_per_video"]} views/video, init_from={config.init_from or "random"}, step {result["step"]})'
  )
  return result


def run(config, workdir: str) -> dict:
  """Entry point for `python -m mvm_jax.finetune` (see `mvm_jax.evaluate.cli`)."""
  result = finetune_and_evaluate(config, workdir)
  result.setdefault(
    'summary', f'finetune: stopped at step {result["step"]} (checkpoint saved; rerun to resume)'
  )
  return result
