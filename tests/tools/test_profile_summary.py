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
