"""Each method owns its config: the sections a run carries, their defaults and checks; config files
load without importing each other, from any working directory."""

import json
import os
import subprocess
import sys

import pytest

from configs import hpm, knn, mae_hpm_infonce, mae_st, vic_mae, vimpac, vqvae
from mvm_jax import config as config_lib
from mvm_jax import config_schema, methods
from mvm_jax.evaluate import frozen
from mvm_jax.methods import mae as mae_method
from mvm_jax.objectives import contrastive, loss_prediction
from tests.conftest import REPO


def _sections(c):
  """The config's sections beyond the keys every method shares."""
  return set(c) - set(config_schema.base_config())


def test_runs_carry_only_the_sections_they_use():
  assert _sections(mae_st.get_config('tiny')) == {'masking'}
  assert _sections(hpm.get_config('tiny')) == {'masking', 'hpm'}
  assert _sections(vic_mae.get_config('tiny')) == {'masking', 'contrastive'}
  assert _sections(vic_mae.get_config('mae_simsiam')) == {'masking', 'contrastive'}
  assert _sections(mae_hpm_infonce.get_config('tiny')) == {'masking', 'hpm', 'contrastive'}
  assert _sections(vimpac.get_config('tiny')) == {'vimpac', 'masking', 'tokenizer', 'contrastive'}
  for preset in ('tiny', 'small_data', 'base'):
    c = vqvae.get_config(preset)
    assert _sections(c) == {'tokenizer'}, preset  # no masking, hpm or contrastive
    config_lib.validate(c)
  assert _sections(knn.get_config('tiny')) == {'masking', 'knn'}  # an evaluator: MAE-ST's model + its own


def test_the_model_section_holds_the_methods_own_keys():
  """`model` is name and dtype plus the method's model keys: the ViT's in pixel MAE runs, none in
  VIMPAC and VQ-VAE runs (their sections `vimpac` / `tokenizer` describe their models)."""
  vit_keys = {'name', 'dtype'} | set(mae_method.default_model_config())
  assert set(mae_st.get_config('tiny').model) == vit_keys
  assert set(hpm.get_config('tiny').model) == vit_keys
  assert 'encoder' in vit_keys and 'attention' in vit_keys
  assert set(vimpac.get_config('tiny').model) == {'name', 'dtype'}
  assert set(vqvae.get_config('tiny').model) == {'name', 'dtype'}


def test_method_defaults_and_set_objectives():
  c = methods.base_config('mae')
  assert dict(c.objectives) == {'pixel_mse': 1.0} and c.masking.to_dict() == {'kind': 'random', 'ratio': 0.9}
  c = methods.base_config('mae', {'pixel_mse': 1.0, 'loss_prediction': 1.0, 'vicreg': 0.1})
  assert c.hpm == loss_prediction.default_hpm_config()
  assert c.contrastive == contrastive.default_contrastive_config()
  c.lock()
  c.hpm.alpha_T = 0.3
  config_lib.set_objectives(c, {'pixel_mse': 1.0, 'loss_prediction': 1.0})  # drops contrastive
  assert 'contrastive' not in c and c.hpm.alpha_T == 0.3  # kept where present
  config_lib.set_objectives(c, {'pixel_mse': 1.0, 'simsiam': 1.0})
  assert 'hpm' not in c and c.contrastive.pooling == 'mean' and 'masking' in c
  assert methods.base_config('vqvae').tokenizer.kind == 'vqvae'
  assert dict(methods.base_config('vimpac').objectives) == {'token_ce': 1.0, 'infonce': 1.0}
  with pytest.raises(config_lib.ConfigError, match=r"config\.model\.name='bert'"):
    methods.base_config('bert')
  for method in methods.METHODS.values():  # every objective a method trains is a known one
    assert set(method.default_objectives) <= set(method.objectives)


def _vimpac():
  c = vimpac.get_config('tiny')
  c.tokenizer.workdir = '/a/vqvae/run'  # validation needs one, not its contents
  return c


def _missing(c, section):
  with c.unlocked():
    del c[section]
  return c


@pytest.mark.parametrize(
  'make,key,value,match',
  [
    (lambda: mae_st.get_config('tiny'), 'masking.ratio', 1.5, 'masking.ratio'),
    (lambda: mae_st.get_config('tiny'), 'masking.kind', 'block', 'masking.kind'),
    (lambda: mae_st.get_config('tiny'), 'model.patch_size', 7, 'model.patch_size'),
    (lambda: mae_st.get_config('tiny'), 'data.sampling', 'frame_pair', 'data.num_frames'),
    (lambda: hpm.get_config('tiny'), 'hpm.alpha_0', 2.0, 'hpm.alpha_0'),
    (lambda: hpm.get_config('tiny'), 'hpm.loss_predictor_target', 'l1', 'hpm.loss_predictor_target'),
    (lambda: vic_mae.get_config('tiny'), 'contrastive.temperature', 0.0, 'contrastive.temperature'),
    (
      lambda: vic_mae.get_config('tiny'),
      'objectives',
      {'pixel_mse': 1.0, 'token_ce': 1.0},
      'objectives.token_ce',
    ),
    (_vimpac, 'vimpac.layout', 'T|H|W', 'vimpac.layout'),
    (_vimpac, 'vimpac.num_heads', 5, 'vimpac.num_heads'),
    (_vimpac, 'masking.kind', 'tube', 'masking.kind'),
    (_vimpac, 'masking.num_blocks', 0, 'masking.num_blocks'),
    (_vimpac, 'tokenizer.kind', 'vqgan', 'tokenizer.kind'),
    (_vimpac, 'tokenizer.workdir', '', 'tokenizer.workdir'),
    (lambda: vqvae.get_config('tiny'), 'data.crop_size', 36, 'tokenizer.widths'),
    (lambda: vqvae.get_config('tiny'), 'tokenizer.codebook_size', 0, 'tokenizer.codebook_size'),
    (lambda: vqvae.get_config('tiny'), 'objectives', {'pixel_mse': 1.0}, 'objectives.pixel_mse'),
    (lambda: mae_st.get_config('tiny'), 'model.remat', 'some', 'model.remat'),
    (lambda: mae_st.get_config('tiny'), 'model.attention', 'flash', 'model.attention'),
  ],
)
def test_each_methods_validation_names_its_key(make, key, value, match):
  c = make()
  config_lib.validate(c)  # valid as built
  *path, last = key.split('.')
  parent = c
  for name in path:
    parent = parent[name]
  with c.unlocked():
    parent[last] = value
  with pytest.raises(config_lib.ConfigError, match=r'config\.' + match.replace('.', r'\.')):
    config_lib.validate(c)


def test_a_missing_section_is_named():
  with pytest.raises(config_lib.ConfigError, match=r'config\.vimpac: .*configs/vimpac\.py'):
    config_lib.validate(_missing(_vimpac(), 'vimpac'))
  with pytest.raises(config_lib.ConfigError, match=r'config\.masking: '):
    config_lib.validate(_missing(mae_st.get_config('tiny'), 'masking'))
  c = mae_st.get_config('tiny')
  c.data.sampling = 'clip_pair'
  c.objectives = {'pixel_mse': 1.0, 'infonce': 0.5}  # its section does not come with it
  with pytest.raises(config_lib.ConfigError, match=r'config\.contrastive: objectives\.infonce needs'):
    config_lib.validate(c)
  config_lib.set_objectives(c, {'pixel_mse': 1.0, 'infonce': 0.5})
  config_lib.validate(c)


def test_validation_is_idempotent_and_changes_nothing():
  for c in (mae_hpm_infonce.get_config('tiny'), vqvae.get_config('tiny'), _vimpac()):
    c.lock()
    before = c.to_dict()
    config_lib.validate(c)
    config_lib.validate(c)
    assert c.to_dict() == before
  c = knn.get_config('tiny')
  config_lib.validate(c, pretraining=False)
  config_lib.validate(c, pretraining=False)


def _old_style(c):
  """A config as runs saved it before sections followed the method: every section there was, and the
  pixel MAE's model keys in every run's `model`."""
  old = c.to_dict()
  old['model'] = {**mae_method.default_model_config().to_dict(), **old['model']}
  old.setdefault('masking', {'kind': 'random', 'ratio': 0.5})
  old.setdefault('hpm', loss_prediction.default_hpm_config().to_dict())
  old.setdefault('contrastive', contrastive.default_contrastive_config().to_dict())
  return old


@pytest.mark.parametrize('style', ['old', 'new'])
def test_run_dirs_of_both_styles_load_and_resolve(tmp_path, style):
  for name, c in (
    ('mae', hpm.get_config('tiny')),
    ('vimpac', _vimpac()),
    ('vqvae', vqvae.get_config('tiny')),
  ):
    run = tmp_path / name
    run.mkdir()
    saved = _old_style(c) if style == 'old' else c.to_dict()
    saved['model'].pop('remat', None)  # a model key added after the run: today's default fills it
    (run / 'config.json').write_text(json.dumps(saved))
    loaded = methods.load_run_config(str(run))
    assert loaded.model.name == name and set(saved) <= set(loaded)
    assert set(methods.by_name(name).model_defaults()) <= set(loaded.model)
    assert loaded.model.get('remat') == ('none' if name == 'mae' else None)
    config_lib.validate(loaded)
  probe = knn.get_config('tiny')
  for name, sections in (('mae', ()), ('vimpac', ('vimpac', 'tokenizer', 'masking'))):
    probe.init_from = str(tmp_path / name)
    resolved = frozen.resolve_config(probe)
    assert resolved.model.name == name
    for section in sections:
      assert resolved[section] == methods.load_run_config(str(tmp_path / name))[section]
    config_lib.validate(resolved, pretraining=False)
  from mvm_jax import frozen_tokenizer

  for name in ('mae', 'vimpac'):  # a tokenizer's run trains vq_recon
    with pytest.raises(ValueError, match='not a VQ-VAE'):
      frozen_tokenizer.load_vqvae_tokenizer(str(tmp_path / name), (0.5,) * 3, (0.5,) * 3)
  with pytest.raises(FileNotFoundError, match='no checkpoint'):  # past the check: no weights here
    frozen_tokenizer.load_vqvae_tokenizer(str(tmp_path / 'vqvae'), (0.5,) * 3, (0.5,) * 3)


def _main(cwd, *args):
  env = dict(os.environ, XLA_FLAGS='', TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=str(REPO))
  return subprocess.run(
    [sys.executable, '-m', 'mvm_jax.main', *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_configs_load_from_another_working_directory(tmp_path):
  """Config files import the package, not each other: any working directory will do (the package
  importable, as after `pip install -e .`). A bad value then fails validation, naming the key."""
  config = os.path.join(REPO, 'configs', 'mae_hpm_infonce.py')  # -> presets.hpm -> presets.mae_st
  result = _main(
    tmp_path, '--config', f'{config}:tiny', '--workdir', str(tmp_path / 'w'), '--config.hpm.alpha_0=2'
  )
  assert result.returncode != 0 and 'config.hpm.alpha_0' in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


@pytest.mark.parametrize(
  'override, named',
  [('--config.masking.ratio=0.5', "'masking'"), ('--config.model.scan_blocks=true', 'scan_blocks')],
)
def test_an_override_of_a_key_the_run_lacks_fails_naming_it(tmp_path, override, named):
  """A VQ-VAE run has no masking section and no ViT model keys."""
  result = _main(REPO, '--config', 'configs/vqvae.py:tiny', '--workdir', str(tmp_path), override)
  assert result.returncode != 0 and named in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(tmp_path / 'checkpoints')


def test_nothing_outside_methods_branches_on_a_method_name():
  """config_schema and the evaluation stack ask the method; only methods/ names them."""
  names = [f"'{name}'" for name in methods.METHODS]
  for path in ('config_schema.py', 'frozen_tokenizer.py', 'evaluate/frozen.py', 'runs.py'):
    text = open(os.path.join(REPO, 'mvm_jax', path)).read()
    assert not [n for n in names if f'== {n}' in text or f'!= {n}' in text], path
