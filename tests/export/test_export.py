"""PyTorch export/import: exact round trips, strict loads into reference-layout
PyTorch modules with equal outputs, complete mismatch reports, both file types."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from mvm_jax import masking, methods
from mvm_jax.export import __main__ as export_cli
from mvm_jax.export import checkpoints, convert, importer, torch_io
from mvm_jax.methods import mae as mae_method
from mvm_jax.models import vit
from tests.conftest import MICRO_FLAGS, micro_config, run_module

torch = pytest.importorskip('torch')
pytest.importorskip('safetensors')
tnn = torch.nn


# --- Reference-layout PyTorch modules (mae_st and timm names; written for this test) -------------------


class TorchBlock(tnn.Module):
  """Pre-LN block: LN(eps 1e-6) → attention (q/k/v or fused qkv) → proj; LN → fc1 → exact GELU → fc2."""

  def __init__(self, dim, heads, fused):
    super().__init__()
    self.heads, self.fused = heads, fused
    self.norm1, self.norm2 = tnn.LayerNorm(dim, eps=1e-6), tnn.LayerNorm(dim, eps=1e-6)
    self.attn, self.mlp = tnn.Module(), tnn.Module()
    if fused:
      self.attn.qkv = tnn.Linear(dim, 3 * dim)
    else:
      self.attn.q, self.attn.k, self.attn.v = (tnn.Linear(dim, dim) for _ in range(3))
    self.attn.proj = tnn.Linear(dim, dim)
    self.mlp.fc1, self.mlp.fc2 = tnn.Linear(dim, 4 * dim), tnn.Linear(4 * dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    h = self.norm1(x)
    q, k, v = (
      self.attn.qkv(h).chunk(3, dim=-1) if self.fused else (self.attn.q(h), self.attn.k(h), self.attn.v(h))
    )
    split = lambda y: y.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)
    weights = torch.softmax(split(q) @ split(k).transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
    x = x + self.attn.proj((weights @ split(v)).transpose(1, 2).reshape(b, n, d))
    return x + self.mlp.fc2(tnn.functional.gelu(self.mlp.fc1(self.norm2(x))))


def _param(*shape):
  return tnn.Parameter(torch.zeros(*shape))


def _gather(x, ids_keep):
  return torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))


class TorchMaeSt(tnn.Module):
  """mae_st layout: MaskedAutoencoderViT (decoder given) or VisionTransformer (num_classes given).

  Conv3d patch embedding, separable position embeddings, [CLS]; encoder path
  only (the decoder's parameters exist so that strict loading checks them).
  """

  def __init__(self, dim, depth, heads, patch, grid, decoder=None, num_classes=0):
    super().__init__()
    self.grid = grid
    self.patch_embed = tnn.Module()
    self.patch_embed.proj = tnn.Conv3d(3, dim, patch, stride=patch)
    self.cls_token, self.pos_embed_class = _param(1, 1, dim), _param(1, 1, dim)
    self.pos_embed_spatial, self.pos_embed_temporal = (
      _param(1, grid[1] * grid[2], dim),
      _param(1, grid[0], dim),
    )
    self.blocks = tnn.ModuleList(TorchBlock(dim, heads, False) for _ in range(depth))
    self.norm = tnn.LayerNorm(dim, eps=1e-6)
    if decoder:
      width, dec_depth, dec_heads, out = decoder
      self.decoder_embed = tnn.Linear(dim, width)
      self.mask_token, self.decoder_cls_token = _param(1, 1, width), _param(1, 1, width)
      self.decoder_pos_embed_spatial = _param(1, grid[1] * grid[2], width)
      self.decoder_pos_embed_temporal = _param(1, grid[0], width)
      self.decoder_pos_embed_class = _param(1, 1, width)
      self.decoder_blocks = tnn.ModuleList(TorchBlock(width, dec_heads, False) for _ in range(dec_depth))
      self.decoder_norm = tnn.LayerNorm(width, eps=1e-6)
      self.decoder_pred = tnn.Linear(width, out)
    if num_classes:
      self.head = tnn.Linear(dim, num_classes)

  def _encode(self, video, ids_keep=None):
    """video [B, C, T, H, W] → blocks' output [B, 1 + n, D] (before the final norm)."""
    x = self.patch_embed.proj(video).flatten(2).transpose(1, 2)  # (t, h, w) token order
    gt, gh, gw = self.grid
    x = (
      x + self.pos_embed_spatial.repeat(1, gt, 1) + self.pos_embed_temporal.repeat_interleave(gh * gw, dim=1)
    )
    if ids_keep is not None:
      x = _gather(x, ids_keep)
    x = torch.cat([(self.cls_token + self.pos_embed_class).expand(x.shape[0], -1, -1), x], dim=1)
    for block in self.blocks:
      x = block(x)
    return x

  def forward_encoder(self, video, ids_keep):
    return self.norm(self._encode(video, ids_keep))

  def forward(self, video):
    """VisionTransformer: mean of patch tokens → norm → head."""
    return self.head(self.norm(self._encode(video)[:, 1:].mean(dim=1)))


class TorchTimmViT(tnn.Module):
  """timm VisionTransformer layout: Conv2d patch embedding, pos_embed [1, 1+N, D], fused qkv."""

  def __init__(self, dim, depth, heads, patch, num_patches):
    super().__init__()
    self.patch_embed = tnn.Module()
    self.patch_embed.proj = tnn.Conv2d(3, dim, patch, stride=patch)
    self.cls_token, self.pos_embed = _param(1, 1, dim), _param(1, 1 + num_patches, dim)
    self.blocks = tnn.ModuleList(TorchBlock(dim, heads, True) for _ in range(depth))
    self.norm = tnn.LayerNorm(dim, eps=1e-6)

  def forward_features(self, image, ids_keep):
    x = self.patch_embed.proj(image).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
    x = _gather(x, ids_keep)
    x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
    for block in self.blocks:
      x = block(x)
    return self.norm(x)


# --- Fixtures ---------------------------------------------------------------------------------------


def _random_params(module, *args, seed=0):
  """Params of `module` with random values in every leaf (shapes from eval_shape: nothing compiled)."""
  shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.PRNGKey(0), *args))['params'])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def _random_mask(grid, batch, ratio, seed):
  """A `masking.Mask` built in numpy with the MAE convention."""
  n = int(np.prod(grid))
  n_keep = masking.num_visible('random', grid, ratio)
  ids_shuffle = np.argsort(np.random.default_rng(seed).random((batch, n)), axis=1).astype(np.int32)
  ids_restore = np.argsort(ids_shuffle, axis=1).astype(np.int32)
  mask = (ids_restore >= n_keep).astype(np.float32)
  return masking.Mask(ids_keep=ids_shuffle[:, :n_keep], ids_restore=ids_restore, mask=mask)


def _mae_setup(config, seed=0):
  model = mae_method.autoencoder(config)
  shape = (2,) + methods.video_shape(config) + (3,)
  video = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  mask = _random_mask(model.encoder.grid, 2, 0.75, seed)
  return model, _random_params(model, video, mask, seed=seed), video, mask


def _our_encoder(model, params, video, mask):
  """Our sparse encoder's output [B, 1 + n, D] ([CLS] first)."""
  return jax.jit(lambda p: model.apply({'params': p}, video, mask, method=model.encode))(params)


@pytest.fixture(scope='module')
def video_mae():
  config = micro_config()
  return (config,) + _mae_setup(config)


@pytest.fixture(scope='module')
def image_mae():
  """T = 1, t_patch = 1: what the timm and image-MAE layouts can hold."""
  config = micro_config()
  config.data.num_frames = 1
  config.model.update(t_patch_size=1, pred_t_dim=1, decoder_cls='encoder')  # image MAE's decoder [CLS]
  return (config,) + _mae_setup(config, seed=1)


def _to_torch_input(video):
  return torch.from_numpy(np.ascontiguousarray(video.transpose(0, 4, 1, 2, 3)))  # [B, C, T, H, W]


def _assert_trees_equal(a, b):
  flat_a, flat_b = convert.flat_names(a), convert.flat_names(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    assert flat_a[key].dtype == flat_b[key].dtype, key
    np.testing.assert_array_equal(flat_a[key], flat_b[key], err_msg=key)


# --- Tests ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('suffix,wrap', [('.safetensors', None), ('.pth', None), ('.pth', 'model')])
def test_mae_roundtrip_through_files_is_exact(video_mae, tmp_path, suffix, wrap):
  config, _, params, _, _ = video_mae
  state_dict, _ = convert.to_state_dict(params, 'mae_st')
  path = str(tmp_path / f'mae{suffix}')
  torch_io.save_state_dict(state_dict, path, wrap)
  loaded = torch_io.load_state_dict(path)
  assert set(loaded) == set(state_dict)
  back, info = importer.import_state_dict(loaded, config)
  assert (info['format'], info['model']) == ('mae_st', 'mae')
  _assert_trees_equal(back, params)


def test_classifier_roundtrip_is_exact_and_matches_vision_transformer(video_mae):
  config, _, _, video, _ = video_mae
  classifier = mae_method.video_classifier(config, 5)
  params = _random_params(classifier, video, seed=3)
  state_dict, _ = convert.to_state_dict(params, 'mae_st_vit')
  back, info = importer.import_state_dict(state_dict, config)
  assert (info['format'], info['model'], info['num_classes']) == ('mae_st_vit', 'classifier', 5)
  _assert_trees_equal(back, params)
  if 'fc_norm' in params:
    pytest.skip("this VideoClassifier has an fc_norm, which mae_st's VisionTransformer lacks")
  m = config.model
  grid = importer.token_grid(config)
  ref = TorchMaeSt(m.encoder.width, m.encoder.depth, m.encoder.num_heads, (2, 8, 8), grid, num_classes=5)
  ref.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  with torch.no_grad():
    logits = ref(_to_torch_input(video)).numpy()
  ours = jax.jit(lambda p: classifier.apply({'params': p}, video))(params)
  np.testing.assert_allclose(ours, logits, atol=1e-5, rtol=1e-5)


def test_mae_st_export_loads_strictly_and_reproduces_the_encoder(video_mae, tmp_path):
  config, model, params, video, mask = video_mae
  path = str(tmp_path / 'mae_st.pth')
  torch_io.save_state_dict(convert.to_state_dict(params, 'mae_st')[0], path)
  m = config.model
  out_dim = params['decoder']['pred']['kernel'].shape[1]
  ref = TorchMaeSt(
    m.encoder.width,
    m.encoder.depth,
    m.encoder.num_heads,
    (m.t_patch_size, m.patch_size, m.patch_size),
    model.encoder.grid,
    decoder=(m.decoder.width, m.decoder.depth, m.decoder.num_heads, out_dim),
  )
  ref.load_state_dict(torch.load(path, weights_only=True), strict=True)
  ours = _our_encoder(model, params, video, mask)
  with torch.no_grad():
    theirs = ref.forward_encoder(_to_torch_input(video), torch.from_numpy(mask.ids_keep).long())
  np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5, rtol=1e-5)


def test_timm_export_loads_strictly_and_reproduces_the_image_encoder(image_mae, tmp_path):
  config, model, params, video, mask = image_mae
  path = str(tmp_path / 'vit.safetensors')
  torch_io.save_state_dict(convert.to_state_dict(params, 'timm')[0], path)
  m, grid = config.model, model.encoder.grid
  ref = TorchTimmViT(m.encoder.width, m.encoder.depth, m.encoder.num_heads, m.patch_size, grid[1] * grid[2])
  from safetensors.torch import load_file

  ref.load_state_dict(load_file(path), strict=True)
  ours = _our_encoder(model, params, video, mask)
  with torch.no_grad():
    image = _to_torch_input(video)[:, :, 0]  # [B, C, H, W]
    theirs = ref.forward_features(image, torch.from_numpy(mask.ids_keep).long())
  np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5, rtol=1e-5)


def test_image_mae_checkpoint_imports_with_the_same_outputs(image_mae):
  config, model, params, video, mask = image_mae
  state_dict, _ = convert.to_state_dict(params, 'mae')  # facebookresearch/mae names
  assert 'blocks.0.attn.qkv.weight' in state_dict and 'decoder_pos_embed' in state_dict
  back, info = importer.import_state_dict(state_dict, config)
  assert (info['format'], info['model']) == ('mae', 'mae')
  # The image layout folds the temporal embedding into the spatial one; outputs are unchanged.
  apply = jax.jit(lambda p: model.apply({'params': p}, video, mask)['pred'])
  np.testing.assert_allclose(apply(back), apply(params), atol=1e-6)


def test_fixed_sincos_position_embeddings_are_written_and_skipped_on_import():
  config = micro_config()
  config.model.pos_embed = 'sincos'
  model = mae_method.autoencoder(config)
  mask = _random_mask(model.encoder.grid, 1, 0.75, 0)
  params = _random_params(model, np.zeros((1, 4, 32, 32, 3), np.float32), mask)
  assert 'pos' not in params['encoder']
  grid = importer.token_grid(config)
  with pytest.raises(ValueError, match='token grid'):
    convert.to_state_dict(params, 'mae_st')
  state_dict, notes = convert.to_state_dict(params, 'mae_st', grid)
  np.testing.assert_array_equal(state_dict['pos_embed_spatial'][0], vit.sincos_spatial(4, 4, 32))
  np.testing.assert_array_equal(state_dict['decoder_pos_embed_temporal'][0], vit.sincos_1d(np.arange(2), 32))
  assert any(n.startswith('pos_embed_class: fixed sin-cos') for n in notes)
  back, _ = importer.import_state_dict(state_dict, config)
  _assert_trees_equal(back, params)


def test_video_params_refuse_the_image_layouts(video_mae):
  params = video_mae[2]
  with pytest.raises(ValueError, match='t_patch_size=1'):
    convert.to_state_dict(params, 'timm')
  with pytest.raises(ValueError, match='no decoder'):
    convert.to_state_dict({'encoder': params['encoder']}, 'mae_st')


def test_broken_state_dict_reports_every_problem(video_mae, tmp_path):
  config, _, params, _, _ = video_mae
  from mvm_jax import import_torch

  state_dict, _ = convert.to_state_dict(params, 'mae_st')
  del state_dict['blocks.1.attn.k.weight']
  state_dict['blocks.0.attn.extra.weight'] = np.zeros((2, 2), np.float32)
  state_dict['decoder_pred.weight'] = np.zeros((7, 32), np.float32)
  path = str(tmp_path / 'broken.pth')
  torch_io.save_state_dict(state_dict, path)
  with pytest.raises(convert.StateDictMismatch) as error:
    import_torch.import_checkpoint(path, config, str(tmp_path / 'out'))
  message = str(error.value)
  assert 'missing keys (1): blocks.1.attn.k.weight' in message
  assert 'unexpected keys (1): blocks.0.attn.extra.weight' in message
  assert 'decoder_pred.weight: expected (192, 32), got (7, 32)' in message
  assert not (tmp_path / 'out').exists()


def test_missing_optional_dependency_names_the_install_command():
  with pytest.raises(ImportError, match=r'mvm_jax\[torch\]'):
    torch_io.require('no_such_torch_module')


def test_export_from_workdir_then_import_cli(video_mae, tmp_path, capsys):
  config, _, params, _, _ = video_mae
  from mvm_jax.train import checkpointing

  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  ckpt = checkpointing.Checkpointer(str(workdir / 'checkpoints'), keep=1, every_steps=1, asynchronous=False)
  ckpt.save(4, {'step': np.int32(4), 'params': params}, {}, force=True)
  ckpt.close()

  out = tmp_path / 'mae_st.safetensors'
  state_dict = export_cli.export(str(workdir), 'mae_st', str(out))  # what `python -m mvm_jax.export` runs
  printed = capsys.readouterr().out
  assert 'patch_embed.proj.weight  ' in printed and '(32, 3, 2, 8, 8)' in printed
  assert 'total: 67 tensors, 59,264 parameters' in printed
  assert 'at step 4' in printed

  imported = tmp_path / 'imported'
  args = [
    '--checkpoint',
    str(out),
    '--config',
    'configs/mae_st.py:tiny',
    *MICRO_FLAGS,
    '--out',
    str(imported),
  ]
  result = run_module('mvm_jax.import_torch', *args, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  _assert_trees_equal(checkpoints.load_imported_params(str(imported)), params)
  assert json.loads((imported / 'import.json').read_text())['model'] == 'mae'

  # The step directory and the imported directory export the same tensors again.
  for source in (workdir / 'checkpoints' / '4', imported):
    again = export_cli.export(str(source), 'mae_st', str(tmp_path / 'again.pth'))
    assert list(again) == list(state_dict)
    for key, value in again.items():
      np.testing.assert_array_equal(value, state_dict[key])


def test_mae_st_vit_of_a_pretraining_run_notes_the_missing_head_and_num_classes_adds_one(
  video_mae, tmp_path, capsys
):
  config, model, params, _, _ = video_mae
  from mvm_jax.train import checkpointing

  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  ckpt = checkpointing.Checkpointer(str(workdir / 'checkpoints'), keep=1, every_steps=1, asynchronous=False)
  ckpt.save(2, {'step': np.int32(2), 'params': params}, {}, force=True)
  ckpt.close()
  m = config.model
  patch = (m.t_patch_size, m.patch_size, m.patch_size)

  bare = export_cli.export(str(workdir), 'mae_st_vit', str(tmp_path / 'vit.pth'))
  assert 'note: no classifier head' in capsys.readouterr().out and 'head.weight' not in bare
  grid = model.encoder.grid
  ref = TorchMaeSt(m.encoder.width, m.encoder.depth, m.encoder.num_heads, patch, grid, num_classes=5)
  with pytest.raises(RuntimeError, match='head.weight'):
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in bare.items()}, strict=True)

  out = tmp_path / 'vit5.safetensors'
  state_dict = export_cli.export(str(workdir), 'mae_st_vit', str(out), num_classes=5)
  assert 'zero-initialised [5, 32] classifier' in capsys.readouterr().out
  from safetensors.torch import load_file

  ref.load_state_dict(load_file(str(out)), strict=True)
  assert not ref.head.weight.any() and not ref.head.bias.any() and tuple(ref.head.weight.shape) == (5, 32)
  for key, value in bare.items():
    np.testing.assert_array_equal(state_dict[key], value)
  with pytest.raises(ValueError, match='format mae_st_vit, not'):
    export_cli.export(str(workdir), 'mae_st', str(tmp_path / 'x.pth'), num_classes=5)


def test_mae_target_is_the_methods_own_autoencoder(monkeypatch):
  """The 'mae' target is built by the config's MAE method (mae_motion: its MotionAutoencoder, with
  MAE-ST's parameters); a method that is not a pixel MAE, or an unknown target, is refused."""
  from configs import vimpac

  mae_config = micro_config()
  motion_config = micro_config()
  with motion_config.unlocked():
    motion_config.model.name = 'mae_motion'
    motion_config.motion = methods.base_config('mae_motion').motion
  method, built = methods.get(motion_config), []
  build = method.model
  monkeypatch.setattr(method, 'model', lambda config: built.append(build(config)) or built[-1])
  shapes = lambda config: jax.tree.map(np.shape, importer.target_params(config, 'mae'))
  assert shapes(motion_config) == shapes(mae_config)
  assert [type(m).__name__ for m in built] == ['MotionAutoencoder']
  with pytest.raises(ValueError, match=r"^config\.model\.name='vimpac': the 'mae' target"):
    importer.target_params(vimpac.get_config('tiny'), 'mae')
  with pytest.raises(ValueError, match="unknown target model 'vit'"):
    importer.target_params(mae_config, 'vit')
