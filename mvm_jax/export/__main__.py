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
  flags.DEFINE_integer(
    'num_classes',
    None,
    'mae_st_vit of params without a classifier (a pre-training run): add a zero-initialised '
    'head.weight [N, D] / head.bias [N], so that the file loads with strict=True into '
    "mae_st's VisionTransformer(num_classes=N).",
    lower_bound=1,
  )
  flags.mark_flags_as_required(['checkpoint', 'format', 'out'])


def export(checkpoint: str, fmt: str, out: str, wrap_key: str = '', num_classes: int | None = None) -> dict:
  """Read params from `checkpoint`, write them to `out` in `fmt`; returns the state_dict.

  `num_classes` (mae_st_vit only): add a zero-initialised classifier head [N, D] / [N] when the
  params have none (else the summary notes that the file lacks mae_st's `head.*`)."""
  from mvm_jax.export import checkpoints, convert, importer, torch_io

  params, config, source = checkpoints.load_params(checkpoint)
  grid = importer.token_grid(config) if config is not None else None
  params, head_notes = with_head(params, fmt, num_classes)
  state_dict, notes = convert.to_state_dict(params, fmt, grid)
  notes = head_notes + notes
  torch_io.save_state_dict(state_dict, out, wrap_key or None)
  print(convert.summary(state_dict, f'{source} → {out} ({fmt})'))
  for note in notes:
    print(f'note: {note}')
  return state_dict


def with_head(params: dict, fmt: str, num_classes: int | None) -> tuple[dict, list[str]]:
  """(params, notes): for mae_st_vit, `params` plus a zero head {'kernel': [D, N], 'bias': [N]} when
  `num_classes` is given and the params have no 'head'; a note either way when they have none."""
  import numpy as np

  if num_classes is not None and fmt != 'mae_st_vit':
    raise ValueError(f'--num_classes adds a classifier head to format mae_st_vit, not {fmt!r}')
  if fmt != 'mae_st_vit':
    return params, []
  if 'head' in params:
    classes = params['head']['kernel'].shape[-1]
    if num_classes is not None and num_classes != classes:
      raise ValueError(f'--num_classes={num_classes}, but the params already have a {classes}-class head')
    return params, []
  if num_classes is None:
    return params, [
      'no classifier head: these params (a pre-training run) have none, so the file lacks head.weight / '
      "head.bias of mae_st's VisionTransformer: load it with strict=False, or export with "
      '--num_classes N for a zero-initialised head that loads with strict=True'
    ]
  width = params['encoder']['cls_token'].shape[-1]
  dtype = np.asarray(params['encoder']['cls_token']).dtype
  head = {'kernel': np.zeros((width, num_classes), dtype), 'bias': np.zeros((num_classes,), dtype)}
  note = f'head: zero-initialised [{num_classes}, {width}] classifier (--num_classes={num_classes}), to be fine-tuned'
  return dict(params, head=head), [note]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # checkpoint libraries' INFO chatter; results go to stdout
  try:
    export(FLAGS.checkpoint, FLAGS.format, FLAGS.out, FLAGS.wrap_key, FLAGS.num_classes)
  except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  define_flags()
  app.run(main)
