#!/usr/bin/env bash
# One short accelerator check (<= 8 minutes): tools.bench on configs/mae_st.py:bench_small and vit_b
# (bfloat16, cuDNN fused attention on GPUs, each remat policy), then one table with MFU against the
# device's data-sheet peak (flops.KNOWN_PEAK_TFLOPS; --config.peak_tflops_per_device overrides) and
# the model FLOPs of the lowered step (cuDNN attention counted as einsums: loop.step_flops).
# On CPU (no accelerator) it runs bench_small only, with few steps, and says so.
#
#   bash launch/gpu_check.sh [OUT_DIR]      # JSON per run and the table (table.txt) in OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python}
# A persistent compilation cache: the state's init compiles (as long as the step's on CPU; likely most
# of the ~40 s an H100 bench process spent besides its step compiles) are the same program for every
# run of a preset, so only the first pays. The steps all differ, so their compile times stay cold
# (unless OUT_DIR is reused).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT/jax_cache}
BACKEND=$($PY -c 'import jax; print(jax.default_backend())')
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-460}))  # leave room for the table within 8 minutes

run() {  # name, timeout seconds, bench args...
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - SECONDS))
  if ((left < 30)); then
    echo "skipped $name: out of time" >&2
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "== $name ($BACKEND, <= ${limit}s)" >&2
  if ! timeout "$limit" $PY -m mvm_jax.tools.bench --json "$@" >"$OUT/$name.json" 2>"$OUT/$name.log"; then
    echo "   $name failed or timed out; see $OUT/$name.log" >&2
    tail -3 "$OUT/$name.log" >&2 || true
    rm -f "$OUT/$name.json"
  fi
}

if [[ $BACKEND == cpu ]]; then
  echo "No accelerator: CPU only, bench_small with few steps (f32; cuDNN attention and vit_b need a GPU)." >&2
  run bench_small_cpu 400 --config configs/mae_st.py:bench_small --steps=3 --warmup=1 \
    --dense=false --remat_variants=none,full,dots_saveable
else
  ATTN=xla
  [[ $BACKEND == gpu ]] && ATTN=cudnn
  COMMON=(--config.model.dtype=bfloat16 --config.model.attention=$ATTN --peak_dtype=bfloat16)
  # batch 128 fills one GPU; batch 8 is the CPU comparison's shape (launch-bound on a big GPU).
  # On an H100 a bench process takes ~40 s besides its compiles (~30 s each): the limits fit that.
  run bench_small_b128 100 --config configs/mae_st.py:bench_small "${COMMON[@]}" --config.batch_size=128 \
    --steps=10 --warmup=2 --dense=false --phases=false
  run vit_b 200 --config configs/mae_st.py:vit_b "${COMMON[@]}" --config.batch_size=32 \
    '--config.mesh.shape=(1,1,1)' --steps=5 --warmup=2 --dense=false --phases=false \
    --remat_variants=none,full,dots_saveable
  run bench_small 70 --config configs/mae_st.py:bench_small "${COMMON[@]}" --steps=10 --warmup=2 \
    --dense=false --phases=false
  run bench_small_b128_einsum_attention 80 --config configs/mae_st.py:bench_small --config.model.dtype=bfloat16 \
    --config.model.attention=einsum --peak_dtype=bfloat16 --config.batch_size=128 --steps=10 --warmup=2 \
    --dense=false --phases=false
fi

$PY - "$OUT" "$BACKEND" <<'PYEOF' | tee "$OUT/table.txt"
import glob, json, os, sys

out, backend = sys.argv[1], sys.argv[2]
rows = []
for path in sorted(glob.glob(os.path.join(out, '*.json'))):
  r = json.load(open(path))
  name = os.path.basename(path)[:-5]
  variants = r.get('remat') or {'none': {k: r[k] for k in ('step_ms', 'clips_per_s', 'mfu', 'compile_s', 'peak_memory_mb')}
                                | {'mfu_device_peak': r['mfu_device_peak'], 'tflops_per_s': r['gflops_per_s'] / 1e3}}
  for remat, v in variants.items():
    rows.append((name, remat, v, r))
if not rows:
  sys.exit('no bench run finished')
device = rows[0][3]['device']
peak = rows[0][3]['device_peak_tflops']
print(f'{device} ({backend}); MFU against ' + (f'the device peak {peak:.0f} TFLOP/s' if peak else
      f'the {rows[0][3]["matmul_peak_dtype"]} matmul measured in each run (no data-sheet peak known: CPU)'))
print(f'{"run":<26} {"remat":<14} {"step ms":>8} {"clips/s":>8} {"TFLOP/s":>8} {"MFU":>6} {"compile s":>9} {"peak MB":>9}')
for name, remat, v, r in rows:
  mfu = v['mfu_device_peak'] if v.get('mfu_device_peak') is not None else v['mfu']
  mem = v['peak_memory_mb']
  print(f'{name:<26} {remat:<14} {v["step_ms"]:8.1f} {v["clips_per_s"]:8.2f} {v["tflops_per_s"]:8.3f} {mfu:6.3f} '
        f'{v["compile_s"]:9.1f} {"n/a" if mem is None else f"{mem:.0f}":>9}')
for name, remat, v, r in rows:
  if remat == 'none' and 'phases_ms' in r:
    p = r['phases_ms']
    print(f'{name}: forward {p["forward"]:.1f} ms, backward {p["backward"]:.1f} ms, optimizer {p["optimizer"]:.1f} ms')
if backend == 'cpu':
  print('(CPU only: no accelerator here; bench_small in float32 with few steps.)')
PYEOF
