"""Tokenizes the videos of a config's data source with a frozen VQ tokenizer (VIMPAC).

  python -m mvm_jax.tools.extract_tokens --config configs/vimpac.py:tiny \\
      --name builtin_tokens --data_dir DATA_DIR [--splits train,test] [--overwrite] \\
      [--config.tokenizer.workdir=VQVAE_WORKDIR]

The videos are those ``config.data`` names (``pipeline.build_video_source``), their
frames taken at ``config.data.target_fps`` (<= 0: every frame), resized and
centre-cropped to ``config.data.crop_size`` and normalized with
``config.data.mean`` / ``std`` (FFmpeg pre-scaling as ``decode_short_side``);
the tokenizer is ``mvm_jax.frozen_tokenizer.load_frozen_tokenizer(config)``.
The tokens are written as the tfds dataset ``--name`` in ``--data_dir``
(:func:`mvm_jax.data.token_extraction.extract_tokens`): unreadable videos are skipped
and listed, and an interrupted run, started again with the same arguments,
resumes where it stopped. Progress (videos done / total, frames/s, skipped,
ETA) is printed every ``--report_every_s`` seconds. Then pre-train with::

  --config.data.source=tokens --config.data.tfds_name=NAME \\
  --config.data.tfds_data_dir=DATA_DIR
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from mvm_jax import console
from mvm_jax import progress as progress_lib


def decode_short_side(data_config) -> int | None:
  """``config.data.decode_short_side`` as the samplers use it (-1: 2 x crop_size; 0: None)."""
  short_side = data_config.decode_short_side
  if short_side == -1:
    short_side = 2 * data_config.crop_size
  return short_side or None


def make_tokenize(tokenizer):
  """A numpy function float32 [N, H, W, 3] -> int32 [N, H/f, W/f] running ``tokenizer`` jitted.

  The weights are an argument of the jitted function (not constants baked
  into it) and are put on the device once.
  """
  import jax
  import numpy as np

  fn = jax.jit(tokenizer.tokenize)
  variables = jax.device_put(tokenizer.variables)
  return lambda frames: np.asarray(fn(variables, frames))


def extract(
  config,
  *,
  name: str,
  data_dir: str,
  splits=('train',),
  overwrite: bool = False,
  frames_per_call: int = 64,
  videos_per_chunk: int = 64,
  threads: int = 4,
  work_dir: str = '',
  report_every_s: float = 5.0,
  tokenizer=None,
  out=None,
):
  """Builds the split sources and the tokenizer, extracts, prints progress (to ``out``, default stdout).

  Args:
    config: the experiment config (``config.data`` and what
      ``load_frozen_tokenizer`` reads).
    tokenizer: use this ``FrozenTokenizer`` (module, variables, vocab_size,
      downsample, description, tokenize) instead of
      ``frozen_tokenizer.load_frozen_tokenizer(config)``.

  Returns:
    The final :class:`~mvm_jax.data.token_extraction.ExtractProgress`.

  Raises:
    ValueError (SourceError included): a wrong ``config.data`` setting,
      naming the key; partial work of other arguments.
    FileExistsError: the dataset exists (without ``overwrite``).
  """
  import tensorflow_datasets as tfds

  from mvm_jax import methods
  from mvm_jax.data import pipeline, settings, token_extraction  # here: keeps --help fast

  tfds.disable_progress_bar()  # our progress lines replace tqdm's.
  out = out or sys.stdout
  dc = config.data
  if dc.source == 'tokens':
    raise ValueError(
      'config.data.source: tokens are extracted from videos; name a video source, not "tokens"'
    )
  settings.validate_data_config(dc)
  split_sources = {}
  for split in splits:
    split_sources[split] = s = pipeline.build_video_source(dc, split)
    print(f'{split}: {len(s)} videos, {s.num_classes} classes ({s.name})', file=out, flush=True)
  if tokenizer is None:
    from mvm_jax import frozen_tokenizer

    tokenizer = frozen_tokenizer.load_frozen_tokenizer(config)
  if dc.crop_size % tokenizer.downsample:
    raise ValueError(
      f'config.data.crop_size: {dc.crop_size} is not a multiple of the tokenizer downsampling '
      f'{tokenizer.downsample}'
    )
  side = dc.crop_size // tokenizer.downsample
  print(
    f'tokenizer: {tokenizer.description} (vocab {tokenizer.vocab_size}, {dc.crop_size} px -> {side}x{side} '
    f'tokens), frames at {dc.target_fps if dc.target_fps > 0 else "native"} fps',
    file=out,
    flush=True,
  )
  method = methods.get(config)
  model_vocab = method.token_vocab_size(config)
  if model_vocab is not None and model_vocab != tokenizer.vocab_size:
    print(
      f'note: config.vimpac.vocab_size={model_vocab} differs from the tokenizer vocabulary '
      f'{tokenizer.vocab_size}; set it to {tokenizer.vocab_size} to train on these tokens',
      file=out,
      flush=True,
    )

  def report(p):
    if p.due(report_every_s):
      print(p.line(), file=out, flush=True)

  result = token_extraction.extract_tokens(
    split_sources,
    make_tokenize(tokenizer),
    name=name,
    data_dir=data_dir,
    vocab_size=int(tokenizer.vocab_size),
    crop_size=dc.crop_size,
    target_fps=float(dc.target_fps),
    mean=tuple(dc.mean),
    std=tuple(dc.std),
    short_side=decode_short_side(dc),
    resize_short_side=method.extract_resize_short_side(config),
    frames_per_call=frames_per_call,
    tokenizer=str(tokenizer.description),
    overwrite=overwrite,
    progress=report,
    work_dir=work_dir or None,
    videos_per_chunk=videos_per_chunk,
    num_threads=threads,
  )
  written = result.done - result.skipped
  print(
    f'wrote the tokens of {written} videos ({result.frames} frames, {result.skipped} skipped) to '
    f'{data_dir}/{name} in {result.elapsed:.1f} s',
    file=out,
    flush=True,
  )
  for line in progress_lib.skipped_lines(result.skipped_paths):
    print(line, file=out)
  print(
    f'train on it with: --config.data.source=tokens --config.data.tfds_name={name} '
    f'--config.data.tfds_data_dir={data_dir}',
    file=out,
    flush=True,
  )
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mvm_jax import console

  console.quiet_library_logs()
  try:
    extract(
      flags.FLAGS.config,
      name=flags.FLAGS.name,
      data_dir=flags.FLAGS.data_dir,
      splits=flags.FLAGS.splits,
      overwrite=flags.FLAGS.overwrite,
      frames_per_call=flags.FLAGS.frames_per_call,
      videos_per_chunk=flags.FLAGS.videos_per_chunk,
      threads=flags.FLAGS.threads,
      work_dir=flags.FLAGS.work_dir,
      report_every_s=flags.FLAGS.report_every_s,
    )
  except FileExistsError as e:
    sys.exit(f'extract_tokens: {e}; pass --overwrite to replace it')
  except ValueError as e:
    sys.exit(f'extract_tokens: {e}')


def _define_flags():
  """Flags live here so importing this module (e.g. in tests) defines none."""
  config_flags.DEFINE_config_file(
    'config', None, 'Config file and preset, e.g. configs/vimpac.py:tiny.', lock_config=True
  )
  flags.DEFINE_string('name', None, 'Name of the tfds dataset to write (lowercase, digits, _).')
  flags.DEFINE_string('data_dir', None, 'tfds data directory to write into.')
  flags.DEFINE_list('splits', ['train'], 'Splits of config.data to tokenize, comma separated.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing dataset (and partial work of other arguments).')
  flags.DEFINE_integer('frames_per_call', 64, 'Frames per tokenizer call (one compiled batch size).')
  flags.DEFINE_integer(
    'videos_per_chunk', 64, 'Videos per saved chunk (the unit an interrupted run resumes).'
  )
  flags.DEFINE_integer('threads', 4, 'Threads decoding and cropping videos ahead of the tokenizer.')
  flags.DEFINE_string(
    'work_dir', '', 'Where finished chunks are kept until the end; default DATA_DIR/NAME/_partial.'
  )
  flags.DEFINE_float('report_every_s', 5.0, 'Seconds between progress lines.')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config', 'name', 'data_dir'])
  app.run(main, flags_parser=console.parse_flags)
