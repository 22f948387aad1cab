"""Parameter counts and forward GFLOPs per clip, from XLA's cost analysis.

  python -m mvm_jax.tools.model_stats --config configs/mae_st.py:vit_l [--json]
  python -m mvm_jax.tools.model_stats --config configs/vimpac.py:large_half [--json]

Nothing runs: parameters come from `jax.eval_shape`, FLOPs from lowering and
compiling forward passes on abstract inputs (batch 1). XLA counts 2 FLOPs per
multiply-add; the papers (fvcore) count 1, shown alongside.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from mvm_jax import config as config_lib
from mvm_jax import console, masking, methods
from mvm_jax.methods import mae
from mvm_jax.train import flops


def _abstract_video(config):
  return jax.ShapeDtypeStruct((1,) + methods.video_shape(config) + (3,), jnp.float32)


def _count(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def _mae_forward_flops(config, dense: bool) -> tuple[float, dict]:
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.dense_encoder = dense
  model = mae.autoencoder(config)
  masker = masking.make_masker(config.masking.kind, model.encoder.grid, config.masking.ratio)
  video = _abstract_video(config)

  def init(rng, v):
    return model.init({'params': rng}, v, masker(rng, 1))['params']

  params = jax.eval_shape(init, jax.random.PRNGKey(0), video)
  forward = lambda p, v, rng: model.apply({'params': p}, v, masker(rng, 1))
  compiled = jax.jit(forward).lower(params, video, jax.random.PRNGKey(0)).compile()
  return flops.compiled_flops(compiled), params


def _finetune_flops(config, num_classes: int) -> tuple[float, int]:
  clf = mae.video_classifier(config, num_classes)
  video = _abstract_video(config)
  params = jax.eval_shape(lambda rng, v: clf.init({'params': rng}, v)['params'], jax.random.PRNGKey(0), video)
  compiled = jax.jit(lambda p, v: clf.apply({'params': p}, v)).lower(params, video).compile()
  return flops.compiled_flops(compiled), _count(params)


def vimpac_stats(config) -> dict:
  """VIMPAC: {'params': {backbone, token_head, cls_head, heads, total}, 'gflops_per_clip':
  {backbone, pretrain}} on the config's token map. `backbone` counts the token
  embedding (as the paper's Table 10), `heads` = token head + [CLS] head."""
  from mvm_jax.methods import vimpac

  model = vimpac.vimpac_model(config, projector=True)
  tokens = jax.ShapeDtypeStruct((1,) + vimpac.token_shape(config), jnp.int32)
  variables = jax.eval_shape(lambda rng, t: model.init({'params': rng}, t), jax.random.PRNGKey(0), tokens)
  params = variables['params']
  counts = {'backbone': _count(params['backbone']), 'token_head': _count(params['token_head'])}
  counts['cls_head'] = _count(params['projector'])
  counts['heads'] = counts['token_head'] + counts['cls_head']
  counts['total'] = counts['backbone'] + counts['heads']
  backbone = model.backbone.clone(parent=None, name=None)
  backbone_fn = lambda v, t: backbone.apply({'params': v['params']['backbone']}, t)
  gflops = {}
  for name, fn in (('backbone', backbone_fn), ('pretrain', lambda v, t: model.apply(v, t))):
    gflops[name] = flops.compiled_flops(jax.jit(fn).lower(variables, tokens).compile()) / 1e9
  return {'params': counts, 'gflops_per_clip': gflops}


def format_vimpac_table(stats: dict, config) -> str:
  from mvm_jax.methods import vimpac

  p, g, v = stats['params'], stats['gflops_per_clip'], config.vimpac
  t, h, w = vimpac.token_shape(config)
  lines = [
    (
      f'tokens {t}×{h}×{w} (vocab {v.vocab_size}), layout {v.layout}, {v.depth}×{v.width}'
      f'{" large-half" if v.large_half else ""}, mask block K={config.masking.get("num_blocks", "-")}'
    ),
    f'{"parameters":<28}{"count":>14}',
    f'{"  backbone (w/ token emb.)":<28}{p["backbone"] / 1e6:>13.1f}M',
    f'{"  token head":<28}{p["token_head"] / 1e6:>13.1f}M',
    f'{"  [CLS] head":<28}{p["cls_head"] / 1e6:>13.1f}M',
    f'{"  total":<28}{p["total"] / 1e6:>13.1f}M',
    f'{"forward GFLOPs per clip":<28}{"XLA (2/MAC)":>14}{"1/MAC":>16}',
  ]
  for name, key in (('  backbone', 'backbone'), ('  pre-training (+ heads)', 'pretrain')):
    lines.append(f'{name:<28}{g[key]:>14.1f}{g[key] / 2:>16.1f}')
  return '\n'.join(lines)


def model_stats(config, num_classes: int = 400) -> dict:
  """{'params': {...}, 'gflops_per_clip': {...}} (XLA convention, 2 per multiply-add)."""
  method = methods.get(config)
  if not method.has_video_encoder:
    raise config_lib.ConfigError(f'config.model.name: {method.name!r} has no video encoder to count')
  if method.uses_tokens:
    return vimpac_stats(config)
  config_lib.validate(config)
  sparse, params = _mae_forward_flops(config, dense=False)
  dense, _ = _mae_forward_flops(config, dense=True)
  finetune, finetune_params = _finetune_flops(config, num_classes)
  encoder = _count(params['encoder'])
  return {
    'params': {'encoder': encoder, 'decoder': _count(params) - encoder, 'finetune_encoder': finetune_params},
    'gflops_per_clip': {
      'mae_sparse': sparse / 1e9,
      'mae_dense': dense / 1e9,
      'finetune_encoder': finetune / 1e9,
    },
  }


def format_table(stats: dict, config) -> str:
  p, g = stats['params'], stats['gflops_per_clip']
  d = config.data
  lines = [
    f'clip {d.num_frames}×{d.crop_size}×{d.crop_size}, patch {config.model.t_patch_size}×'
    f'{config.model.patch_size}×{config.model.patch_size}, mask {config.masking.kind} {config.masking.ratio}',
    f'{"parameters":<28}{"count":>14}',
    f'{"  encoder (pre-training)":<28}{p["encoder"] / 1e6:>13.1f}M',
    f'{"  decoder":<28}{p["decoder"] / 1e6:>13.1f}M',
    f'{"  fine-tune encoder + head":<28}{p["finetune_encoder"] / 1e6:>13.1f}M',
    f'{"forward GFLOPs per clip":<28}{"XLA (2/MAC)":>14}{"paper (1/MAC)":>16}',
  ]
  for name, key in (
    ('  MAE, sparse encoder', 'mae_sparse'),
    ('  MAE, dense (w/ [M])', 'mae_dense'),
    ('  fine-tune encoder', 'finetune_encoder'),
  ):
    lines.append(f'{name:<28}{g[key]:>14.1f}{g[key] / 2:>16.1f}')
  lines.append(f'{"  dense / sparse":<28}{g["mae_dense"] / g["mae_sparse"]:>14.2f}×')
  return '\n'.join(lines)


def main(argv):
  del argv
  config = flags.FLAGS.config
  stats = model_stats(config, flags.FLAGS.num_classes)
  table = format_vimpac_table if methods.get(config).uses_tokens else format_table
  print(json.dumps(stats) if flags.FLAGS.json else table(stats, config))


def _define_flags():
  """Flags live here so importing this module (e.g. in tests) defines none."""
  config_flags.DEFINE_config_file('config', None, 'Config file and preset.', lock_config=True)
  flags.DEFINE_bool('json', False, 'Print one JSON object instead of a table.')
  flags.DEFINE_integer('num_classes', 400, 'Classes of the fine-tune head (Kinetics-400 by default).')


if __name__ == '__main__':
  _define_flags()
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=console.parse_flags)
