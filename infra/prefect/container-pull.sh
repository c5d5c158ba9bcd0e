#!/bin/sh
# Pull step of the container deployments (infra/prefect-deployments.yaml), run by the worker's flow-run
# process inside the image's checkout (/opt/gapo) before the flow is loaded:
# - the DVC cache goes to the shared volume (GAPO_SHARED_DIR: the compose volume or the k8s PVC), so stage
#   outputs and checkpoints outlive the container and later runs restore them instead of recomputing;
# - the MinIO/S3 remote is (re)defined in .dvc/config.local from GAPO_DVC_REMOTE_URL and AWS_ENDPOINT_URL_S3.
# Credentials stay in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); nothing secret is written.
set -eu
shared=${GAPO_SHARED_DIR:-/mnt/gapo}
if [ ! -d .dvc ]; then
  echo "container-pull: $(pwd) has no .dvc directory; skipping DVC set-up" >&2
  exit 0
fi
mkdir -p "$shared/dvc-cache"
dvc config --local cache.dir "$shared/dvc-cache"
if [ -n "${GAPO_DVC_REMOTE_URL:-}" ]; then
  dvc remote add --local --force --default minio "$GAPO_DVC_REMOTE_URL"
  if [ -n "${AWS_ENDPOINT_URL_S3:-}" ]; then
    dvc remote modify --local minio endpointurl "$AWS_ENDPOINT_URL_S3"
  fi
fi
echo "container-pull: DVC cache $shared/dvc-cache, remote ${GAPO_DVC_REMOTE_URL:-(none)}"
