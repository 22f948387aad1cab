"""Import a PyTorch checkpoint (mae_st, image MAE, timm ViT) as Flax params.

  python -m mvm_jax.import_torch --checkpoint mae_st_vitl.pth --config configs/mae_st.py:vit_l --out DIR
  python -m mvm_jax.import_torch --checkpoint mae_vitb.pth --config configs/mae_st.py:vit_b \
      --config.data.num_frames=1 --config.model.t_patch_size=1 --config.model.pred_t_dim=1 --config.model.decoder_cls=encoder --out DIR

The state_dict (plain, or wrapped as {'model': sd} / {'model_state': sd}) must
fit the model the config builds: every missing key, unexpected key and shape
mismatch is reported together. --model picks the target (auto: mae with a
decoder, classifier with head + fc_norm, encoder otherwise); --format the
layout (auto-detected from the keys). Output layout and loader:
`mvm_jax.export.checkpoints` (`load_imported_params(DIR)`).
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from mvm_jax import console

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    'config', None, 'Config file and preset, e.g. configs/mae_st.py:vit_b.', lock_config=True
  )
  flags.DEFINE_string('checkpoint', None, 'PyTorch checkpoint: *.pth/*.pt (torch.save) or *.safetensors.')
  flags.DEFINE_string('out', None, 'Directory to write the Flax params to.')
  flags.DEFINE_enum('model', 'auto', ['auto', 'mae', 'encoder', 'classifier'], 'Target model.')
  flags.DEFINE_enum('format', 'auto', ['auto', 'mae_st', 'mae_st_vit', 'timm', 'mae'], 'State_dict layout.')
  flags.mark_flags_as_required(['config', 'checkpoint', 'out'])


def import_checkpoint(checkpoint: str, config, out: str, model: str = 'auto', fmt: str = 'auto') -> dict:
  """Read `checkpoint`, convert for `config`, write under `out`; returns the params."""
  from mvm_jax.export import checkpoints, convert, importer, torch_io

  state_dict = torch_io.load_state_dict(checkpoint)
  params, info = importer.import_state_dict(state_dict, config, model, fmt)
  info['source'] = str(checkpoint)
  checkpoints.save_imported_params(out, params, config, info)
  title = f'{checkpoint} ({info["format"]}) → {out} ({info["model"]} params)'
  print(convert.summary(convert.flat_names(params), title))
  for note in info['notes']:
    print(f'note: {note}')
  return params


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # checkpoint libraries' INFO chatter; results go to stdout
  from mvm_jax import config as config_lib

  try:
    config_lib.validate(FLAGS.config)
  except config_lib.ConfigError as e:
    raise app.UsageError(str(e)) from None
  from mvm_jax.export import convert

  try:
    import_checkpoint(FLAGS.checkpoint, FLAGS.config, FLAGS.out, FLAGS.model, FLAGS.format)
  except convert.StateDictMismatch as e:
    hint = "hint: --config must describe the checkpoint's model (widths, depths, heads, patch and clip sizes)"
    raise SystemExit(f'error: {e}\n{hint}') from None
  except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=console.parse_flags)
