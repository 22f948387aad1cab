#!/usr/bin/env bash
# Multi-node GPU pre-training with SLURM: one process per node, all GPUs of a node per process.
#   sbatch --nodes=4 launch/slurm_gpu.sh configs/mae_st.py:vit_l /shared/runs/mae_st_vit_l [--config.x=y ...]
#SBATCH --job-name=mvm_jax
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --signal=TERM@120        # SIGTERM two minutes before the time limit: checkpoint, exit 0
#SBATCH --requeue
set -euo pipefail
config=${1:?config, e.g. configs/mae_st.py:vit_l}
workdir=${2:?shared workdir}
shift 2
# jax.distributed.initialize() picks up SLURM's environment (nodes, rank, coordinator).
srun --kill-on-bad-exit=1 python -m mvm_jax.main --config "$config" --workdir "$workdir" --distributed "$@"
