#!/usr/bin/env python3
"""The pipeline through real servers: PostgreSQL-backed MLflow (basic auth) and Prefect (auth string), on loopback.

    . .venv/bin/activate && python infra/ci/pipeline_check.py          # what .ci/run does after the tests
    python infra/ci/pipeline_check.py --keep                           # keep the scratch copy and logs
    python infra/ci/pipeline_check.py -S adversarial.rounds=2          # more overrides on top of the fast ones

Works on a fresh machine (Debian/Ubuntu, root for the one-time `apt-get install postgresql`, or PostgreSQL
already installed) with the project's venv. Steps, each timed:
1. `infra/ci/servers.sh start` (PostgreSQL, MLflow with basic auth, Prefect with an auth string; free ports,
   random passwords) unless they already run in the same state directory (then they are left running);
2. a scratch copy of this checkout (tracked + untracked-not-ignored files, `git init` + commit: DVC needs git),
   so the run never touches the checkout's params.yaml, dvc.lock or data;
3. a process worker on the `local` pool, `prefect deploy --name local` (prefect.yaml) from the copy, then
   `prefect deployment run 'gapo-pipeline/local'` with the tiny profile and small overrides;
4. assertions on what the SERVERS report, over their REST APIs: the flow run and every task run COMPLETED
   (Prefect, with the auth string; 401 without it), both registered models with version and alias `candidate`
   (and `champion` when the gate promoted) equal to what the register stage wrote, the pipeline's parent run
   FINISHED with the evaluation metrics, one FINISHED child run per stage with metrics (MLflow, basic auth from
   MLFLOW_TRACKING_USERNAME/PASSWORD; 401 without them);
5. the worker, then the servers it started, are stopped (also on failure or Ctrl-C).
Exit status 0 when every check passed; the failing check and the worker log's tail otherwise.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVERS_SH = REPO / "infra" / "ci" / "servers.sh"
VENV_BIN = Path(sys.executable).parent
STAGES = ("prepare", "models", "sft", "rm_warmup", "adversarial", "evaluate", "register")
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# The tiny profile made smaller still (the orchestration e2e tests use the same knobs): ~2-4 min of training.
FAST = ("data.num_products=40", "data.prompts_per_product=1", "data.test_prompts=12", "data.workers=1",
        "sft.max_steps=3", "sft.eval_examples=4", "sft.optim.micro_batch_size=4",
        "reward.warmup_examples=32", "reward.eval_examples=8", "reward.optim.micro_batch_size=8",
        "reward.max_length=128", "adversarial.rounds=1", "adversarial.prompts_per_round=4",
        "adversarial.eval_prompts=4", "ppo.rollout_batch_size=4", "ppo.micro_rollout_batch_size=4",
        "ppo.train_batch_size=4", "ppo.micro_train_batch_size=4", "ppo.episodes_per_round=1",
        "ppo.generate_max_len=12", "ppo.prompt_max_len=128", "evaluate.max_prompts=6", "evaluate.max_new_tokens=12",
        "evaluate.batch_size=6", "tracking.system_metrics_interval_s=2", "runtime.threads=1")


class CheckFailed(AssertionError):
    pass


def log(msg: str) -> None:
    print(f"[pipeline-check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)
    log(f"ok: {what}")


# ------------------------------------------------------------------------------------------ HTTP
def http(method: str, url: str, body: dict | None = None, auth: tuple[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status = resp.read(), resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


class Servers:
    """Clients of the two servers, credentials from the env file servers.sh wrote (never printed)."""

    def __init__(self, env: dict[str, str]):
        self.mlflow = env["MLFLOW_TRACKING_URI"].rstrip("/")
        self.mlflow_auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
        self.prefect = env["PREFECT_API_URL"].rstrip("/")
        user, _, pw = env["PREFECT_API_AUTH_STRING"].partition(":")
        self.prefect_auth = (user, pw)

    def pf(self, method: str, path: str, body: dict | None = None, auth: bool = True):
        return http(method, self.prefect + path, body, self.prefect_auth if auth else None)

    def ml(self, method: str, path: str, params: dict | None = None, body: dict | None = None, auth: bool = True):
        url = f"{self.mlflow}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        return http(method, url, body, self.mlflow_auth if auth else None)


# ------------------------------------------------------------------------------------------ processes
def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        for item in line[len("export "):].split():
            k, _, v = item.partition("=")
            out[k] = v
    return out


def servers_running(env: dict[str, str]) -> bool:
    out = subprocess.run(["bash", str(SERVERS_SH), "status"], env=env, capture_output=True, text=True)
    return out.returncode == 0 and "stopped" not in out.stdout


def stop_tree(proc: subprocess.Popen, first=signal.SIGINT, timeout: float = 30.0) -> None:
    """SIGINT the worker (it cancels its flow-run subprocesses), then SIGKILL its whole process group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, first)
            proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # whatever its children left behind (own session: only ours)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def repo_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo,
                         capture_output=True, text=True, check=True)
    return sorted({f for f in out.stdout.split("\0") if f and (repo / f).is_file()})


def make_copy(dest: Path) -> Path:
    """The checkout as it is now (uncommitted edits included), without generated pipeline state."""
    for rel in repo_files(REPO):
        if rel.startswith(("dvc.lock", "metrics/", "plots/")):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    git = ["git", "-c", "user.email=ci@localhost", "-c", "user.name=ci"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    # a private DVC remote: never push into the shared ~/.cache/gapo/dvc-remote
    subprocess.run([str(VENV_BIN / "dvc"), "remote", "modify", "--local", "local", "url", str(dest / ".dvc-remote")],
                   cwd=dest, check=True, capture_output=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "pipeline-check snapshot"], cwd=dest, check=True)
    return dest


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise CheckFailed(f"{' '.join(cmd)} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


# ------------------------------------------------------------------------------------------ assertions
def check_prefect(srv: Servers, flow_run_id: str, deployment_id: str) -> dict:
    status, _ = srv.pf("GET", f"/flow_runs/{flow_run_id}", auth=False)
    check(status == 401, f"Prefect rejects a request without the auth string (HTTP {status})")
    status, fr = srv.pf("GET", f"/flow_runs/{flow_run_id}")
    check(status == 200 and fr["state"]["type"] == "COMPLETED",
          f"Prefect: flow run {fr.get('name')} ({flow_run_id}) is COMPLETED (state {fr['state']['type']})")
    check(fr["deployment_id"] == deployment_id, "Prefect: the flow run belongs to deployment gapo-pipeline/local")
    check(fr["parameters"].get("profile") == "tiny", "Prefect: the run's parameters carry profile=tiny")
    status, trs = srv.pf("POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})
    states = {t["name"]: t["state"]["type"] for t in trs}
    check(all(s == "COMPLETED" for s in states.values()), f"Prefect: all {len(states)} task runs COMPLETED")
    for name in [*STAGES[:4], "round-1", "adversarial-commit", *STAGES[5:]]:
        check(any(n == name or n.startswith(name + "-") for n in states), f"Prefect: task run {name!r} present")
    return fr


def check_mlflow(srv: Servers, flow_run_id: str, register: dict, experiment: str = "gapo") -> None:
    status, _ = srv.ml("GET", "registered-models/get", {"name": register["policy_name"]}, auth=False)
    check(status == 401, f"MLflow rejects an unauthenticated request (HTTP {status})")
    for name, version in ((register["policy_name"], register["policy_version"]),
                          (register["reward_model_name"], register["reward_model_version"])):
        status, body = srv.ml("GET", "registered-models/get", {"name": name})
        check(status == 200, f"MLflow: registered model {name} exists")
        status, body = srv.ml("GET", "registered-models/alias", {"name": name, "alias": "candidate"})
        mv = body.get("model_version", {}) if status == 200 else {}
        check(str(mv.get("version")) == str(version),
              f"MLflow: {name}@candidate is version {version} (server: {mv.get('version')})")
        check(mv.get("status") == "READY", f"MLflow: {name} v{version} is READY")
        if register.get("promoted"):
            status, body = srv.ml("GET", "registered-models/alias", {"name": name, "alias": "champion"})
            check(status == 200 and str(body["model_version"]["version"]) == str(version),
                  f"MLflow: {name}@champion is version {version} (the gate promoted it)")
        status, body = srv.ml("GET", "runs/get", {"run_id": mv["run_id"]})
        check(status == 200 and body["run"]["data"].get("metrics"),
              f"MLflow: the run behind {name} v{version} has metrics ({len(body['run']['data'].get('metrics', []))})")
    status, body = srv.ml("GET", "experiments/get-by-name", {"experiment_name": experiment})
    check(status == 200, f"MLflow: experiment {experiment!r} exists")
    exp_id = body["experiment"]["experiment_id"]
    status, body = srv.ml("POST", "runs/search", body={
        "experiment_ids": [exp_id], "max_results": 10,
        "filter": f"tags.`prefect.flow_run_id` = '{flow_run_id}' and tags.`gapo.role` = 'pipeline'"})
    runs = body.get("runs", []) if status == 200 else []
    check(len(runs) == 1, f"MLflow: one pipeline (parent) run for flow run {flow_run_id}")
    parent = runs[0]
    metrics = {m["key"]: m["value"] for m in parent["data"].get("metrics", [])}
    check(parent["info"]["status"] == "FINISHED", "MLflow: the pipeline run is FINISHED")
    check("prompt_level_strict_acc" in metrics and 0.0 <= metrics["prompt_level_strict_acc"] <= 1.0,
          f"MLflow: the pipeline run has prompt_level_strict_acc = {metrics.get('prompt_level_strict_acc')}")
    status, body = srv.ml("POST", "runs/search", body={
        "experiment_ids": [exp_id], "max_results": 200,
        "filter": f"tags.mlflow.parentRunId = '{parent['info']['run_id']}'"})
    children = body.get("runs", []) if status == 200 else []
    by_stage: dict[str, list[dict]] = {}
    for r in children:
        tags = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
        by_stage.setdefault(tags.get("gapo.stage", "?"), []).append(r)
    check(set(STAGES) <= set(by_stage), f"MLflow: child runs for every stage ({sorted(by_stage)})")
    for stage in STAGES:
        rs = by_stage[stage]
        check(all(r["info"]["status"] == "FINISHED" for r in rs), f"MLflow: {stage} run(s) FINISHED")
    for stage in ("sft", "rm_warmup", "adversarial", "evaluate"):
        n = max(len(r["data"].get("metrics", [])) for r in by_stage[stage])
        check(n > 0, f"MLflow: the {stage} run logged {n} metrics")


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="GAPO pipeline through PostgreSQL-backed MLflow + Prefect servers")
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="params overrides added after the fast defaults")
    ap.add_argument("--state", type=Path, default=None,
                    help="servers.sh state directory (default infra/ci/state); every parent must be traversable "
                         "by the postgres user when run as root")
    ap.add_argument("--timeout", type=float, default=2700,
                    help="seconds to wait for the flow run (~6 min on a quiet 2-core machine; 25 min at load 20)")
    ap.add_argument("--check-only", nargs=2, metavar=("FLOW_RUN_ID", "REPO_COPY"), default=None,
                    help="only the server-side assertions, for a flow run that already finished (a kept copy)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy (logs, workspace)")
    ns = ap.parse_args(argv)

    t_start = time.monotonic()
    times: dict[str, float] = {}
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("GAPO_", "MLFLOW_", "PREFECT_", "DVC_"))}
    base_env.update({"PATH": f"{VENV_BIN}{os.pathsep}{base_env.get('PATH', '')}", "TQDM_DISABLE": "1",
                     "PYTHONUNBUFFERED": "1", "DO_NOT_TRACK": "true", "GAPO_PYTHON": sys.executable})
    if ns.state:
        base_env["GAPO_SERVERS_STATE"] = str(ns.state.resolve())
    state = Path(base_env.get("GAPO_SERVERS_STATE", REPO / "infra" / "ci" / "state"))
    scratch = Path(tempfile.mkdtemp(prefix="gapo-pipeline-check-"))
    started_servers = False
    worker = None
    worker_log = scratch / "worker.log"

    def on_term(signum, frame):  # noqa: ARG001 - turn SIGTERM (CI cancel) into the cleanup path
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    ok = False
    try:
        # 1. servers
        t0 = time.monotonic()
        if servers_running(base_env) and (state / "servers.env").exists():
            log(f"servers already running (state {state}); using them and leaving them running")
        else:
            started_servers = True
            log("starting PostgreSQL + MLflow + Prefect (infra/ci/servers.sh start)")
            proc = subprocess.run(["bash", str(SERVERS_SH), "start"], env=base_env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
            print(proc.stdout, end="", flush=True)
            if proc.returncode != 0:
                raise CheckFailed(f"infra/ci/servers.sh start exited {proc.returncode}")
        times["servers_start"] = time.monotonic() - t0
        server_env = read_env_file(state / "servers.env")
        srv = Servers(server_env)

        if ns.check_only:
            flow_run_id, repo = ns.check_only[0], Path(ns.check_only[1])
            status, dep = srv.pf("GET", "/deployments/name/gapo-pipeline/local")
            check_prefect(srv, flow_run_id, dep["id"])
            check_mlflow(srv, flow_run_id, json.loads((repo / "metrics" / "register.json").read_text()))
            ok = True
            return 0
        # 2. scratch copy
        t0 = time.monotonic()
        repo = make_copy(scratch / "repo")
        env = {**base_env, **server_env, "PWD": str(repo), "PREFECT_HOME": str(scratch / "prefect-home"),
               "GAPO_REGISTRY_LOCK_DIR": str(scratch / "locks"), "GAPO_TRACKING": "on"}
        times["copy"] = time.monotonic() - t0
        log(f"scratch copy of the checkout: {repo} ({times['copy']:.1f} s)")

        # 3. worker, deployment, run
        t0 = time.monotonic()
        worker = subprocess.Popen([str(VENV_BIN / "prefect"), "worker", "start", "--pool", "local", "--type",
                                   "process", "--name", "pipeline-check"], cwd=repo, env=env,
                                  stdout=open(worker_log, "wb"), stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 180
        while srv.pf("GET", "/work_pools/local")[0] != 200:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(f"the worker did not create pool `local`:\n{worker_log.read_text()[-3000:]}")
            time.sleep(1)
        out = run([str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--name", "local"], repo, env)
        check("gapo-pipeline/local" in out, "prefect deploy registered gapo-pipeline/local")
        status, dep = srv.pf("GET", "/deployments/name/gapo-pipeline/local")
        check(status == 200 and dep["work_pool_name"] == "local",
              "Prefect: deployment gapo-pipeline/local on pool local")
        overrides = [*FAST, *ns.overrides]
        out = run([str(VENV_BIN / "prefect"), "deployment", "run", "gapo-pipeline/local", "--param", "profile=tiny",
                   "--param", "overrides=" + json.dumps(overrides)], repo, env)
        flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
        times["worker_deploy"] = time.monotonic() - t0
        log(f"flow run {flow_run_id} triggered ({times['worker_deploy']:.1f} s after the copy); waiting")

        t0 = time.monotonic()
        state_type, last = None, ""
        while time.monotonic() - t0 < ns.timeout:
            status, fr = srv.pf("GET", f"/flow_runs/{flow_run_id}")
            if status == 200:
                state_type = fr["state"]["type"]
                if state_type != last:
                    log(f"flow run state {state_type} ({fr['state'].get('name')}) at {time.monotonic() - t0:.0f} s")
                    last = state_type
                if state_type in TERMINAL:
                    break
            if worker.poll() is not None:
                raise CheckFailed(f"the worker exited {worker.returncode}:\n{worker_log.read_text()[-4000:]}")
            time.sleep(3)
        times["flow_run"] = time.monotonic() - t0
        if state_type != "COMPLETED":
            raise CheckFailed(f"flow run {flow_run_id} ended {state_type} after {times['flow_run']:.0f} s:\n"
                              f"{worker_log.read_text(errors='replace')[-6000:]}")

        # 4. what the servers report
        t0 = time.monotonic()
        check_prefect(srv, flow_run_id, dep["id"])
        register = json.loads((repo / "metrics" / "register.json").read_text())
        check_mlflow(srv, flow_run_id, register)
        times["checks"] = time.monotonic() - t0
        ok = True
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        log(f"FAILED: {exc}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        t0 = time.monotonic()
        if worker is not None:
            stop_tree(worker)
        if started_servers:
            subprocess.run(["bash", str(SERVERS_SH), "stop"], env=base_env, timeout=300)
        times["stop"] = time.monotonic() - t0
        if ns.keep or not ok:
            log(f"kept {scratch} (worker.log, repo/)")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    times["total"] = time.monotonic() - t_start
    log("wall times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    log("PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
