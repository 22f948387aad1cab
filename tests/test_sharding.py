"""mvm_jax.sharding: `config.mesh.rules` reproduce the former constant rules, overrides take
effect, invalid rules and unknown logical names fail naming `config.mesh.rules`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from mvm_jax import config as config_lib
from mvm_jax import methods, sharding
from mvm_jax.methods import vimpac as vimpac_method
from mvm_jax.models import vit
from mvm_jax.train import loop

# The rules before they became config (a Python constant; `rules_for` dropped mesh axes the
# mesh lacked), with the activations' former names ('batch', 'length', 'embed').
FORMER_RULES = (
  ('batch', ('data', 'fsdp')),
  ('embed', 'fsdp'),
  ('mlp', 'tensor'),
  ('heads', 'tensor'),
  ('length', None),
)
FORMER_BLOCK_INPUT = ('batch', 'length', 'embed')  # vit.Block's constraint
FORMER_FACTORIZED_INPUT = ('batch', None, None, None, 'embed')  # factorized.Layers' constraint


def _mesh(shape):
  return jax.make_mesh(shape, ('data', 'fsdp', 'tensor'), axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _former_sharding(boxed, mesh):
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, FORMER_RULES)


def _mae_variables(config):
  setup = methods.get(config).setup(config, 6)
  return jax.eval_shape(setup.init_variables, jax.random.PRNGKey(0))


def _vimpac_config():
  from configs import vimpac

  c = vimpac.get_config('tiny')
  c.vimpac.update(width=16, depth=1, num_heads=2)
  c.contrastive.projector.update(hidden=32, out=8)
  return c


def _vimpac_params(c):
  model = vimpac_method.vimpac_model(c)
  tokens = jnp.zeros((1,) + vimpac_method.token_shape(c), jnp.int32)
  return jax.eval_shape(lambda r: model.init({'params': r}, tokens)['params'], jax.random.PRNGKey(0))


def _specs(shardings):
  return [s.spec for s in jax.tree.leaves(shardings)]


def _used_axes(shardings):
  return {a for spec in _specs(shardings) for e in spec if e for a in ((e,) if isinstance(e, str) else e)}


@pytest.mark.parametrize('model', ['mae', 'vimpac'])
def test_default_rules_reproduce_the_former_shardings(config, model):
  assert jax.device_count() >= 8, 'conftest sets 8 fake CPU devices'
  mesh = _mesh((2, 2, 2))
  if model == 'mae':
    config_lib.set_objectives(config, {'pixel_mse': 1.0, 'vicreg': 1.0})  # + the projector (BN stats 'mlp')
    variables = _mae_variables(config)
  else:
    config = _vimpac_config()
    variables = {'params': _vimpac_params(config)}  # 'vocab' rows and logit biases
  new = sharding.logical_to_sharding(variables, mesh, config.mesh.rules)
  assert jax.tree.structure(new) == jax.tree.structure(_former_sharding(variables, mesh))
  assert _specs(new) == _specs(_former_sharding(variables, mesh))
  assert new == _former_sharding(variables, mesh)
  assert _used_axes(new) == {'fsdp', 'tensor'}  # not a trivial all-replicated comparison


def test_activation_names_map_as_the_former_shared_names():
  resolved = sharding.rules_for(_mesh((2, 2, 2)), sharding.DEFAULT_RULES)
  block = sharding.mesh_spec(('act_batch', 'act_length', 'act_embed'), resolved)
  assert block == nn.logical_to_mesh_axes(FORMER_BLOCK_INPUT, FORMER_RULES) == P(('data', 'fsdp'), None, None)
  layers = sharding.mesh_spec(('act_batch', None, None, None, 'act_embed'), resolved)
  assert layers == nn.logical_to_mesh_axes(FORMER_FACTORIZED_INPUT, FORMER_RULES)
  assert layers == P(('data', 'fsdp'), None, None, None, None)
  # Features are replicated even when the parameters' model dimension is not split over fsdp.
  assert sharding.mesh_spec(('embed',), resolved) == P('fsdp')


def _constraints(monkeypatch, module, rules, *args):
  """{shape: [PartitionSpec]} of the sharding constraints tracing `module.init(*args)` applies
  (the parameters' initialisers apply theirs too)."""
  seen, original = {}, jax.lax.with_sharding_constraint

  def record(x, target):
    seen.setdefault(tuple(x.shape), []).append(getattr(target, 'spec', target))
    return original(x, target)

  monkeypatch.setattr(jax.lax, 'with_sharding_constraint', record)
  with sharding.sharding_context(_mesh((2, 2, 2)), rules):
    jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
  return seen


def test_blocks_constrain_their_inputs_by_the_activation_rules(monkeypatch):
  default = dict(sharding.DEFAULT_RULES)
  block, x = vit.Block(num_heads=2), jnp.zeros((8, 4, 16))  # [B, N, D]
  seen = _constraints(monkeypatch, block, default, x)
  assert seen[(8, 4, 16)] == [P(('data', 'fsdp'), None, None)]
  assert seen[(16, 64)] == [P('fsdp', 'tensor')]  # the MLP's fc1 kernel
  # The activations follow their own names, not the parameters' ('embed' -> fsdp, 'mlp' -> tensor).
  rules = dict(default, act_batch=('data',), act_embed=('tensor',), embed=(), mlp=())
  seen = _constraints(monkeypatch, block, rules, x)
  assert seen[(8, 4, 16)] == [P('data', None, 'tensor')]
  assert seen[(16, 64)] == [P(None, None)]
  # VIMPAC's factorized layers: [B, T, h, w, D]; the token table [vocab, D] gathered whole.
  c = _vimpac_config()
  backbone = vimpac_method.backbone(c)
  tokens = jnp.zeros((2,) + vimpac_method.token_shape(c), jnp.int32)
  seen = _constraints(monkeypatch, backbone, default, tokens)
  assert seen[(2, *tokens.shape[1:], 16)] == [P(('data', 'fsdp'), None, None, None, None)]
  table = (backbone.special_tokens.num_embeddings, 16)
  assert seen[table] == [
    P(None, 'fsdp'),
    P(None, None),
  ]  # initialised as ('vocab', 'embed'), then gathered whole


def test_block_with_an_unknown_or_clashing_activation_rule_fails():
  mesh = _mesh((2, 2, 2))
  block, x = vit.Block(num_heads=2), jnp.zeros((8, 4, 16))
  rules = {k: v for k, v in sharding.DEFAULT_RULES if k != 'act_length'}
  with sharding.sharding_context(mesh, rules):
    with pytest.raises(sharding.RuleError, match=r"config\.mesh\.rules: no rule for .*'act_length'"):
      jax.eval_shape(block.init, jax.random.PRNGKey(0), x)
  rules = dict(sharding.DEFAULT_RULES, act_embed=('fsdp',))  # fsdp already splits the batch
  with sharding.sharding_context(mesh, rules):
    with pytest.raises(sharding.RuleError, match=r"'act_batch' and 'act_embed' .* mesh axis 'fsdp'"):
      jax.eval_shape(block.init, jax.random.PRNGKey(0), x)


def test_unknown_logical_name_fails_naming_the_rules():
  mesh = _mesh((2, 2, 2))
  config = _vimpac_config()
  params = _vimpac_params(config)
  rules = {k: v for k, v in config.mesh.rules.items() if k != 'vocab'}
  with pytest.raises(
    sharding.RuleError, match=r"config\.mesh\.rules: no rule for the logical axis name 'vocab'"
  ):
    sharding.logical_to_sharding(params, mesh, rules)
  boxed = {'w': nn.LogicallyPartitioned(jax.ShapeDtypeStruct((4, 4), jnp.float32), ('embed', 'hidden'))}
  with pytest.raises(sharding.RuleError, match=r"'hidden'"):
    sharding.logical_to_sharding(boxed, mesh, sharding.DEFAULT_RULES)


def test_overriding_a_rule_changes_the_parameter_sharding(config):
  config.mesh.shape = (2, 2, 2)
  devices = jax.devices()[:8]
  _, state = loop.build_experiment(config, samples_per_epoch=64, devices=devices)
  kernel = state.params['encoder']['block0']['mlp']['fc1']['kernel']  # [32, 128]: ('embed', 'mlp')
  assert kernel.sharding.spec == P('fsdp', 'tensor')
  assert kernel.addressable_shards[0].data.shape == (16, 64)

  config.mesh.rules.mlp = None  # as --config.mesh.rules.mlp=None gives: replicated
  _, state = loop.build_experiment(config, samples_per_epoch=64, devices=devices)
  kernel = state.params['encoder']['block0']['mlp']['fc1']['kernel']
  assert kernel.sharding.spec == P('fsdp', None)
  assert kernel.addressable_shards[0].data.shape == (16, 128)
  fc1 = [  # the optimizer moments follow their parameter
    x.sharding.spec
    for path, x in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    if jax.tree_util.keystr(path).endswith("['mlp']['fc1']['kernel']")
  ]
  assert len(fc1) >= 2 and set(fc1) == {P('fsdp', None)}


@pytest.mark.parametrize(
  'target, expected',
  [
    ((), None),
    (None, None),
    ((None,), None),
    ('tensor', 'tensor'),
    (('tensor',), 'tensor'),
    (('data', 'fsdp'), ('data', 'fsdp')),
  ],
)
def test_rule_targets(target, expected):
  assert sharding.resolve_rules({'mlp': target}, ('data', 'fsdp', 'tensor')) == (('mlp', expected),)


@pytest.mark.parametrize(
  'key, value, message',
  [
    (
      'mlp',
      ('model',),
      r"config\.mesh\.rules\.mlp: \('model',\) names mesh axes \['model'\] that config\.mesh\.axes",
    ),
    ('act_batch', ('data', 'fsdp', 'pipeline'), r"config\.mesh\.rules\.act_batch: .*\['pipeline'\]"),
    ('embed', ('fsdp', 'fsdp'), r'config\.mesh\.rules\.embed: .*twice'),
    ('heads', (3,), r'config\.mesh\.rules\.heads: \(3,\) is not a tuple of mesh axis names'),
  ],
)
def test_invalid_rules_fail_validation(config, key, value, message):
  config_lib.validate(config)
  config.mesh.rules[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_a_rule_needs_the_mesh_axis_of_config_mesh_axes(config):
  """The default rules name fsdp and tensor: a mesh without them needs rules without them."""
  config.mesh.update(axes=('data',), shape=(-1,))
  with pytest.raises(config_lib.ConfigError, match=r'config\.mesh\.rules\.'):
    config_lib.validate(config)
  config.mesh.rules.update(embed=(), mlp=(), heads=(), act_batch=('data',))
  config_lib.validate(config)


def test_mesh_shape_resolution():
  assert sharding.resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
  with pytest.raises(ValueError, match='mesh.shape'):
    sharding.resolve_mesh_shape((3, 1, 1), 8)
