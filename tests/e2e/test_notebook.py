"""notebooks/inspect_run.ipynb executes top to bottom on a run made here, so it never rots."""

import os

import pytest

from tests.conftest import REPO, micro_config


@pytest.mark.slow
def test_inspect_run_notebook_executes(tmp_path):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  from mvm_jax.train import loop

  config = micro_config()
  config.total_steps = 2
  loop.train_and_evaluate(config, str(tmp_path))
  notebook = nbformat.read(REPO / 'notebooks' / 'inspect_run.ipynb', as_version=4)
  os.environ['MVM_WORKDIR'] = str(tmp_path)
  try:
    nbclient.NotebookClient(
      notebook, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(REPO / 'notebooks')}}
    ).execute()
  finally:
    del os.environ['MVM_WORKDIR']
  images = [o for c in notebook.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert len(images) >= 4  # curves, masks, two reconstructions
