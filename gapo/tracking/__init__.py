"""MLflow tracking, lineage and the model registry: everything the pipeline tells MLflow lives here.

Training code never imports MLflow. Instead:
- `runs.tracked(stage)` wraps each stage function registered in `gapo.stages.STAGES` (so every `gapo <stage>`
  run, whether started by `dvc repro`, by the Prefect flow or by hand, is tracked the same way): it opens a
  nested MLflow run under one parent run per pipeline run, logs the flattened params, then, after the stage,
  its `metrics/<stage>.json` and `plots/*.csv` rows as step metrics and one nested run per adversarial round.
- `lineage` collects the git commit, the `dvc.lock` hash of every stage and the Prefect flow-run id, and
  prints the chain behind a registered model (`gapo lineage models:/gapo-policy@champion`).
- `registry` is the `register` stage: new versions of `gapo-policy` (transformers flavour) and
  `gapo-reward-model` (pyfunc, `reward_pyfunc`) with alias `candidate`, and the promotion gate that moves
  `champion` under a lock.

Where things go: `MLFLOW_TRACKING_URI` when set, else `params.tracking.tracking_uri` (default an embedded
`sqlite:///mlflow.db` at the workspace root, artifacts in `params.tracking.artifact_location`).
Set `GAPO_TRACKING=off` to run stages without MLflow (the `register` stage still needs it).
"""
