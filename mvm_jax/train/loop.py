"""The pre-training driver: build everything from the config, compile, loop, finish.

`python -m mvm_jax.main` runs `train_and_evaluate(config, workdir)`. The file reads top to bottom as a
run does:

  1. The record  `Experiment`: what the config builds (mesh, method, model, optimizer, jitted step, the
                 state's shapes and shardings); frozen. The train state is not in it: it travels
                 beside it, through the loop and into the hooks.
  2. Build       `build_experiment` → (experiment, initial state); `abstract_experiment` allocates
                 nothing (`tools.aot_compile`).
  3. Pre-train   `train_and_evaluate`: data → experiment and state → hooks (pictures, periodic
                 evaluators) → `fit`.
  4. Loop        `fit`, shared with fine-tuning: resume → compile → each step: step, next batch to the
                 device, log, checkpoint, hooks → finish.
  5. Helpers     of the loop: batches onto the mesh, metric means, SIGTERM, the non-finite check.

Re-running with the same workdir resumes from the latest checkpoint. Nothing here validates the
config: the entry points (`mvm_jax.main`, the tools, fine-tuning's driver) do, once, before building.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from typing import Callable, Optional, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import ml_collections
import numpy as np
import optax
from absl import logging

# Imported where used, not here: the data pipeline (Grain, PyAV), clu's writers (TensorFlow), the
# evaluators and the pictures, so that building and timing the step (`mvm_jax.tools.bench`,
# `tools.aot_compile`) runs on an image with only jax/flax/optax/einops/ml-collections.
from mvm_jax import config as config_lib
from mvm_jax import methods, objectives
from mvm_jax import progress as progress_lib
from mvm_jax import sharding
from mvm_jax.train import checkpointing, flops, optimizer
from mvm_jax.train import state as state_lib
from mvm_jax.train.state import TrainState
from mvm_jax.train.step import ModelInputs, make_train_step


class NonFiniteLossError(RuntimeError):
  pass


# --- 1. The record: what the config builds ------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Experiment:
  """Everything built from the config that the loop, the tools and the tests share; it never changes.

  The train state is not part of it: `build_experiment` returns the initial state beside it, `fit`
  carries the current one through the loop and hands it to each hook.
  """

  config: ml_collections.FrozenConfigDict  # the run's config, read-only
  mesh: jax.sharding.Mesh
  method: Optional[methods.Method]  # the pre-training method (its pictures); None for fine-tuning
  model: nn.Module
  inputs: ModelInputs  # the batch entry the model reads, and its preprocessing in the step
  masker: Optional[Callable]  # the configured masker (pictures, tools); None without masks
  grid: tuple[int, int, int]  # (T, H, W) of the model's token map
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  total_steps: int
  warmup_steps: int
  steps_per_epoch: int
  train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]  # jitted; donates the state
  abstract_state: TrainState  # jax.ShapeDtypeStructs carrying the shardings: nothing allocated
  state_shardings: TrainState
  batch_sharding: jax.sharding.NamedSharding
  batch_keys: Optional[tuple[str, ...]]  # the batch entries the step reads (None: all)


# hook(step, state after that step, global batch of that step) -> scalars to log at that step, or None.
Hook = Callable[[int, TrainState, dict], Optional[dict]]


# --- 2. Build: mesh, method, optimizer, state, jitted step -------------------------------------


def schedule_lengths(config, samples_per_epoch: int) -> tuple[int, int]:
  """(total_steps, warmup_steps) from steps if set, else from effective epochs of `samples_per_epoch`
  samples (LoaderInfo.samples_per_epoch: the records, whatever the repeated sampling)."""
  steps_per_epoch = max(1, samples_per_epoch // config.batch_size)
  total = config.total_steps if config.total_steps > 0 else int(config.num_epochs * steps_per_epoch)
  warmup = config.warmup_steps if config.warmup_steps > 0 else int(config.warmup_epochs * steps_per_epoch)
  return total, min(warmup, total)


def build_experiment(
  config, *, samples_per_epoch: int, devices=None, phase: str = 'step'
) -> tuple[Experiment, TrainState]:
  """(experiment, its initial sharded state from `config.seed`) on a mesh of `devices` per
  `config.mesh`. `phase`: all of the step, or only up to 'forward' / 'gradients', for benchmarks
  (see make_train_step). The config is taken as valid (`mvm_jax.config.validate`)."""
  mesh = sharding.make_mesh(config.mesh, devices)
  exp, init_state = _experiment_on_mesh(config, mesh, samples_per_epoch, phase)
  return exp, init_state(jax.random.PRNGKey(config.seed))


def abstract_experiment(config, mesh, *, samples_per_epoch: int, phase: str = 'step') -> Experiment:
  """`build_experiment`'s experiment on `mesh` (e.g. over an ahead-of-time topology's devices) with
  nothing allocated: `exp.train_step.lower(exp.abstract_state, batch)` (batch: ShapeDtypeStructs
  with `exp.batch_sharding`) lowers the very step `main` runs."""
  return _experiment_on_mesh(config, mesh, samples_per_epoch, phase)[0]


def _experiment_on_mesh(
  config, mesh, samples_per_epoch: int, phase: str = 'step'
) -> tuple[Experiment, Callable[[jax.Array], TrainState]]:
  """(the experiment, rng -> the initialised sharded state): everything of `build_experiment`
  after the mesh; the first allocates nothing, the second allocates the state."""
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % dp:
    raise config_lib.ConfigError(
      f'config.batch_size={config.batch_size} is not divisible by the '
      f'{dp} data-parallel devices of config.mesh.shape={tuple(config.mesh.shape)}'
    )
  total_steps, warmup_steps = schedule_lengths(config, samples_per_epoch)
  steps_per_epoch = max(1, samples_per_epoch // config.batch_size)

  # The method: its model, what the model reads, how masks are drawn, what stays frozen.
  method = methods.get(config)
  setup = method.setup(config, total_steps, steps_per_epoch)
  logging.info('Model: %s.', setup.description)

  # Optimizer, and the state's shapes and shardings (by the logical axis names and config.mesh.rules).
  schedule = optimizer.make_schedule(config, total_steps, warmup_steps)
  tx = optimizer.make_optimizer(config, schedule)
  teacher_momentum = method.teacher_momentum(config, steps_per_epoch)
  state_args = dict(rules=config.mesh.rules, ema_teacher=teacher_momentum is not None, frozen=setup.frozen)
  abstract_state, shardings = state_lib.abstract_sharded_state(setup.init_variables, tx, mesh, **state_args)

  # The step: masks → forward → objectives → gradients → update (train/step.py), jitted on the mesh.
  batch_sharding = sharding.batch_sharding(mesh)
  step_fn = make_train_step(
    setup.model,
    setup.policy,
    objectives.make_objective_fn(config, method.objective_start_steps(config, steps_per_epoch)),
    tx,
    schedule,
    config.optim.grad_accum_steps,
    teacher_momentum,
    setup.inputs,
    phase,
  )
  exp = Experiment(
    config=ml_collections.FrozenConfigDict(config),
    mesh=mesh,
    method=method,
    model=setup.model,
    inputs=setup.inputs,
    masker=setup.masker,
    grid=setup.grid,
    tx=tx,
    schedule=schedule,
    total_steps=total_steps,
    warmup_steps=warmup_steps,
    steps_per_epoch=steps_per_epoch,
    train_step=jit_train_step(step_fn, mesh, config.mesh.rules, shardings, batch_sharding),
    abstract_state=abstract_state,
    state_shardings=shardings,
    batch_sharding=batch_sharding,
    batch_keys=(setup.inputs.key,),
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


# --- 3. Pre-train: data, experiment, hooks, then the loop ---------------------------------------


def train_and_evaluate(config, workdir: str, *, stop_after_steps: Optional[int] = None) -> dict:
  """Pre-train per `config` (taken as valid: `mvm_jax.main` validates it), writing checkpoints,
  events and PNGs under `workdir`.

  `stop_after_steps` ends this invocation early (as a preemption would),
  after saving; the next call continues. Returns the final step's metrics and
  a per-step loss history of this invocation.
  """
  from mvm_jax.data import make_loader
  from mvm_jax.evaluate import evaluators as evaluators_lib

  # Data: this process's share of each global batch of training clips.
  loader, data_info = make_loader(
    config.data, split='train', global_batch_size=config.batch_size, seed=config.seed, train=True
  )
  # Mesh, method, optimizer, jitted step; the initial state (`fit` resumes over it from a checkpoint).
  exp, state = build_experiment(config, samples_per_epoch=data_info.samples_per_epoch)

  # After each step: the method's pictures, and the periodic evaluators on the current parameters.
  def pictures(step: int, state: TrainState, batch: dict) -> None:
    if step % config.image_every_steps == 0 or step == exp.total_steps:
      write_images(exp, state, workdir, step, batch)

  hooks: list[Hook] = [pictures]
  suite = evaluators_lib.build(config, workdir, exp.mesh, exp.total_steps)  # None without config.evaluators
  if suite is not None:
    hooks.append(lambda step, state, batch: suite(step, state.params))

  _, result = fit(exp, state, loader, data_info, workdir, hooks=hooks, stop_after_steps=stop_after_steps)
  return result


def write_images(exp: Experiment, state: TrainState, workdir: str, step: int, batch: dict):
  """The method's pictures (`Method.write_images`) of `state` on the first samples of `batch` at `step`.

  Runs on every process (the global batch and the state may span all hosts);
  only the chief writes the PNGs. Returns their paths on the chief, None elsewhere."""
  return exp.method.write_images(exp, state, workdir, step, batch)


# --- 4. The loop: resume, compile, step / log / checkpoint / hooks, finish ----------------------


def fit(
  exp: Experiment,
  state: TrainState,
  loader,
  data_info,
  workdir: str,
  *,
  hooks: Sequence[Hook] = (),
  stop_after_steps: Optional[int] = None,
) -> tuple[TrainState, dict]:
  """The training loop shared by pre-training and fine-tuning: from `state` (or the latest
  checkpoint in `workdir/checkpoints`, which replaces it) to `exp.total_steps` on `loader`'s batches.

  Logs metrics with progress/ETA/MFU (`data_info`: the loader's counts), saves checkpoints (and on
  SIGTERM), stops on a non-finite loss keeping the last good checkpoint. Metrics stay on the device
  between log steps: the host syncs (and checks the loss) only at log steps and before each
  checkpoint; the next batch is on the device before the hooks run. Each hook gets (step, the state
  after it, the global batch of that step) on every process (pictures, periodic evaluation: work on
  global arrays and collectives, so every process must enter them; only the chief writes files) and
  returns scalars for the run's metric writer at that step, or None; their wall time is left out of
  the step time.

  Returns (the final state, {'step', 'metrics': the last log's, 'losses': each step's of this
  invocation, 'history': every log's}).
  """
  from clu import metric_writers

  config = exp.config

  # Set up: the config beside the outputs, the metric writer, the checkpointer, the data iterator.
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
    state_lib.param_count(state.params),
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
    # Resume: the newest checkpoint that reads back (CheckpointError if none does), with the data
    # iterator's position; the frozen variables are not in checkpoints and stay as built.
    found = ckpt.restore_latest(exp.abstract_state.without_frozen())
    if found is not None:
      latest, restored, data_state = found
      state = restored.replace(frozen=state.frozen)
      data_iter.set_state(data_state)
      logging.info('Resumed from checkpoint at step %d.', latest)
    start_step = int(jax.device_get(state.step))
    if start_step >= exp.total_steps:
      logging.info(
        'Run already finished at step %d (total_steps=%d); nothing to do.', start_step, exp.total_steps
      )
      ckpt.close()
      writer.close()
      return state, {'step': start_step, 'metrics': {}, 'losses': [], 'history': []}

    # Compile: once, for the first batch's shapes.
    batch = global_batch(next(data_iter), exp.batch_sharding, exp.batch_keys)
    compiled, flops_per_step = compile_step(exp, state, batch)
    peak = flops.peak_flops_per_device(config.peak_tflops_per_device)
    logging.info(
      'Train step: %.3f model GFLOP per device (XLA count of the lowered step); peak %s TFLOP/s per device.',
      flops_per_step / 1e9,
      'unknown' if peak is None else f'{peak / 1e12:.3f}',
    )
    hparams = traverse_util.flatten_dict(config.to_dict(), sep='.')
    writer.write_hparams(
      {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}
    )

    progress = _TrainProgress('train', exp.total_steps, unit='steps', log=None)
    progress.update(start_step, timed=False)  # the steps of earlier invocations (resumed)
    history, window, losses = [], [], []
    pending = []  # the metrics of the steps since the last check, still on the device
    last_log_time, last_log_step = time.perf_counter(), start_step
    step = start_step
    with _Preemption() as preemption:
      while step < exp.total_steps:
        # Step: dispatched; it runs on the devices while the host goes on.
        state, step_metrics = compiled(state, batch)
        step += 1
        pending.append((step, step_metrics))
        data_state = data_iter.get_state()  # the position after the batch just used
        # Double buffering: the next batch goes to the device before the fetch and the hooks below.
        next_batch = None
        if step < exp.total_steps:
          next_batch = global_batch(next(data_iter), exp.batch_sharding, exp.batch_keys)
        stop = preemption.requested or (
          stop_after_steps is not None and step - start_step >= stop_after_steps
        )
        force_save = stop or step == exp.total_steps

        # Fetch: the only host sync of the loop, at log steps and before a checkpoint, so that no
        # checkpoint ever holds a state after a non-finite loss.
        log_now = step % config.log_every_steps == 0 or step == exp.total_steps
        if log_now or ckpt.due(step, force=force_save):
          fetched = _fetch_finite(pending, ckpt, workdir)
          pending = []
          losses.extend(float(m['loss']) for m in fetched)
          window.extend(fetched)
        progress.update()

        # Log: the mean of each metric since the last log, the speed, the data pipeline's counts.
        if log_now:
          now = time.perf_counter()
          seconds_per_step = (now - last_log_time) / max(1, step - last_log_step)
          scalars = mean_metrics(window)
          scalars.update(
            {
              'perf/step_time_s': seconds_per_step,
              'perf/clips_per_s': config.batch_size / seconds_per_step,
              'perf/tflops_per_s_per_device': flops_per_step / seconds_per_step / 1e12,
              'data/skipped_videos': float(data_info.skipped.count),
            }
          )
          if getattr(data_info, 'short', None) is not None:
            scalars['data/short_videos'] = float(data_info.short.count)
          if peak:
            scalars['perf/mfu'] = flops_per_step / seconds_per_step / peak
          writer.write_scalars(step, scalars)
          progress.scalars = scalars
          logging.info('%s', progress.line())
          history.append({'step': step, **scalars})
          window, last_log_time, last_log_step = [], now, step

        # Checkpoint: every `checkpoint_every_steps`, at the end and before stopping (async by default).
        ckpt.save(step, state.without_frozen(), data_state, force=force_save)

        # Hooks: pictures, periodic evaluators (fine-tuning: its test), on this step's state and batch.
        hooks_start = time.perf_counter()
        for hook in hooks:
          scalars = hook(step, state, batch)
          if scalars:
            writer.write_scalars(step, scalars)
        last_log_time += time.perf_counter() - hooks_start

        if stop:
          logging.info('Stopping at step %d (checkpoint saved).', step)
          break
        batch = next_batch

    # Finish: wait for the last checkpoint and the writer.
    ckpt.close()
    writer.flush()
    writer.close()
    return state, {
      'step': step,
      'metrics': history[-1] if history else {},
      'losses': losses,
      'history': history,
    }
  except BaseException:
    _close_quietly(ckpt, writer)  # a checkpoint in flight is finished (or named as failed)
    raise
  finally:
    if hasattr(data_iter, 'close'):
      data_iter.close()  # stops data workers and releases their shared memory


# --- 5. Helpers of the loop ---------------------------------------------------------------------


def global_batch(host_batch: dict, batch_sharding, keys: Optional[Sequence[str]] = None) -> dict:
  """Host-local numpy batch → global jax.Arrays split over the data axes (only `keys`, if given:
  what the step reads goes to the device, nothing else)."""
  return {
    k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
    for k, v in host_batch.items()
    if keys is None or k in keys
  }


def compile_step(exp: Experiment, state: TrainState, example_batch: dict):
  """Lower and compile the step once for `state` and `example_batch` (arrays, or ShapeDtypeStructs
  with their shardings); returns (compiled, model FLOPs per step per device: `step_flops`)."""
  lowered, compiled = lower_and_compile(exp, state, example_batch)
  return compiled, step_flops(exp, lowered, example_batch)


def lower_and_compile(exp: Experiment, state: TrainState, example_batch: dict):
  """(lowered, compiled) step for `state` and `example_batch` on `exp`'s mesh and rules."""
  with sharding.sharding_context(exp.mesh, exp.config.mesh.rules):
    lowered = exp.train_step.lower(state, example_batch)
    return lowered, lowered.compile()


def step_flops(exp: Experiment, lowered, example_batch: dict, phase: str = 'step') -> float:
  """Model FLOPs of one step per device: XLA's cost analysis of the lowered step (before
  optimisation and partitioning: the whole mesh's work, divided by its devices, so work each device
  repeats, like a replicated optimizer update, counts once). Not the compiled step's count: on a
  GPU XLA hands the matmuls to cuBLAS and attention to cuDNN as custom calls, which that count
  skips (on an H100 it saw a sixth of bench_small's FLOPs). Counted on `counting_twin_flops`
  instead of `lowered` where the step's own count would not be model FLOPs (`twin_reasons`): on an
  accelerator, with cuDNN attention (a custom call before optimisation too), with
  rematerialisation (its recomputation is not model work) and with gradient accumulation (XLA
  counts the micro-batch loop's body once). `phase`: the one `exp` was built for."""
  reasons = twin_reasons(exp.config, exp.mesh.devices.flat[0].platform)
  if not reasons:
    return flops.lowered_flops(lowered) / exp.mesh.size
  try:
    cpu = jax.devices('cpu')[0]
  except RuntimeError as e:  # no CPU backend (JAX_PLATFORMS names only the accelerator)
    logging.warning(
      'FLOPs not counted (MFU reported as 0): %s. Allow the CPU backend: JAX_PLATFORMS=cuda,cpu.', e
    )
    return 0.0
  logging.info("Model FLOPs counted on the step's one-CPU-device twin (%s).", '; '.join(reasons))
  return counting_twin_flops(exp.config, example_batch, phase, cpu) / exp.mesh.size


def twin_reasons(config, platform: str) -> list[str]:
  """Why the step's own lowered FLOP count is not its model FLOPs on `platform` (empty: it is)."""
  model, accum = config.model, config.optim.get('grad_accum_steps', 1)
  reasons = [f'{platform}: no cost analysis before compilation'] if platform != 'cpu' else []
  reasons += ['model.attention=cudnn'] if model.get('attention') == 'cudnn' else []
  reasons += [f'model.remat={model.remat}'] if model.get('remat', 'none') != 'none' else []
  return reasons + ([f'optim.grad_accum_steps={accum}'] if accum > 1 else [])


def counting_twin_flops(config, example_batch: dict, phase: str = 'step', cpu=None) -> float:
  """Model FLOPs of the whole step of `config` (all devices' work), counted on its twin lowered for
  one CPU device (`cpu`, default the first) and not compiled: attention as einsums, no
  rematerialisation, the whole batch in one pass (no micro-batch loop). Only the CPU backend answers
  XLA's cost analysis before compilation (jax's GPU and TPU plugins do not), and no backend can see
  inside cuDNN's fused attention. `example_batch`: arrays or ShapeDtypeStructs (only shapes read)."""
  # A copy: FrozenConfigDict.as_configdict() hands back the ConfigDict it was frozen from.
  frozen = isinstance(config, ml_collections.FrozenConfigDict)
  twin_config = (config.as_configdict() if frozen else config).copy_and_resolve_references()
  if twin_config.model.get('attention') == 'cudnn':
    twin_config.model.attention = 'einsum'
  if 'remat' in twin_config.model:
    twin_config.model.remat = 'none'
  twin_config.optim.grad_accum_steps = 1
  twin_config.mesh.shape = (1,) * len(twin_config.mesh.shape)
  mesh = sharding.make_mesh(twin_config.mesh, [cpu or jax.devices('cpu')[0]])
  twin = abstract_experiment(twin_config, mesh, samples_per_epoch=1000 * twin_config.batch_size, phase=phase)
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=twin.batch_sharding) for k, v in example_batch.items()
  }
  with sharding.sharding_context(mesh, twin_config.mesh.rules):
    return flops.lowered_flops(twin.train_step.lower(twin.abstract_state, batch))


# Metrics logged as their value at the log step, not the mean over the window since the last log.
LAST_VALUE_METRICS = ('lr',)


def mean_metrics(history: list[dict]) -> dict:
  """The mean of each metric over the steps since the last log; 'lr' is the logged step's (the lr
  its update used: schedule(step - 1); with layer decay, the peak group's, the head's)."""
  return {
    k: float(history[-1][k]) if k in LAST_VALUE_METRICS else float(np.mean([h[k] for h in history]))
    for k in history[0]
  }


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


class _TrainProgress(progress_lib.Progress):
  """The loop's line at each log step: steps done, their rate, the window's mean loss and clips/s,
  elapsed time and ETA."""

  scalars: dict = {}  # the last log's metrics

  def details(self) -> list[str]:
    s = self.scalars
    return [f'loss {s["loss"]:.4g}', f'{s["perf/clips_per_s"]:.1f} clips/s'] if s else []


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


def _close_quietly(ckpt, writer) -> None:
  """Close after an error without hiding it: a failure here is logged."""
  for close in (ckpt.close, writer.close):
    try:
      close()
    except Exception as e:  # noqa: BLE001
      logging.error('While stopping: %s', e)
