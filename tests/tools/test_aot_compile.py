"""tools.aot_compile: the abstract step is the step main runs; the fsdp check; topologies; the CLI."""

import json
import re

import jax
import numpy as np
import pytest

from mvm_jax import sharding
from mvm_jax import data
from mvm_jax.tools import aot_compile
from mvm_jax.train import loop
from tests.conftest import MICRO_FLAGS, micro_config, run_module


def _without_debug_info(hlo: str) -> str:
  """HLO text without source locations (op metadata, file and stack-frame tables), which depend
  on the order Python files were first traced in."""
  hlo = re.sub(r',? metadata=\{[^}]*\}', '', hlo)
  return re.sub(r'\n(FileNames|FunctionNames|FileLocations|StackFrames)\n.*?\n(?=\n)', '', hlo, flags=re.S)


def _shapes(tree):
  return jax.tree.map(lambda x: (tuple(x.shape), np.dtype(x.dtype)), tree)


def test_abstract_step_compiles_to_the_step_main_runs(config):
  """Drift check: the same HLO and costs as `loop.compile_step(build_experiment(...), batch)` on a
  real loader batch, on a data × fsdp × tensor mesh; the abstract state and batch have the real
  ones' shapes and shardings."""
  config.mesh.shape = (2, 2, 2)
  devices = jax.devices()[:8]
  loader, _ = data.make_loader(config.data, split='train', global_batch_size=config.batch_size, seed=0)
  it = iter(loader)
  host_batch = next(it)
  it.close()
  exp, state = loop.build_experiment(config, samples_per_epoch=64, devices=devices)
  batch = loop.global_batch(host_batch, exp.batch_sharding, exp.batch_keys)
  main_step, main_flops = loop.compile_step(exp, state, batch)

  abstract, abstract_batch = aot_compile.abstract_step(config, devices, samples_per_epoch=64)
  assert _shapes(abstract.abstract_state) == _shapes(state)
  assert jax.tree.map(lambda x: x.sharding, abstract.abstract_state) == jax.tree.map(
    lambda x: x.sharding, state
  )
  assert _shapes(abstract_batch) == _shapes(batch)
  with sharding.sharding_context(abstract.mesh, config.mesh.rules):
    aot_step = abstract.train_step.lower(abstract.abstract_state, abstract_batch).compile()

  hlo = _without_debug_info(aot_step.as_text())
  assert 'StackFrames' not in hlo and 'all-gather' in hlo and len(hlo) > 100_000
  assert hlo == _without_debug_info(main_step.as_text())
  cost, main_cost = aot_step.cost_analysis(), main_step.cost_analysis()
  assert cost['flops'] == main_cost['flops'] > 0
  # main counts model FLOPs (the lowered step's work over the 8 devices, loop.step_flops): the
  # compiled per-device count also holds what every device repeats (the replicated optimizer).
  assert 0 < main_flops <= cost['flops']
  assert cost['bytes accessed'] == main_cost['bytes accessed']
  counts = aot_compile.collectives(aot_step.as_text())
  assert counts['all-reduce']['count'] > 0 and counts['all-gather']['count'] > 0  # fsdp and data axes


def test_sharding_check_names_replicated_parameters(config):
  config.mesh.shape = (2, 4, 1)
  exp, _ = aot_compile.abstract_step(config, jax.devices()[:8])
  aot_compile.check_sharding(exp, min_size=1024)  # every weight matrix splits its model dim over fsdp

  # A rule that leaves the model dimension ('embed') unsharded replicates the weight matrices.
  config.mesh.rules.embed = ()
  exp, _ = aot_compile.abstract_step(config, jax.devices()[:8])
  with pytest.raises(
    aot_compile.UnshardedParametersError, match=r'encoder/block0/mlp/fc1/kernel \(32, 128\)'
  ):
    aot_compile.check_sharding(exp, min_size=1024)
  found = [
    name
    for name, _, _ in aot_compile.unsharded_parameters(
      exp.abstract_state.params, exp.state_shardings.params, exp.mesh, 4096
    )
  ]
  assert (
    'encoder/block0/mlp/fc1/kernel' in found and 'encoder/block0/attn/q/kernel' not in found
  )  # 32×32 < 4096

  config.mesh.shape = (8, 1, 1)  # no fsdp axis to shard over: nothing to check
  exp, _ = aot_compile.abstract_step(config, jax.devices()[:8])
  aot_compile.check_sharding(exp, min_size=1)


def test_the_contrastive_projector_is_sharded_over_fsdp_too():
  """The combination preset's projector hidden kernels (hidden × hidden) split over fsdp."""
  from configs import mae_hpm_infonce

  c = mae_hpm_infonce.get_config('tiny')
  micro = micro_config()
  c.data.update(num_frames=4, crop_size=32, num_workers=0)
  c.model.update(patch_size=8, pred_t_dim=2)
  c.model.encoder.update(micro.model.encoder)
  c.model.decoder.update(micro.model.decoder)
  c.contrastive.projector.update(hidden=64, out=16)
  c.mesh.shape = (2, 4, 1)
  exp, _ = aot_compile.abstract_step(c, jax.devices()[:8])
  assert 'projector' in str(jax.tree_util.tree_structure(exp.abstract_state.params))
  aot_compile.check_sharding(exp, min_size=1024)  # 64×64 = 4096: fc1 included


def test_topology_names():
  v5p = aot_compile.parse_topology('v5p-128')
  assert (v5p.num_devices, v5p.topology_name, v5p.chip_config_name, v5p.wrap) == (
    64,
    'v5:4x4x4',
    'megacore',
    (True, True, True),
  )
  assert aot_compile.parse_topology('v5p-32').topology_name == 'v5:2x2x4'
  assert aot_compile.parse_topology('v5p-256').topology_name == 'v5:4x4x8'
  v5e = aot_compile.parse_topology('v5e-256')
  assert (v5e.num_devices, v5e.topology_name, v5e.wrap, v5e.hbm_bytes) == (
    256,
    'v5e:16x16',
    (True, True, False),
    16 * 2**30,
  )
  cpu = aot_compile.parse_topology('cpu-8')
  assert (cpu.platform, cpu.num_devices, cpu.hbm_bytes) == ('cpu', 8, None)
  for bad in ('v5p-6', 'tpu-8', 'v5p'):
    with pytest.raises(ValueError):
      aot_compile.parse_topology(bad)


def test_collectives_from_hlo_text():
  hlo = """HloModule m, is_scheduled=true

%all-reduce-scatter.3 (input_0: f32[64,32]) -> f32[32,32] {
  %input_0 = f32[64,32]{1,0} parameter(0)
  %all-reduce.7 = f32[64,32]{1,0} all-reduce(%input_0), channel_id=1, to_apply=%add
  ROOT %dynamic-slice.1 = f32[32,32]{1,0} dynamic-slice(%all-reduce.7, %c, %c), dynamic_slice_sizes={32,32}
}

ENTRY %main (p: bf16[8,16]) -> bf16[16,16] {
  %p = bf16[8,16]{1,0:T(8,128)(2,1)} parameter(0)
  %all-gather-start = (bf16[8,16]{1,0}, bf16[16,16]{1,0}) all-gather-start(%p), dimensions={0}
  %all-gather-done = bf16[16,16]{1,0} all-gather-done(%all-gather-start)
  %all-reduce = (f32[4]{0}, f32[8]{0}) all-reduce(%a, %b), to_apply=%add
  %cp = (f32[2]{0}, f32[2]{0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%x), source_target_pairs={{0,1}}
  %cpd = f32[2]{0} collective-permute-done(%cp)
  ROOT %a2a = bf16[16,16]{1,0} all-to-all(%all-gather-done), dimensions={0}
}
"""
  c = aot_compile.collectives(hlo)
  assert c['reduce-scatter'] == {'count': 1, 'bytes': 32 * 32 * 4}
  assert c['all-gather'] == {'count': 1, 'bytes': 16 * 16 * 2}
  assert c['all-reduce'] == {'count': 1, 'bytes': 12 * 4}
  assert c['collective-permute'] == {'count': 1, 'bytes': 2 * 4}
  assert c['all-to-all'] == {'count': 1, 'bytes': 16 * 16 * 2}


@pytest.mark.skipif(not aot_compile.libtpu_available(), reason='libtpu not installed (the tpu extra)')
def test_compiles_for_a_tpu_slice_without_a_tpu(config):
  """With libtpu: the micro step compiled by the TPU compiler for a v5p-8 slice (4 chips)."""
  config.mesh.shape = (2, 2, 1)
  topology = aot_compile.parse_topology('v5p-8')
  result = aot_compile.aot_compile(config, topology, aot_compile.topology_devices(topology))
  assert result['device_kind'].startswith('TPU') and result['fits'] is True
  assert 0 < result['hbm_fraction'] < 0.01 and result['flops_per_device'] > 0


@pytest.mark.slow
def test_cli_table_and_json_on_8_fake_cpu_devices():
  """The tool itself asks JAX for 8 CPU devices (run_module passes XLA_FLAGS='')."""
  micro = [f for f in MICRO_FLAGS if not f.startswith('--config.mesh.shape')]  # a repeated tuple flag appends
  args = (
    '--config',
    'configs/mae_st.py:tiny',
    *micro,
    '--topology',
    'cpu-8',
    '--config.mesh.shape=(2,2,2)',
  )
  table = run_module('mvm_jax.tools.aot_compile', *args)
  assert table.returncode == 0, table.stderr[-2000:]
  assert 'cpu-8: 8× cpu, mesh data 2 × fsdp 2 × tensor 2' in table.stdout
  rows = (
    'temporaries',
    'total',
    'HBM n/a',
    'model FLOPs per step',
    'compiled FLOPs per device',
    'all-gather',
  )
  for row in (*rows, 'collective-permute'):
    assert row in table.stdout, table.stdout

  out = run_module('mvm_jax.tools.aot_compile', *args, '--json', '--per_device_batch=3')
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads(out.stdout)
  assert result['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 2} and result['num_devices'] == 8
  assert result['batch_size'] == 12 and result['per_device_batch'] == 3  # 3 × (data 2 × fsdp 2)
  assert result['flops_per_step'] == pytest.approx(8 * result['flops_per_device'])
  # Model FLOPs: the whole batch's work once; the compiled count adds what devices repeat.
  assert 0.5 * result['flops_per_step'] < result['model_flops_per_step'] <= result['flops_per_step']
  assert result['memory']['total'] > 0 and result['hbm_bytes'] is None
  assert result['collectives']['all-reduce']['count'] > 0
