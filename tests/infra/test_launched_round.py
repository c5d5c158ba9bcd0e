"""The launched-job path end to end: the Prefect flow's adversarial round task runs `gapo adversarial --round 1`,
which relaunches itself under torchrun as 2 ranks (CPU, gloo, ZeRO-2) and returns rank 0's result.

Proof that two ranks trained (not one rank that was told world_size 2): with ZeRO-2 every data-parallel rank
writes its own optimizer shard (`zero_pp_rank_<r>_mp_rank_00_optim_states.pt`) into the round's DeepSpeed state,
and DeepSpeed records the data-parallel world size in the model-states file.
Measured on the shared 2-core box at load average ~25 (other jobs running): 397 s (setup stages in one process
196 s, the flow with the launched round 193 s); the timeout leaves room for that.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

FAST = ("data.num_products=40", "data.prompts_per_product=1", "data.test_prompts=12", "data.workers=1",
        "sft.max_steps=3", "sft.eval_examples=4", "sft.optim.micro_batch_size=4",
        "reward.warmup_examples=32", "reward.eval_examples=8", "reward.optim.micro_batch_size=8",
        "reward.max_length=128", "adversarial.rounds=1", "adversarial.prompts_per_round=4",
        "adversarial.eval_prompts=4", "ppo.rollout_batch_size=4", "ppo.micro_rollout_batch_size=2",
        "ppo.train_batch_size=4", "ppo.micro_train_batch_size=2", "ppo.episodes_per_round=1",
        "ppo.generate_max_len=8", "ppo.prompt_max_len=128", "runtime.threads=1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SETUP = """
from pathlib import Path
from gapo import stages
from gapo.config import load_params
from gapo.paths import Workspace

params = load_params(Path("params.yaml"), ["deepspeed.launcher=none"])   # only the round is launched
ws = Workspace(Path.cwd())
for name in ("prepare", "models", "sft", "rm_warmup"):
    stages.STAGES[name].fn(params, ws)
"""

FLOW = """
import json, sys
from prefect import flow
from flows.gapo_pipeline import run_round

@flow(name="launched-round-test")
def one_round(workdir: str) -> dict:
    return run_round(1, workdir, {"GAPO_PREFECT_FLOW_RUN_ID": "test"}, 900)

print("RESULT " + json.dumps(one_round(sys.argv[1]), default=str))
"""


def test_flow_round_task_runs_a_two_process_torchrun_job(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT", "GAPO_SINGLE_PROCESS_ENV", "GAPO_LAUNCHED")
           and not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(GAPO_TRACKING="off", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    root = tmp_path / "ws"
    root.mkdir()
    launch = ("deepspeed.launcher=torchrun", "deepspeed.num_processes=2", "deepspeed.zero_stage=2",
              f"deepspeed.master_port={_free_port()}")
    from gapo.config import load_params, render_params_yaml

    (root / "params.yaml").write_text(render_params_yaml(load_params(None, [*FAST, *launch], "tiny")))
    t0 = time.time()
    # the inputs of round 1, in ONE process (each `gapo <stage>` would import torch/transformers/DeepSpeed again)
    proc = subprocess.run([sys.executable, "-c", SETUP], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    setup_s = time.time() - t0

    # The flow's own task in a flow run (an ephemeral Prefect API in a private PREFECT_HOME), in a fresh process
    # so that no Prefect setting of this test process leaks in; started a generous time to answer under load.
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300",
               PYTHONPATH=str(REPO), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", FLOW, str(root)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=1000)
    round_s = time.time() - t0
    print(f"setup stages {setup_s:.0f} s, flow with the launched round task {round_s:.0f} s")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["round"] == 1 and result["row"], result
    rdir = root / "checkpoints" / "rounds" / "round_001"
    assert (rdir / "round.json").is_file()
    shards = sorted(p.name for p in rdir.rglob("zero_pp_rank_*_optim_states.pt"))
    ranks = {n.split("_")[3] for n in shards}
    assert ranks == {"0", "1"}, shards   # both data-parallel ranks wrote their ZeRO-2 optimizer shard
    import torch

    states = sorted(rdir.rglob("mp_rank_00_model_states.pt"))
    assert states, list(rdir.rglob("*"))
    ck = torch.load(states[0], map_location="cpu", weights_only=False)   # our own file (DeepSpeed's format)
    assert ck["dp_world_size"] == 2
    assert not list((root / "tmp").glob("launch-*")), "the launch scratch dir was not removed"
    metrics = json.loads((root / "metrics" / "adversarial.json").read_text())
    assert metrics, "rank 0 wrote no adversarial metrics"
