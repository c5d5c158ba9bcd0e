"""gapo-pipeline: GAPO (Generative Adversarial Policy Optimization) as a reproducible pipeline.

Importing the package sets the offline and no-telemetry environment for every stage process:
nothing in this project may reach a model hub or phone home (docs/decisions.md).
"""
import os

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "true",  # MLflow honours only "true", not "1"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _k, _v in _OFFLINE_ENV.items():
    if _v:
        os.environ.setdefault(_k, _v)

__version__ = "0.1.0"
