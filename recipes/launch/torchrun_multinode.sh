#!/bin/bash
# Multi-node MOVA training with torchrun (no SLURM). Run this script once on every node with the same
# MASTER_ADDR / MASTER_PORT / NNODES and that node's NODE_RANK. Lightning detects torchrun
# (TorchElasticEnvironment) and does not spawn processes itself.
#
#   MASTER_ADDR=node0 NNODES=2 NODE_RANK=0 recipes/launch/torchrun_multinode.sh +recipe=<recipe> strategy=fsdp2
#   MASTER_ADDR=node0 NNODES=2 NODE_RANK=1 recipes/launch/torchrun_multinode.sh +recipe=<recipe> strategy=fsdp2
set -euo pipefail
: "${MASTER_ADDR:?set MASTER_ADDR to the hostname of node 0}"
MASTER_PORT=${MASTER_PORT:-29500}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}

exec python -m torch.distributed.run \
  --nnodes="${NNODES}" --node_rank="${NODE_RANK}" --nproc_per_node="${NPROC_PER_NODE}" \
  --master_addr="${MASTER_ADDR}" --master_port="${MASTER_PORT}" \
  -m mova_train trainer.num_nodes="${NNODES}" trainer.devices="${NPROC_PER_NODE}" "$@"
