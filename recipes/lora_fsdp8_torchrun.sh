#!/bin/bash
# torchrun launcher for the lora_fsdp8 recipe; run it on every node with its NODE_RANK:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 RUN_ID=exp1 bash recipes/lora_fsdp8_torchrun.sh [extra overrides]
# Lightning detects the torchrun (TorchElastic) environment and does not start processes itself.
set -euo pipefail

NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
RUN_ID="${RUN_ID:-$(date +%Y-%m-%d_%H-%M-%S)}"   # must be the same on every node
RUN_DIR="${MOVA_OUTPUT_DIR:-outputs}/lora_fsdp8/runs/${RUN_ID}"

torchrun --nnodes="${NNODES}" --node_rank="${NODE_RANK}" --nproc_per_node=8 \
  --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" \
  -m mova_train +recipe=lora_fsdp8 \
  trainer.num_nodes="${NNODES}" trainer.devices=8 \
  hydra.run.dir="${RUN_DIR}" \
  "$@"
