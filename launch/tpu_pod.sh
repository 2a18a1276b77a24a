#!/bin/bash
# TPU-VM pod slice: run the same command on every worker; jax.distributed.initialize()
# (``--distributed``) finds the other workers from the TPU metadata.
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh --config=configs/baseline.py:7b \
#     --config.init.checkpoint=gs://bucket/7b_1t_4 --config.data.dir=/data/mbpp --workdir=gs://bucket/runs/b7b
# The repository and data must be on every worker (e.g. copied with
# ``gcloud compute tpus tpu-vm scp --worker=all``); the workdir should be a gs:// path.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR="${REPO_DIR:-~/wmtp_jax}"
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all \
  --command="cd ${REPO_DIR} && python -m wmtp_jax.main --distributed${ARGS}"
