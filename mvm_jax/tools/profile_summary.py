"""Where a traced train step spends its time, by op kind, by phase, and its busiest ops.

  python -m mvm_jax.tools.bench --config configs/mae_st.py:bench_small --profile_dir DIR
  python -m mvm_jax.tools.profile_summary DIR [--module jit_train_step] [--top 15]

Reads the newest `*.xplane.pb` under DIR (what `jax.profiler.trace` writes) and the HLO of the
traced program stored in it. Each executed HLO op (a kernel on an accelerator, a thunk on CPU) is
put in one kind by what it computes: `matmul` (a dot or convolution, alone or fused), `attention`
(a cuDNN fused-attention call), `softmax`, `gelu`, `layernorm`, `gather`, `scatter`, `sort`
(random masking), `reduce`, `copy/transpose`, `elementwise`; and in one phase by the JAX name
stack XLA keeps: `forward` (inside jvp), `backward` (inside transpose), `other` (optimizer update,
masking, target, metrics).

Times are summed over the op events. On an accelerator that is device busy time and the report
also gives the device's idle share of the traced span (launch overhead when high); on CPU an op
split over threads counts each thread's time, so read shares, not milliseconds.
Needs the HLO and XSpace protos that ship with TensorFlow (a dependency here; not of `bench`).
"""

from __future__ import annotations

import collections
import glob
import os

from absl import app, flags

# Op kinds, checked in order against the opcodes (and custom-call targets) an op computes.
KIND_RULES = (
  ('attention', lambda ops, targets: any('fmha' in t or 'attention' in t for t in targets)),
  (
    'matmul',
    lambda ops, targets: (
      bool({'dot', 'convolution'} & ops)
      or any(name in t for t in targets for name in ('gemm', 'conv', 'cublas', 'matmul'))
    ),
  ),
  ('sort', lambda ops, targets: 'sort' in ops),
  ('scatter', lambda ops, targets: 'scatter' in ops),
  ('gather', lambda ops, targets: 'gather' in ops or 'dynamic-slice' in ops),
  ('softmax', lambda ops, targets: {'exponential', 'reduce'} <= ops),
  ('gelu', lambda ops, targets: 'erf' in ops),
  ('layernorm', lambda ops, targets: 'rsqrt' in ops),
  ('reduce', lambda ops, targets: 'reduce' in ops or 'reduce-window' in ops),
  (
    'copy/transpose',
    lambda ops, targets: ops
    <= {
      'copy',
      'transpose',
      'bitcast',
      'reshape',
      'parameter',
      'tuple',
      'get-tuple-element',
      'broadcast',
      'constant',
      'slice',
      'concatenate',
      'pad',
    },
  ),
)


# An accelerator kernel shorter than this is mostly launch cost (a few µs each on a GPU).
SHORT_KERNEL_PS = 5_000_000


def newest_xplane(directory: str) -> str:
  paths = glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True)
  if not paths:
    raise FileNotFoundError(f'no *.xplane.pb under {directory!r}: trace with `tools.bench --profile_dir`')
  return max(paths, key=os.path.getmtime)


def load_space(path: str):
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # TensorFlow's copy of the XSpace proto

  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  return space


def _stats(plane, holder) -> dict:
  out = {}
  for s in holder.stats:
    name = plane.stat_metadata[s.metadata_id].name
    kind = s.WhichOneof('value')
    value = getattr(s, kind) if kind else None
    if kind == 'ref_value':
      value = plane.stat_metadata[s.ref_value].name
    out[name] = value
  return out


def hlo_modules(space) -> dict:
  """{module name: HloModuleProto} of every program whose HLO the trace stored."""
  from tensorflow.compiler.xla.service import hlo_pb2

  modules = {}
  for plane in space.planes:
    if plane.name != '/host:metadata':
      continue
    for meta in plane.event_metadata.values():
      raw = _stats(plane, meta).get('Hlo Proto')
      if raw:
        proto = hlo_pb2.HloProto()
        proto.ParseFromString(raw)
        modules[proto.hlo_module.name] = proto.hlo_module
  return modules


def describe_ops(module) -> dict:
  """{instruction name: (kind, phase, JAX op name)} for every instruction of `module`; a fusion
  that computes a matmul carries its (first) dot's or convolution's name."""
  computations = {c.id: c for c in module.computations}

  def contents(instruction, seen=None) -> tuple[set, set, str]:
    """Opcodes, custom-call targets and the JAX name of the first dot or convolution that
    `instruction` computes ('' if none), looking into the computations it calls."""
    seen = set() if seen is None else seen
    ops, targets = {instruction.opcode}, set()
    matmul_name = instruction.metadata.op_name if instruction.opcode in ('dot', 'convolution') else ''
    if instruction.opcode == 'custom-call':
      targets.add(instruction.custom_call_target.lower())
    for cid in instruction.called_computation_ids:
      if cid in seen or cid not in computations:
        continue
      seen.add(cid)
      for inner in computations[cid].instructions:
        o, t, name = contents(inner, seen)
        ops |= o
        targets |= t
        matmul_name = matmul_name or name
    return ops, targets, matmul_name

  described = {}
  for computation in module.computations:
    for instruction in computation.instructions:
      ops, targets, matmul_name = contents(instruction)
      ops.discard('fusion')
      kind = op_kind(ops, targets)
      # A fusion is named after its root: XLA:CPU fuses q·kᵀ with the softmax's max and names the
      # whole `attn/reduce_max`. Name a matmul by its dot instead.
      op_name = matmul_name if kind == 'matmul' and matmul_name else instruction.metadata.op_name
      phase = 'backward' if 'transpose(' in op_name else 'forward' if 'jvp(' in op_name else 'other'
      described[instruction.name] = (kind, phase, op_name)
  return described


def op_kind(ops: set, targets: set) -> str:
  """The kind of an op from the opcodes it computes (fusions looked into) and its custom-call
  targets (lower case): the first of KIND_RULES that matches, else 'elementwise'."""
  return next((name for name, rule in KIND_RULES if rule(ops, targets)), 'elementwise')


# Model parts, read off the JAX name stack (flax module paths), first match wins.
PARTS = ('patch_embed', 'attn', 'mlp', 'norm', 'loss', 'pred')


def model_part(op_name: str) -> str:
  """'encoder attn', 'decoder mlp', ... from a JAX op name; 'optimizer and rest' outside the model."""
  tower = next((t for t in ('encoder', 'decoder', 'teacher') if f'/{t}/' in op_name), '')
  part = next((p for p in PARTS if f'/{p}' in op_name), '')
  return f'{tower} {part}'.strip() or 'optimizer and rest'


def op_events(space, module_name: str):
  """(op name, duration ps, start ps) of the ops `module_name` ran: on the accelerator when the trace
  has one, else on the CPU threads; and whether they came from an accelerator."""
  device_planes = [p for p in space.planes if p.name.startswith('/device:')]
  planes = device_planes or [p for p in space.planes if p.name == '/host:CPU']
  events = []
  for plane in planes:
    for line in plane.lines:
      if device_planes and line.name in ('XLA Modules', 'Steps', 'XLA TraceMe'):
        continue
      for event in line.events:
        stats = _stats(plane, event)
        op = stats.get('hlo_op')
        module = stats.get('hlo_module') or ''
        if op and module.startswith(module_name):
          events.append((op, event.duration_ps, line.timestamp_ns * 1000 + event.offset_ps))
  return events, bool(device_planes)


def summarize(directory: str, module_name: str = 'jit_train_step', steps: int = 3, top: int = 15) -> str:
  space = load_space(newest_xplane(directory))
  modules = {name: m for name, m in hlo_modules(space).items() if name.startswith(module_name)}
  if not modules:
    raise ValueError(f'{directory}: no HLO of a module named {module_name}* in the trace')
  module = max(modules.values(), key=lambda m: sum(len(c.instructions) for c in m.computations))
  described = describe_ops(module)
  events, on_device = op_events(space, module_name)
  if not events:
    raise ValueError(f'{directory}: the trace holds no op events of {module_name}')
  by_kind, by_phase, by_part, by_op = (collections.Counter() for _ in range(4))
  count = collections.Counter()  # op events per kind and per part
  for op, duration, _ in events:
    kind, phase, op_name = described.get(op, ('unknown', 'other', ''))
    part = model_part(op_name)
    by_kind[kind] += duration
    by_phase[phase] += duration
    by_part[part] += duration
    by_op[op] += duration
    count[kind] += 1
    count[part] += 1
  total = sum(by_kind.values())
  ms = lambda ps: ps / 1e9 / steps  # noqa: E731
  per_step = lambda n: n / steps  # noqa: E731

  lines = [
    f'{module.name}: {len(events)} op events over {steps} steps, '
    f'{"device" if on_device else "CPU thread"} time {ms(total):.2f} ms/step'
  ]
  if on_device:
    span = max(s + d for _, d, s in events) - min(s for _, _, s in events)
    lines.append(f'device idle in the traced span: {1 - total / span:.0%} (launch/host overhead when high)')
    short = sum(1 for _, d, _ in events if d < SHORT_KERNEL_PS)
    lines.append(
      f'kernels per step: {per_step(len(events)):.0f}, {per_step(short):.0f} of them shorter than '
      f'{SHORT_KERNEL_PS / 1e6:.0f} µs (each costs a launch: many short ones make a step launch-bound)'
    )
  lines.append(f'\n{"kind":<16} {"ms/step":>9} {"share":>6} {"ops/step":>9}')
  for kind, t in by_kind.most_common():
    lines.append(f'{kind:<16} {ms(t):9.2f} {t / total:6.1%} {per_step(count[kind]):9.0f}')
  lines.append(f'\n{"phase":<16} {"ms/step":>9} {"share":>6}')
  for phase, t in by_phase.most_common():
    lines.append(f'{phase:<16} {ms(t):9.2f} {t / total:6.1%}')
  lines.append(f'\n{"model part":<22} {"ms/step":>9} {"share":>6} {"ops/step":>9}')
  for part, t in by_part.most_common():
    lines.append(f'{part:<22} {ms(t):9.2f} {t / total:6.1%} {per_step(count[part]):9.0f}')
  if any(op.startswith('command_buffer') for op in by_op):
    lines.append(
      '\n(XLA grouped kernels into command buffers, which hide their ops: trace again with '
      'XLA_FLAGS=--xla_gpu_enable_command_buffer= to see each op.)'
    )
  lines.append(f'\ntop {top} ops: ms/step, share, kind, phase, JAX op name')
  for op, t in by_op.most_common(top):
    kind, phase, op_name = described.get(op, ('unknown', 'other', ''))
    lines.append(f'{ms(t):8.2f} {t / total:6.1%}  {kind:<14} {phase:<9} {op}  {op_name[-90:]}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: python -m mvm_jax.tools.profile_summary PROFILE_DIR')
  f = flags.FLAGS
  print(summarize(argv[1], f.module, f.steps, f.top))


if __name__ == '__main__':
  flags.DEFINE_string('module', 'jit_train_step', 'Name (prefix) of the traced XLA program to summarise.')
  flags.DEFINE_integer('steps', 3, 'Steps the trace holds (tools.bench traces 3).')
  flags.DEFINE_integer('top', 15, 'How many of the busiest ops to list.')
  app.run(main)
