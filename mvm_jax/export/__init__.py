"""Export Flax checkpoints to PyTorch state_dicts and import them back.

  names        PyTorch names and layouts (mae_st, mae_st_vit, timm, mae formats)
  convert      Flax params <-> {key: numpy array}, strict checking, summaries
  torch_io     .safetensors / .pth files (PyTorch is imported only there)
  checkpoints  params from workdirs / step dirs; imported-params layout and loader
  importer     state_dict + config → params of MaskedAutoencoder / encoder / classifier

Command lines: `python -m mvm_jax.export` (this package's __main__) and
`python -m mvm_jax.import_torch`. Importing this package needs no PyTorch.
"""

from mvm_jax.export.checkpoints import load_imported_params, load_params, save_imported_params
from mvm_jax.export.convert import StateDictMismatch, from_state_dict, summary, to_state_dict
from mvm_jax.export.names import FORMATS

__all__ = [
  'FORMATS',
  'StateDictMismatch',
  'from_state_dict',
  'load_imported_params',
  'load_params',
  'save_imported_params',
  'summary',
  'to_state_dict',
]
