"""tools.profile_summary: a traced step split by kind, phase and part."""

import pytest

from tests.conftest import micro_config


def test_profile_summary_splits_a_traced_step_by_kind_phase_and_part(tmp_path):
  """tools.bench --profile_dir traces the step; profile_summary reads the trace and its HLO:
  matmuls lead, forward and backward are told apart, encoder and decoder parts are named."""
  from mvm_jax.tools import bench, profile_summary

  bench.time_train_step(micro_config(), steps=1, warmup=0, profile_dir=str(tmp_path))
  text = profile_summary.summarize(str(tmp_path), steps=bench.PROFILED_STEPS, top=5)
  kinds = dict(line.split()[:2] for line in text.split('\n\nphase')[0].splitlines()[3:])
  assert 'matmul' in kinds and float(kinds['matmul']) > 0, text
  assert '\nforward ' in text and '\nbackward ' in text, text
  assert 'encoder attn' in text and 'decoder mlp' in text, text
  with pytest.raises(ValueError, match='no HLO of a module named jit_nothing'):
    profile_summary.summarize(str(tmp_path), module_name='jit_nothing')
  with pytest.raises(FileNotFoundError, match='tools.bench --profile_dir'):
    profile_summary.summarize(str(tmp_path / 'empty'))


def test_gpu_library_calls_are_told_apart_by_their_custom_call_targets():
  """On a GPU the matmuls are cuBLAS custom calls and fused attention a cuDNN one (targets as an
  H100 trace names them); they must not fall into 'elementwise'."""
  from mvm_jax.tools.profile_summary import op_kind

  assert op_kind({'custom-call'}, {'__cublas$lt$matmul'}) == 'matmul'
  assert op_kind({'custom-call'}, {'__cublas$gemm'}) == 'matmul'
  assert op_kind({'custom-call'}, {'__cudnn$fmhasoftmaxbackward'}) == 'attention'
  assert op_kind({'custom-call'}, {'__cudnn$convforward'}) == 'matmul'
  assert op_kind({'add', 'multiply'}, set()) == 'elementwise'
  assert op_kind({'exponential', 'reduce', 'divide'}, set()) == 'softmax'


def test_a_fusion_computing_a_matmul_is_named_after_its_dot():
  """XLA:CPU fuses q·kᵀ with the softmax's max and names the fusion after its root
  (`attn/reduce_max`); the summary names it after the dot it computes, and keeps an elementwise
  fusion's own name."""
  from tensorflow.compiler.xla.service import hlo_pb2

  from mvm_jax.tools.profile_summary import describe_ops

  module = hlo_pb2.HloModuleProto(name='jit_train_step')
  fused = module.computations.add(name='fused_computation', id=1)
  for i, (opcode, op_name) in enumerate(
    [('parameter', ''), ('dot', 'jvp(M)/decoder/block0/attn/bqhd,bkhd->bhqk/dot_general'), ('reduce', '')]
  ):
    fused.instructions.add(name=f'inner.{i}', opcode=opcode, id=i).metadata.op_name = op_name
  entry = module.computations.add(name='main', id=2)
  fusion = entry.instructions.add(name='ynn_fusion.1', opcode='fusion', id=10, called_computation_ids=[1])
  fusion.metadata.op_name = 'jvp(M)/decoder/block0/attn/reduce_max'
  add = entry.instructions.add(name='add_fusion', opcode='add', id=11)
  add.metadata.op_name = 'transpose(jvp(M))/decoder/block0/mlp/add_any'

  described = describe_ops(module)
  assert described['ynn_fusion.1'] == (
    'matmul',
    'forward',
    'jvp(M)/decoder/block0/attn/bqhd,bkhd->bhqk/dot_general',
  )
  assert described['add_fusion'] == (
    'elementwise',
    'backward',
    'transpose(jvp(M))/decoder/block0/mlp/add_any',
  )
