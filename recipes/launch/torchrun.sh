#!/bin/bash
# MOVA training with torchrun (no SLURM), one node or many. Run it once on every node with the same MASTER_ADDR,
# MASTER_PORT, NNODES and RUN_ID and that node's NODE_RANK. Lightning detects torchrun (TorchElasticEnvironment)
# and does not start processes itself.
#
#   RECIPE=lora_fsdp8 bash recipes/launch/torchrun.sh [overrides]                         # one node, 8 GPUs
#   MASTER_ADDR=node0 NNODES=2 NODE_RANK=0 RUN_ID=exp1 bash recipes/launch/torchrun.sh    # on node0
#   MASTER_ADDR=node0 NNODES=2 NODE_RANK=1 RUN_ID=exp1 bash recipes/launch/torchrun.sh    # on node1
#
# RECIPE (default lora_fsdp8) is a file of conf/recipe/. MOVA_VENV (default .venv) is activated when it exists.
# hydra.run.dir is fixed (RUN_ID) so that every rank writes to the same folder.
# SIGTERM to this script reaches torchrun (exec) and its workers: the SigtermCheckpoint callback writes
# <run dir>/checkpoints/sigterm.ckpt; run again with the same RUN_ID and `ckpt_path=last` to continue.
set -euo pipefail

RECIPE="${RECIPE:-lora_fsdp8}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
NPROC_PER_NODE="${NPROC_PER_NODE:-8}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
RUN_ID="${RUN_ID:-$(date +%Y-%m-%d_%H-%M-%S)}"   # must be the same on every node
RUN_DIR="${MOVA_OUTPUT_DIR:-outputs}/${RECIPE}/runs/${RUN_ID}"

if [[ -f "${MOVA_VENV:-.venv}/bin/activate" ]]; then source "${MOVA_VENV:-.venv}/bin/activate"; fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1   # a failed collective ends the job instead of hanging it
# export NCCL_SOCKET_IFNAME=ib0 NCCL_IB_HCA=mlx5   # cluster-specific network settings go here

exec python -m torch.distributed.run \
  --nnodes="${NNODES}" --node_rank="${NODE_RANK}" --nproc_per_node="${NPROC_PER_NODE}" \
  --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" \
  -m mova_train +recipe="${RECIPE}" \
  trainer.num_nodes="${NNODES}" trainer.devices="${NPROC_PER_NODE}" \
  hydra.run.dir="${RUN_DIR}" \
  "$@"
