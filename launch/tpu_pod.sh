#!/usr/bin/env bash
# Cloud TPU pod slice: run the same command on every host of the slice.
#   launch/tpu_pod.sh my-tpu us-central2-b configs/mae_st.py:vit_l gs://bucket/runs/mae_st_vit_l [--config.x=y ...]
set -euo pipefail
tpu=${1:?TPU name}
zone=${2:?zone}
config=${3:?config}
workdir=${4:?workdir (gs:// path)}
shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/mvm_jax && python -m mvm_jax.main --config $config --workdir $workdir --distributed $*"
