"""One process of the two-process evaluators test in tests/evaluate/test_evaluators.py.

  python tests/helpers/multihost_evaluators_child.py PROCESS_ID PORT WORKDIR

Joins a 2-process JAX cluster on 127.0.0.1:PORT (CPU, one device per process),
pre-trains the micro test config for 2 (of 4) steps into the shared WORKDIR with
the tiny preset's evaluators at step 2 (extraction split over both processes), and
prints one line ``RESULT {json}``: {'process_index': int, 'scalars': {tag: float}},
the evaluator scalars this process computed.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository

import jax  # noqa: E402


def main():
  process_id, port, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2, process_id=process_id)
  from mvm_jax import presets
  from mvm_jax.evaluate import evaluators
  from mvm_jax.train import loop
  from tests.conftest import micro_config

  c = micro_config()
  c.total_steps = 4  # stopped at 2: the evaluation of a step mid-run
  c.mesh.shape = (-1, 1, 1)
  c.evaluators = presets.tiny_evaluators(every_steps=2)
  scalars = {}
  call = evaluators.EvaluatorSuite.__call__

  def recording(self, step, params):
    out = call(self, step, params)
    scalars.update(out or {})
    return out

  evaluators.EvaluatorSuite.__call__ = recording
  loop.train_and_evaluate(c, workdir, stop_after_steps=2)
  scalars.pop('eval/wall_time_s', None)
  print('RESULT ' + json.dumps({'process_index': jax.process_index(), 'scalars': scalars}), flush=True)
  jax.distributed.shutdown()


if __name__ == '__main__':
  main()
