"""Packs a folder or list of videos into a tfds dataset (array_record files).

  python -m mvm_jax.tools.pack_videos --source folder --path DIR \\
      --name my_videos --data_dir DATA_DIR [--splits train,test]
  python -m mvm_jax.tools.pack_videos --source csv --path 'lists/{split}.csv' \\
      [--root VIDEO_DIR] [--class_names_file classes.txt] --name my_videos --data_dir DATA_DIR

The sources are those of ``config.data.source = 'folder' | 'csv'`` (same
flags as the ``config.data`` keys). Each readable video is stored as its
encoded bytes with its label, path and frame count (unreadable ones are
skipped and listed), so training reads a few big files instead of many
small ones and decodes the same frames. Progress (videos done / total, rate,
ETA) is printed every ``--report_every_s`` seconds. Then train with::

  --config.data.source=tfds --config.data.tfds_name=my_videos \\
  --config.data.tfds_data_dir=DATA_DIR
"""

from __future__ import annotations

import sys

from absl import app, flags

from mvm_jax import progress as progress_lib

FLAGS = flags.FLAGS
flags.DEFINE_enum('source', None, ['folder', 'csv'], 'Where the videos are listed (as config.data.source).')
flags.DEFINE_string('path', None, 'Directory (folder) or list file (csv; may contain {split}).')
flags.DEFINE_string('root', '', 'csv: directory the listed paths are relative to (default: the list file).')
flags.DEFINE_string('class_names_file', '', 'Optional class names, one a line (or "<id> <name>").')
flags.DEFINE_string('name', None, 'Name of the tfds dataset to write (lowercase, digits, _).')
flags.DEFINE_string('data_dir', None, 'tfds data directory to write into.')
flags.DEFINE_list('splits', ['train'], 'Splits to pack, comma separated.')
flags.DEFINE_integer('threads', 8, 'Threads reading files ahead of the writer.')
flags.DEFINE_bool('overwrite', False, 'Replace an existing dataset of that name.')
flags.DEFINE_float('report_every_s', 2.0, 'Seconds between progress lines.')
for _name in ('source', 'path', 'name', 'data_dir'):
  flags.mark_flag_as_required(_name)


def pack(
  source: str,
  path: str,
  *,
  name: str,
  data_dir: str,
  splits=('train',),
  root: str = '',
  class_names_file: str = '',
  threads: int = 8,
  overwrite: bool = False,
  report_every_s: float = 2.0,
  out=None,
):
  """Builds the split sources, packs them and prints progress (to ``out``, default stdout).

  Returns:
    The final :class:`~mvm_jax.data.tfds_video.PackProgress`.

  Raises:
    sources.SourceError: a wrong --path / --root / --class_names_file.
    FileExistsError: the dataset exists (without ``overwrite``).
  """
  import tensorflow_datasets as tfds

  from mvm_jax.data import sources, tfds_video  # here: keeps --help fast

  tfds.disable_progress_bar()  # our progress lines replace tqdm's.
  out = out or sys.stdout
  class_names_file = class_names_file or None
  split_sources = {}
  for split in splits:
    if source == 'csv':
      split_sources[split] = sources.list_source(
        path, split, root=root or None, class_names_file=class_names_file
      )
    else:
      split_sources[split] = sources.folder_source(path, split, class_names_file=class_names_file)
    s = split_sources[split]
    print(f'{split}: {len(s)} videos, {s.num_classes} classes ({s.name})', file=out, flush=True)

  def report(p):
    if p.due(report_every_s):
      print(p.line(), file=out, flush=True)

  result = tfds_video.pack_videos(
    split_sources, name=name, data_dir=data_dir, overwrite=overwrite, num_threads=threads, progress=report
  )
  packed = result.done - result.skipped
  print(
    f'packed {packed} videos ({result.bytes_read / 2**20:.1f} MiB, {result.skipped} skipped) into '
    f'{data_dir}/{name} in {result.elapsed:.1f} s ({packed / max(result.elapsed, 1e-9):.1f} videos/s)',
    file=out,
    flush=True,
  )
  for line in progress_lib.skipped_lines(result.skipped_paths):
    print(line, file=out)
  print(
    f'read it with: --config.data.source=tfds --config.data.tfds_name={name} '
    f'--config.data.tfds_data_dir={data_dir}',
    file=out,
    flush=True,
  )
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from mvm_jax.data import sources

  try:
    pack(
      FLAGS.source,
      FLAGS.path,
      name=FLAGS.name,
      data_dir=FLAGS.data_dir,
      splits=FLAGS.splits,
      root=FLAGS.root,
      class_names_file=FLAGS.class_names_file,
      threads=FLAGS.threads,
      overwrite=FLAGS.overwrite,
      report_every_s=FLAGS.report_every_s,
    )
  except sources.SourceError as e:
    sys.exit(f'pack_videos: --{e.key}: {e.message}')
  except FileExistsError as e:
    sys.exit(f'pack_videos: {e}; pass --overwrite to replace it')


if __name__ == '__main__':
  app.run(main)
