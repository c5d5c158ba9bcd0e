"""The launcher contract of gapo.train.engine (fast; the real 2-process job is tests/infra/test_launched_round.py):
when a process counts as a launched rank, what the relaunch command carries, where its scratch files live."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gapo.config import DeepSpeedConfig, load_params
from gapo.errors import GapoError
from gapo.paths import Workspace
from gapo.train import engine as E

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GAPO_LAUNCHED", E._SET_BY_US)


@pytest.fixture
def clean_env(monkeypatch):
    for k in LAUNCH_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_inside_launcher_by_rank_variables_not_only_the_marker(clean_env):
    assert not E.inside_launcher()
    clean_env.setenv("LOCAL_RANK", "3")             # a remote rank under pdsh: no GAPO_LAUNCHED there
    assert E.inside_launcher()
    clean_env.setenv(E._SET_BY_US, "1")             # ...but RANK/LOCAL_RANK we set for a bare process do not count
    assert not E.inside_launcher()
    clean_env.setenv("GAPO_LAUNCHED", "1")
    assert E.inside_launcher()


def test_torchrun_command_is_single_node_with_an_explicit_rendezvous():
    ds = DeepSpeedConfig(launcher="torchrun", num_processes=2, master_port=29611)
    cmd = E.launcher_command(["adversarial", "--round", "2"], ds)
    assert {"--nproc_per_node=2", "--nnodes=1", "--master_addr=127.0.0.1", "--master_port=29611"} <= set(cmd)
    assert cmd[-5:] == ["-m", "gapo.cli", "adversarial", "--round", "2"]  # `gapo adversarial --round 2`
    ds = DeepSpeedConfig(launcher="deepspeed", num_processes=8, hostfile="/mnt/gapo/hostfile")
    cmd = E.launcher_command(["sft"], ds)
    assert cmd[cmd.index("--hostfile") + 1] == "/mnt/gapo/hostfile" and cmd[-3:] == ["--module", "gapo.cli", "sft"]


def _fake_launcher(calls: list, summary: dict | None, rc: int = 0):
    def run(cmd, env=None, **kw):
        args = cmd[cmd.index("--params"):]
        pfile, sfile = Path(args[1]), Path(args[args.index("--summary") + 1])
        calls.append({"cmd": cmd, "env": env, "params": pfile.read_text(), "pfile": pfile})
        if summary is not None:
            sfile.write_text(json.dumps(summary))
        return subprocess.CompletedProcess(cmd, rc)
    return run


def test_maybe_relaunch_forwards_args_and_uses_the_workspace_for_scratch(clean_env, tmp_path):
    params = load_params(None, ["deepspeed.launcher=torchrun", "deepspeed.num_processes=2", "ppo.init_kl_coef=0.07"])
    ws = Workspace(tmp_path / "ws")
    calls: list = []
    clean_env.setattr(E.subprocess, "run", _fake_launcher(calls, {"rounds_run": [2]}))
    out = E.maybe_relaunch(["adversarial", "--round", "2"], params, ws)
    assert out == {"rounds_run": [2]}
    (call,) = calls
    # the global flags, then the stage and its flags: `gapo --params P --workdir W --summary S adversarial --round 2`
    assert call["cmd"][-3:] == ["adversarial", "--round", "2"]
    assert call["cmd"][call["cmd"].index("--workdir") + 1] == str(ws.root.resolve())
    assert call["env"]["GAPO_LAUNCHED"] == "1"
    # the merged params (with the override) went through <workspace>/tmp/, removed afterwards
    assert call["pfile"].parent.parent == ws.root / "tmp" and "init_kl_coef: 0.07" in call["params"]
    assert not call["pfile"].parent.exists()
    # a rank that is already launched runs in-process
    clean_env.setenv("LOCAL_RANK", "0")
    assert E.maybe_relaunch(["adversarial"], params, ws) is None
    assert len(calls) == 1


def test_maybe_relaunch_fails_on_a_failed_launch_or_a_missing_summary(clean_env, tmp_path):
    params = load_params(None, ["deepspeed.launcher=deepspeed", "deepspeed.num_processes=2"])
    ws = Workspace(tmp_path)
    clean_env.setattr(E.subprocess, "run", _fake_launcher([], None, rc=1))
    with pytest.raises(GapoError, match="exited with status 1"):
        E.maybe_relaunch(["sft"], params, ws)
    clean_env.setattr(E.subprocess, "run", _fake_launcher([], None, rc=0))
    with pytest.raises(GapoError, match="wrote no summary"):
        E.maybe_relaunch(["sft"], params, ws)
    assert not list((tmp_path / "tmp").iterdir())   # scratch removed on failure too
