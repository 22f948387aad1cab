"""Export a checkpoint's params as a PyTorch state_dict.

  python -m mvm_jax.export --checkpoint WORKDIR --format mae_st --out mae_st.pth
  python -m mvm_jax.export --checkpoint WORKDIR/checkpoints/2000 --format mae_st_vit --out vit.safetensors
  python -m mvm_jax.export --checkpoint IMAGE_WORKDIR --format timm --out vit.safetensors

--checkpoint: a run workdir (newest checkpoint), one of its step directories, or
an import_torch output. --format: mae_st (pre-training model), mae_st_vit
(encoder [+ classifier head]), timm (image encoders: t_patch_size 1, one frame),
mae (image MAE pre-training model). The file type follows --out: `.safetensors`
or torch.save (`.pth`). Prints every tensor (name, shape, dtype) and totals.
"""

from __future__ import annotations

from absl import app, flags, logging

from mvm_jax.export import names

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Workdir, checkpoint step dir, or import_torch output dir.')
  flags.DEFINE_enum('format', None, list(names.FORMATS), 'PyTorch layout to write.')
  flags.DEFINE_string('out', None, 'Output file: *.safetensors or *.pth (torch.save).')
  flags.DEFINE_string('wrap_key', '', ".pth only: save {wrap_key: state_dict}, e.g. 'model' for mae_st.")
  flags.mark_flags_as_required(['checkpoint', 'format', 'out'])


def export(checkpoint: str, fmt: str, out: str, wrap_key: str = '') -> dict:
  """Read params from `checkpoint`, write them to `out` in `fmt`; returns the state_dict."""
  from mvm_jax.export import checkpoints, convert, importer, torch_io

  params, config, source = checkpoints.load_params(checkpoint)
  grid = importer.token_grid(config) if config is not None else None
  state_dict, notes = convert.to_state_dict(params, fmt, grid)
  torch_io.save_state_dict(state_dict, out, wrap_key or None)
  print(convert.summary(state_dict, f'{source} → {out} ({fmt})'))
  for note in notes:
    print(f'note: {note}')
  return state_dict


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # checkpoint libraries' INFO chatter; results go to stdout
  try:
    export(FLAGS.checkpoint, FLAGS.format, FLAGS.out, FLAGS.wrap_key)
  except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  define_flags()
  app.run(main)
