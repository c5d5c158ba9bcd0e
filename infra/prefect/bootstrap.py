"""Create (or update) gapo-pipeline's Prefect work pools and secret blocks on the server in PREFECT_API_URL.

    python infra/prefect/bootstrap.py                 # pools + secrets (secrets only for env vars that are set)
    python infra/prefect/bootstrap.py --pools-only

Work pools (idempotent: an existing pool gets the template again):
    gapo-compose   process     flows run inside the compose `worker` container (CPU)
    gapo-docker    docker      GPU containers from the trainer image (infra/docker/prefect-base-job-template.json)
    gapo-k8s       kubernetes  GPU Jobs with a shared PVC (infra/k8s/prefect-base-job-template.json)

Secret blocks: the docker pool's template refers to them as {{ prefect.blocks.secret.<name> }}; the worker
resolves them when it starts a flow-run container, so the values never enter a deployment or prefect.yaml.
    gapo-mlflow-username <- MLFLOW_TRACKING_USERNAME    gapo-mlflow-password <- MLFLOW_TRACKING_PASSWORD
    gapo-s3-access-key-id <- AWS_ACCESS_KEY_ID          gapo-s3-secret-access-key <- AWS_SECRET_ACCESS_KEY
The client authenticates with PREFECT_API_AUTH_STRING (the server's PREFECT_SERVER_API_AUTH_STRING).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

INFRA = Path(__file__).resolve().parents[1]
POOLS = {
    "gapo-compose": ("process", None),
    "gapo-docker": ("docker", INFRA / "docker" / "prefect-base-job-template.json"),
    "gapo-k8s": ("kubernetes", INFRA / "k8s" / "prefect-base-job-template.json"),
}
SECRETS = {
    "gapo-mlflow-username": "MLFLOW_TRACKING_USERNAME",
    "gapo-mlflow-password": "MLFLOW_TRACKING_PASSWORD",
    "gapo-s3-access-key-id": "AWS_ACCESS_KEY_ID",
    "gapo-s3-secret-access-key": "AWS_SECRET_ACCESS_KEY",
}


def ensure_pools(client, pools: dict = POOLS) -> list[str]:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    done = []
    for name, (pool_type, template_path) in pools.items():
        template = json.loads(template_path.read_text(encoding="utf-8")) if template_path else None
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            kwargs = {"name": name, "type": pool_type}
            if template is not None:
                kwargs["base_job_template"] = template
            client.create_work_pool(WorkPoolCreate(**kwargs))
            done.append(f"created {name} ({pool_type})")
            continue
        if template is not None:
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        done.append(f"updated {name} ({pool_type})")
    return done


def ensure_secrets(env: dict | None = None) -> list[str]:
    from prefect.blocks.system import Secret

    env = os.environ if env is None else env
    done = []
    for block, var in SECRETS.items():
        value = env.get(var)
        if not value:
            done.append(f"skipped {block} ({var} not set)")
            continue
        Secret(value=value).save(block, overwrite=True)
        done.append(f"saved {block}")
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pools-only", action="store_true", help="do not write secret blocks")
    ns = ap.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("error: PREFECT_API_URL is not set (e.g. http://127.0.0.1:4200/api)", file=sys.stderr)
        return 2
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for line in ensure_pools(client):
            print(line)
    if not ns.pools_only:
        for line in ensure_secrets():
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
