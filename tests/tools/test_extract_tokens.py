"""tools.extract_tokens: the command line pieces with a stub tokenizer, its flags and errors."""

import dataclasses
import io

import numpy as np

from mvm_jax.data import tokens

CROP = 32
FPS = 2.0
VOCAB = 16


@dataclasses.dataclass(frozen=True)
class StubTokenizer:
  """The interface of mvm_jax.frozen_tokenizer.FrozenTokenizer, with jittable block means."""

  module: object = None
  variables: dict = dataclasses.field(default_factory=lambda: {'scale': np.float32(4.0)})
  vocab_size: int = VOCAB
  downsample: int = 8
  description: str = 'stub block means'

  def tokenize(self, variables, video):
    import jax.numpy as jnp

    *lead, h, w, _ = video.shape
    means = video.reshape(*lead, h // 8, 8, w // 8, 8, 3).mean(axis=(-4, -2, -1))
    return jnp.clip(jnp.floor((means + 2.0) * variables['scale']), 0, VOCAB - 1).astype(jnp.int32)


def test_command_line_pieces(tmp_path):
  from configs import vimpac
  from mvm_jax.tools import extract_tokens as cli

  config = vimpac.get_config('tiny')
  config.data.update(crop_size=CROP, target_fps=FPS)  # builtin 'test': 3, 3, 6, 6, 3, 3, 3, 3 frames
  config.tokenizer.extract_resize_short_side = 40  # short side 40, then the centre 32²
  out = io.StringIO()
  result = cli.extract(
    config,
    name='cli_tokens',
    data_dir=str(tmp_path),
    splits=('test',),
    frames_per_call=8,
    report_every_s=0.0,
    tokenizer=StubTokenizer(),
    out=out,
  )
  text = out.getvalue()
  assert (result.done, result.skipped, result.frames) == (8, 0, 30)
  assert 'tokenizing test: 8/8 videos (100.0%)' in text and 'frames/s' in text and 'ETA' in text
  assert 'tokenizer: stub block means (vocab 16, 32 px -> 4x4 tokens)' in text
  assert (
    f'config.vimpac.vocab_size={config.vimpac.vocab_size} differs from the tokenizer vocabulary 16' in text
  )
  assert (
    f'--config.data.source=tokens --config.data.tfds_name=cli_tokens --config.data.tfds_data_dir={tmp_path}'
    in text
  )
  info = tokens.read_token_info('cli_tokens', str(tmp_path))
  assert info['tokenizer'] == 'stub block means' and info['decode_short_side'] == 2 * CROP
  assert info['resize_short_side'] == 40
  assert cli.decode_short_side(config.data) == 2 * CROP


def test_command_line_flags_and_errors(tmp_path):
  from tests.conftest import run_module

  args = [
    '--config=configs/vimpac.py:tiny',
    '--name=x',
    f'--data_dir={tmp_path}',
    '--config.data.target_fps=2.0',
  ]
  done = run_module('mvm_jax.tools.extract_tokens', *args, timeout=120)
  assert done.returncode != 0 and 'train: 8 videos' in done.stdout
  assert 'extract_tokens: config.tokenizer.workdir' in done.stderr, done.stderr
  done = run_module('mvm_jax.tools.extract_tokens', *args, '--config.data.source=tokens', timeout=120)
  assert done.returncode != 0 and 'config.data.source: tokens are extracted from videos' in done.stderr
