"""The training loop: build everything from the config, train, log, checkpoint.

`train_and_evaluate(config, workdir)` is what `python -m mvm_jax.main` runs
(MAE pre-training); `fit` is the loop itself, shared with fine-tuning.
Re-running with the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from absl import logging

# Imported where used, not here: the data pipeline (Grain, PyAV), clu's writers (TensorFlow), the
# evaluators and the pictures, so that building and timing the step (`mvm_jax.tools.bench`,
# `tools.aot_compile`) runs on an image with only jax/flax/optax/einops/ml-collections.
from mvm_jax import config as config_lib
from mvm_jax import methods, objectives
from mvm_jax import sharding
from mvm_jax.train import checkpointing, flops, optimizer
from mvm_jax.train import state as state_lib
from mvm_jax.train.step import make_train_step


class NonFiniteLossError(RuntimeError):
  pass


@dataclasses.dataclass
class Experiment:
  """Everything built from the config that the loop, tools and tests share."""

  config: Any
  mesh: Any
  model: Any
  masker: Any  # (rng, batch) -> Mask: the configured masker (pictures, tools)
  grid: tuple[int, int, int]
  tx: Any
  schedule: Any
  total_steps: int
  warmup_steps: int
  train_step: Any  # jitted (state, batch) -> (state, metrics)
  state: Any
  state_shardings: Any
  batch_sharding: Any
  data_info: Any = None
  inputs: Any = None  # step.ModelInputs: the batch entry the model reads, and its preprocessing
  steps_per_epoch: int = 1
  batch_keys: Optional[tuple[str, ...]] = None  # the batch entries the step reads (None: all)
  method: Any = None  # methods.Method: the pre-training method (its pictures); None for fine-tuning


def schedule_lengths(config, samples_per_epoch: int) -> tuple[int, int]:
  """(total_steps, warmup_steps) from steps if set, else from epochs of effective samples."""
  steps_per_epoch = max(1, samples_per_epoch // config.batch_size)
  total = config.total_steps if config.total_steps > 0 else int(config.num_epochs * steps_per_epoch)
  warmup = config.warmup_steps if config.warmup_steps > 0 else int(config.warmup_epochs * steps_per_epoch)
  return total, min(warmup, total)


def build_experiment(config, *, samples_per_epoch: int, devices=None, phase: str = 'step') -> Experiment:
  """Validate the config, make the mesh, model, masker, optimizer, sharded state and jitted step
  (`phase`: all of it, or only up to 'forward' / 'gradients', for benchmarks: see make_train_step)."""
  config_lib.validate(config)
  mesh = sharding.make_mesh(config.mesh, devices)
  exp, init_state = _experiment_on_mesh(config, mesh, samples_per_epoch, phase)
  exp.state = init_state(jax.random.PRNGKey(config.seed))
  return exp


def abstract_experiment(config, mesh, *, samples_per_epoch: int) -> Experiment:
  """`build_experiment` on `mesh` (e.g. over an ahead-of-time topology's devices) with nothing
  allocated: `exp.state` holds `jax.ShapeDtypeStruct`s carrying the state's shardings, so
  `exp.train_step.lower(exp.state, batch)` (batch: ShapeDtypeStructs with `exp.batch_sharding`)
  lowers the very step `main` runs."""
  config_lib.validate(config)
  return _experiment_on_mesh(config, mesh, samples_per_epoch)[0]


def _experiment_on_mesh(
  config, mesh, samples_per_epoch: int, phase: str = 'step'
) -> tuple[Experiment, Callable]:
  """(Experiment with the abstract state, rng -> the initialised sharded state): everything of
  `build_experiment` after the mesh; the second allocates, the first does not."""
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp:
    raise config_lib.ConfigError(
      f'config.batch_size={config.batch_size} is not divisible by the '
      f'{dp} data-parallel devices of config.mesh.shape={tuple(config.mesh.shape)}'
    )
  total_steps, warmup_steps = schedule_lengths(config, samples_per_epoch)
  steps_per_epoch = max(1, samples_per_epoch // config.batch_size)
  method = methods.get(config)
  setup = method.setup(config, total_steps, steps_per_epoch)
  model = setup.model
  schedule = optimizer.make_schedule(config, total_steps, warmup_steps)
  tx = optimizer.make_optimizer(config, schedule)
  logging.info('Model: %s.', setup.description)

  teacher_momentum = method.teacher_momentum(config, steps_per_epoch)
  state_args = dict(rules=config.mesh.rules, ema_teacher=teacher_momentum is not None, frozen=setup.frozen)
  abstract_state, shardings = state_lib.abstract_sharded_state(setup.init_variables, tx, mesh, **state_args)
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = make_train_step(
    model,
    setup.policy,
    objectives.make_objective_fn(config, method.objective_start_steps(config, steps_per_epoch)),
    tx,
    schedule,
    config.optim.grad_accum_steps,
    teacher_momentum,
    setup.inputs,
    phase,
  )
  jitted = jit_train_step(step_fn, mesh, config.mesh.rules, shardings, batch_sharding)
  exp = Experiment(
    config=config,
    mesh=mesh,
    model=model,
    masker=setup.masker,
    grid=setup.grid,
    tx=tx,
    schedule=schedule,
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    train_step=jitted,
    state=abstract_state,
    state_shardings=shardings,
    batch_sharding=batch_sharding,
    inputs=setup.inputs,
    steps_per_epoch=steps_per_epoch,
    batch_keys=(setup.inputs.key,),
    method=method,
  )
  init_state = lambda rng: state_lib.init_sharded_state(
    setup.init_variables, tx, mesh, rng, shardings, **state_args
  )
  return exp, init_state


def jit_train_step(step_fn, mesh, rules, state_shardings, batch_sharding):
  """jit `step_fn(state, batch) -> (state, metrics)` with the state sharded as given
  (and donated), the batch split over the data axes, metrics replicated (`rules`:
  `config.mesh.rules`)."""
  with sharding.sharding_context(mesh, rules):
    return jax.jit(
      step_fn,
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, sharding.replicated(mesh)),
      donate_argnums=0,
    )


def global_batch(host_batch: dict, batch_sharding, keys: Optional[Sequence[str]] = None) -> dict:
  """Host-local numpy batch → global jax.Arrays split over the data axes (only `keys`, if given:
  what the step reads goes to the device, nothing else)."""
  return {
    k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
    for k, v in host_batch.items()
    if keys is None or k in keys
  }


def compile_step(exp: Experiment, example_batch: dict):
  """Lower and compile the step once; returns (compiled, XLA flops per step per device)."""
  with sharding.sharding_context(exp.mesh, exp.config.mesh.rules):
    compiled = exp.train_step.lower(exp.state, example_batch).compile()
  return compiled, flops.compiled_flops(compiled)


class _Preemption:
  """Turns SIGTERM into a flag the loop checks after each step."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint, then exiting.')
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def write_images(exp: Experiment, workdir: str, step: int, batch: dict):
  """The method's pictures (`Method.write_images`) of the first samples of `batch` at `step`.

  Runs on every process (the global batch and the state may span all hosts);
  only the chief writes the PNGs. Returns their paths on the chief, None elsewhere."""
  return exp.method.write_images(exp, workdir, step, batch)


# Metrics logged as their value at the log step, not the mean over the window since the last log.
LAST_VALUE_METRICS = ('lr',)


def mean_metrics(history: list[dict]) -> dict:
  """The mean of each metric over the steps since the last log; 'lr' is the logged step's (the lr
  its update used: schedule(step - 1); with layer decay, the peak group's, the head's)."""
  return {
    k: float(history[-1][k]) if k in LAST_VALUE_METRICS else float(np.mean([h[k] for h in history]))
    for k in history[0]
  }


def train_and_evaluate(config, workdir: str, *, stop_after_steps: Optional[int] = None) -> dict:
  """Pre-train per `config`, writing checkpoints, events and PNGs under `workdir`.

  `stop_after_steps` ends this invocation early (as a preemption would),
  after saving; the next call continues. Returns the final step's metrics and
  a per-step loss history of this invocation.
  """
  from mvm_jax.data import pipeline
  from mvm_jax.evaluate import evaluators as evaluators_lib

  config_lib.validate(config)
  loader, data_info = pipeline.make_loader(
    config.data,
    split='train',
    global_batch_size=config.batch_size,
    seed=config.seed,
    shard_index=jax.process_index(),
    shard_count=jax.process_count(),
    train=True,
  )
  exp = build_experiment(config, samples_per_epoch=data_info.samples_per_epoch)
  exp.data_info = data_info

  def images(step, batch):
    if step % config.image_every_steps == 0 or step == exp.total_steps:
      write_images(exp, workdir, step, batch)

  hooks = [images]
  suite = evaluators_lib.build(config, workdir, exp.mesh, exp.total_steps)  # None without config.evaluators
  if suite is not None:
    hooks.append(lambda step, batch: suite(step, exp.state.params))
  return fit(exp, loader, workdir, hooks=hooks, stop_after_steps=stop_after_steps)


def fit(
  exp: Experiment,
  loader,
  workdir: str,
  *,
  hooks: Sequence[Callable[[int, dict], Optional[dict]]] = (),
  stop_after_steps: Optional[int] = None,
) -> dict:
  """The training loop shared by pre-training and fine-tuning.

  Resumes from the latest checkpoint in `workdir/checkpoints` (state and data
  iterator position), runs `exp.train_step` to `exp.total_steps`, logs
  metrics with progress/ETA/MFU, saves checkpoints (and on SIGTERM), stops on
  a non-finite loss keeping the last good checkpoint. Metrics stay on the device
  between log steps: the host syncs (and checks the loss) only at log steps and
  before each checkpoint; the next batch is on the device before the hooks run. `hooks` get (step,
  global batch of that step) on every process after each step and read
  `exp.state` (pictures, periodic evaluation: work on global arrays and
  collectives, so every process must enter them; only the chief writes
  files). They return scalars for the run's metric writer at that step, or
  None; their wall time is left out of the step time.
  """
  from clu import metric_writers

  config, data_info = exp.config, exp.data_info
  os.makedirs(workdir, exist_ok=True)
  is_chief = jax.process_index() == 0
  if is_chief:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief, asynchronous=True)
  logging.info('Config:\n%s', config)
  logging.info(
    'Mesh %s; %d parameters; %d steps (%d warm-up); %d samples per epoch.',
    dict(exp.mesh.shape),
    state_lib.param_count(exp.state.params),
    exp.total_steps,
    exp.warmup_steps,
    data_info.samples_per_epoch,
  )

  ckpt = checkpointing.Checkpointer(
    os.path.join(workdir, 'checkpoints'),
    keep=config.keep_checkpoints,
    every_steps=config.checkpoint_every_steps,
    asynchronous=config.async_checkpointing,
  )
  data_iter = iter(loader)
  try:
    return _resume_and_train(exp, workdir, ckpt, writer, data_iter, hooks, stop_after_steps)
  except BaseException:
    _close_quietly(ckpt, writer)  # a checkpoint in flight is finished (or named as failed)
    raise
  finally:
    if hasattr(data_iter, 'close'):
      data_iter.close()  # stops data workers and releases their shared memory


def _close_quietly(ckpt, writer) -> None:
  """Close after an error without hiding it: a failure here is logged."""
  for close in (ckpt.close, writer.close):
    try:
      close()
    except Exception as e:  # noqa: BLE001
      logging.error('While stopping: %s', e)


def _resume_and_train(exp, workdir, ckpt, writer, data_iter, hooks, stop_after_steps) -> dict:
  """`fit` after setup: resume from the newest readable checkpoint, train, close `ckpt` and `writer`."""
  from clu import periodic_actions

  config, data_info = exp.config, exp.data_info
  state = exp.state
  abstract = state_lib.abstract_with_shardings(state.without_frozen(), exp.state_shardings.without_frozen())
  found = ckpt.restore_latest(abstract)  # the newest that reads back; CheckpointError if none does
  if found is not None:
    latest, restored, data_state = found
    state = restored.replace(frozen=state.frozen)
    data_iter.set_state(data_state)
    logging.info('Resumed from checkpoint at step %d.', latest)
  exp.state = state
  start_step = int(jax.device_get(state.step))
  if start_step >= exp.total_steps:
    logging.info(
      'Run already finished at step %d (total_steps=%d); nothing to do.', start_step, exp.total_steps
    )
    ckpt.close()
    writer.close()
    return {'step': start_step, 'metrics': {}, 'losses': [], 'history': []}

  host_batch = next(data_iter)
  batch = global_batch(host_batch, exp.batch_sharding, exp.batch_keys)
  compiled, step_flops = compile_step(exp, batch)
  peak = flops.peak_flops_per_device(config.peak_tflops_per_device)
  logging.info(
    'Train step: %.3f GFLOP per device (XLA cost analysis); peak %s TFLOP/s per device.',
    step_flops / 1e9,
    'unknown' if peak is None else f'{peak / 1e12:.3f}',
  )
  writer.write_hparams(_flat(config.to_dict()))

  report = periodic_actions.ReportProgress(
    num_train_steps=exp.total_steps, writer=writer, every_steps=config.log_every_steps
  )
  history, window, losses = [], [], []
  pending = []  # the metrics of the steps since the last check, still on the device
  last_log_time, last_log_step = time.perf_counter(), start_step
  step = start_step
  with _Preemption() as preemption:
    while step < exp.total_steps:
      state, step_metrics = compiled(state, batch)  # dispatched; runs while the host goes on
      step += 1
      pending.append((step, step_metrics))
      data_state = data_iter.get_state()  # position after the batch just used
      # Double buffering: the next batch goes to the device before any callback below runs.
      next_batch = None
      if step < exp.total_steps:
        next_batch = global_batch(next(data_iter), exp.batch_sharding, exp.batch_keys)
      stop = preemption.requested or (stop_after_steps is not None and step - start_step >= stop_after_steps)
      force_save = stop or step == exp.total_steps
      log_now = step % config.log_every_steps == 0 or step == exp.total_steps
      if log_now or ckpt.due(step, force=force_save):
        # The only host sync of the loop: at log steps, and before a checkpoint, so that no
        # checkpoint ever holds a state after a non-finite loss.
        fetched = _fetch_finite(pending, ckpt, workdir)
        pending = []
        losses.extend(float(m['loss']) for m in fetched)
        window.extend(fetched)
      report(step)
      if log_now:
        now = time.perf_counter()
        seconds_per_step = (now - last_log_time) / max(1, step - last_log_step)
        scalars = mean_metrics(window)
        scalars.update(
          {
            'perf/step_time_s': seconds_per_step,
            'perf/clips_per_s': config.batch_size / seconds_per_step,
            'perf/tflops_per_s_per_device': step_flops / seconds_per_step / 1e12,
            'data/skipped_videos': float(data_info.skipped.count),
          }
        )
        if getattr(data_info, 'short', None) is not None:
          scalars['data/short_videos'] = float(data_info.short.count)
        if peak:
          scalars['perf/mfu'] = step_flops / seconds_per_step / peak
        writer.write_scalars(step, scalars)
        history.append({'step': step, **scalars})
        window, last_log_time, last_log_step = [], now, step
      exp.state = state
      ckpt.save(step, state.without_frozen(), data_state, force=force_save)
      hooks_start = time.perf_counter()
      for hook in hooks:
        scalars = hook(step, batch)
        if scalars:
          writer.write_scalars(step, scalars)
      last_log_time += time.perf_counter() - hooks_start
      if stop:
        logging.info('Stopping at step %d (checkpoint saved).', step)
        break
      batch = next_batch
  ckpt.close()
  writer.flush()
  writer.close()
  return {'step': step, 'metrics': history[-1] if history else {}, 'losses': losses, 'history': history}


def _fetch_finite(pending: list, ckpt, workdir: str) -> list[dict]:
  """Fetch the (step, on-device metrics) of `pending` to the host; on the first non-finite loss
  among them, close `ckpt` (no further save) and raise NonFiniteLossError naming that step."""
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    loss = float(metrics['loss'])
    if not math.isfinite(loss):
      ckpt.close()
      raise NonFiniteLossError(
        f'Loss became {loss} at step {step}; stopping. The last good checkpoint '
        f'(step {ckpt.latest_step()}) in {workdir}/checkpoints is kept; lower optim.base_lr '
        f'or tighten optim.clip_grad_norm and rerun to resume from it.'
      )
  return fetched


def _flat(tree: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
