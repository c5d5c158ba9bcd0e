"""gapo.tracking.registry: the gate (pure), registration of tiny models, aliases and tags, lineage, the pyfunc
RM, and promotion under a lock when two runs finish together."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gapo.config import GateConfig, load_params
from gapo.io import write_json
from gapo.paths import Workspace
from gapo.tracking.registry import evaluate_gate


def test_gate_first_candidate_becomes_champion():
    v = evaluate_gate({"metric": 0.2, "kl": 0.1, "hack_gap": 0.05, "eval_set": "a"}, None, GateConfig())
    assert v.promote and any("no champion yet" in r for r in v.reasons)
    assert v.tags()["gate.verdict"] == "promoted" and v.tags()["gate.champion_version"] == ""


@pytest.mark.parametrize("cand,champ,kl,gap,same,expect,why", [
    (0.30, 0.25, 0.1, 0.1, True, True, "beats champion"),
    (0.25, 0.25, 0.1, 0.1, True, False, "does not beat"),       # a tie never promotes
    (0.20, 0.25, 0.1, 0.1, True, False, "does not beat"),
    (0.30, 0.25, 5.0, 0.1, True, False, "KL 5 > budget"),
    (0.30, 0.25, 0.1, 0.9, True, False, "hack_gap 0.9 > budget"),
    (0.30, 0.25, 0.1, None, True, True, "hack_gap not measured"),
    (0.30, 0.25, 0.1, 0.1, False, False, "other test data"),
])
def test_gate_checks(cand, champ, kl, gap, same, expect, why):
    v = evaluate_gate({"metric": cand, "kl": kl, "hack_gap": gap, "eval_set": "set-a"},
                      {"version": "1", "metric": str(champ), "eval_set": "set-a" if same else "set-b"}, GateConfig())
    assert v.promote is expect
    assert any(why in r for r in v.reasons), v.reasons


def test_gate_min_improvement_and_missing_metric():
    g = GateConfig(min_improvement=0.05)
    assert not evaluate_gate({"metric": 0.29, "kl": 0.0}, {"version": "1", "metric": 0.25}, g).promote
    assert evaluate_gate({"metric": 0.31, "kl": 0.0}, {"version": "1", "metric": 0.25}, g).promote
    v = evaluate_gate({"metric": None, "kl": 0.0}, None, g)
    assert not v.promote and "no prompt_level_strict_acc" in v.reasons[0]
    assert not evaluate_gate({"metric": 0.5, "kl": None}, None, g).promote


def _workspace(root, tiny_models, acc: float, kl: float = 0.05, hack_gap: float | None = 0.1,
               vs_sft: bool = False) -> Workspace:
    ws = Workspace(root)
    policy, reward = tiny_models
    shutil.copytree(policy, ws.final / "policy")
    shutil.copytree(reward, ws.final / "reward")
    ifeval = ws.jsonl("ifeval", "test")
    ifeval.parent.mkdir(parents=True)
    ifeval.write_text(json.dumps({"key": 1, "prompt": "Describe a mug.", "instruction_id_list": [], "kwargs": []})
                      + "\n")
    metrics = {"prompt_level_strict_acc": acc, "inst_level_strict_acc": acc + 0.1, "kl_to_sft": kl,
               "by_instruction": {"x:y": {"n": 1}}, "num_prompts": 1}
    if vs_sft:  # the paired block gapo.eval.paired.compare writes, one prompt against an SFT that failed it
        cell = {"final": acc, "sft": 0.0, "delta": acc, "ci95_low": acc, "ci95_high": acc, "p_bootstrap": 1.0}
        metrics["vs_sft"] = {"n_prompts": 1, "n_instructions": 0, "resamples": 10, "seed": 0,
                             **{k: dict(cell) for k in ("prompt_level_strict_acc", "prompt_level_loose_acc",
                                                        "inst_level_strict_acc", "inst_level_loose_acc")}}
    write_json(ws.metrics_file("evaluate"), metrics)
    if hack_gap is not None:
        write_json(ws.metrics_file("adversarial"), {"hack_gap": hack_gap})
    return ws


def test_register_gate_lineage_and_loading(tmp_path, mlflow_store, tiny_models, monkeypatch):
    import mlflow
    import pandas as pd

    from gapo.stages import STAGES

    monkeypatch.setenv("GAPO_PIPELINE_KEY", "registry-test")
    monkeypatch.setenv("GAPO_PREFECT_FLOW_RUN_ID", "flow-run-abc")
    params = load_params(None, ["tracking.system_metrics=false", "evaluate.max_new_tokens=8"], profile="tiny")
    first = STAGES["register"].fn(params, _workspace(tmp_path / "a", tiny_models, acc=0.30, vs_sft=True))
    assert first["promoted"] and first["policy_version"] == 1 and first["champion_version"] == 1
    worse = STAGES["register"].fn(params, _workspace(tmp_path / "b", tiny_models, acc=0.20))
    assert not worse["promoted"] and worse["policy_version"] == 2 and worse["champion_version"] == 1
    assert json.loads((tmp_path / "b" / "metrics" / "register.json").read_text())["promoted"] is False

    client = mlflow.MlflowClient()
    for name in ("gapo-policy", "gapo-reward-model"):
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
        assert str(client.get_model_version_by_alias(name, "candidate").version) == "2"
    v2 = client.get_model_version("gapo-policy", "2")
    assert v2.tags["gate.verdict"] == "rejected" and v2.tags["gate.champion_version"] == "1"
    assert v2.tags["gate.champion_value"] == "0.3" and v2.tags["gate.candidate_value"] == "0.2"
    assert v2.tags["eval.prompt_level_strict_acc"] == "0.2" and v2.tags["prefect.flow_run_id"] == "flow-run-abc"
    # every version carries its model card: README.md in the logged model and the same text as description
    for name, role_line in (("gapo-policy", "policy (generator)"), ("gapo-reward-model", "reward model")):
        for version, verdict in (("1", "promoted"), ("2", "rejected")):
            mv = client.get_model_version(name, version)
            readme = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"{client.get_model_version_download_uri(name, version)}/README.md",
                dst_path=str(tmp_path / "cards" / name / version))).read_text(encoding="utf-8")
            assert readme.startswith(f"# {name} version {version}\n") and role_line in readme
            assert mv.description == readme and len(readme) <= 5000
            assert "- Base: `builtin:" in readme and "- Prefect flow run: `flow-run-abc`" in readme
            assert f"## Promotion gate at registration\n\n{verdict}: " in readme
            assert ("| prompt-level strict | 30.0% | 0.0% | +30.0 | [+30.0, +30.0] |" in readme) is (version == "1")
            assert ("No paired comparison with the SFT policy" in readme) is (version == "2")
            assert str(tmp_path) not in readme and "sqlite" not in readme
    register_run = client.get_run(v2.run_id)
    assert register_run.data.tags["gapo.stage"] == "register"
    assert client.get_run(register_run.data.tags["mlflow.parentRunId"]).data.tags["gapo.role"] == "pipeline"

    # lineage: the CLI prints the chain from the alias down to the Prefect flow run
    proc = subprocess.run([sys.executable, "-m", "gapo.cli", "--workdir", str(tmp_path / "a"), "lineage",
                           "models:/gapo-policy@champion"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "gapo-policy version 1" in out and "champion" in out and "flow run flow-run-abc" in out
    assert "register" in out and "pipeline" in out and "stage hashes" in out
    bad = subprocess.run([sys.executable, "-m", "gapo.cli", "lineage", "models:/gapo-policy@nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.startswith("error: lineage 'models:/gapo-policy@nope'")

    # the registered models load and answer
    policy = mlflow.pyfunc.load_model("models:/gapo-policy@champion")
    out = policy.predict(["Write a product description for a blue mug."], params={"max_new_tokens": 4})
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str)
    rm = mlflow.pyfunc.load_model("models:/gapo-reward-model@champion")
    scores = rm.predict(pd.DataFrame({"prompt": ["Describe a mug.\nRequirements:\nuse 5 words", "a"],
                                      "response": ["A sturdy blue mug.", "b"]}))
    assert list(scores.columns) == ["score", "logit"] and len(scores) == 2
    # default `score` = what PPO received (params.reward.score); either kind can be asked for per request
    probs = rm.predict(pd.DataFrame({"prompt": ["a"], "response": ["b"]}), params={"score": "prob"})
    assert probs["score"][0] == pytest.approx(1 / (1 + math.exp(-probs["logit"][0])))
    logits = rm.predict(pd.DataFrame({"prompt": ["a"], "response": ["b"]}), params={"score": "logit"})
    assert logits["score"][0] == pytest.approx(logits["logit"][0])


PROMOTE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import mlflow
    from gapo.config import load_params
    from gapo.tracking.registry import promote
    import os
    acc, version, hold, go = float(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    params = load_params(None)
    client = mlflow.MlflowClient()
    client.search_registered_models()  # connect (and migrate) before the start signal
    while not os.path.exists(go):
        time.sleep(0.02)
    verdict = promote(client, params, {"gapo-policy": version}, {"metric": acc, "kl": 0.0, "eval_set": "s"},
                      hold_s=hold)
    print(json.dumps({"version": version, "promote": verdict.promote, "t": time.time()}))
""")


def test_promotion_is_serialised_when_two_runs_finish_together(tmp_path, mlflow_store):
    """Champion v1 (0.40); runs B (0.60, v3) and A (0.50, v2) finish together. A reads the champion while B is
    between its read and its alias write, and A writes last. Without the lock A would see v1, pass, and overwrite
    B's promotion (champion v2, the worse model); with it A must wait, see v3, and be rejected."""
    import mlflow
    from filelock import FileLock, Timeout

    from gapo.tracking.registry import lock_path

    client = mlflow.MlflowClient()
    client.create_registered_model("gapo-policy")
    for acc in ("0.4", "0.5", "0.6"):
        mv = client.create_model_version("gapo-policy", source=str(tmp_path))
        client.set_model_version_tag("gapo-policy", mv.version, "eval.prompt_level_strict_acc", acc)
        client.set_model_version_tag("gapo-policy", mv.version, "eval.set", "s")
    client.set_registered_model_alias("gapo-policy", "champion", "1")
    script = tmp_path / "promote.py"
    script.write_text(PROMOTE_SCRIPT)
    go_a, go_b = tmp_path / "go-a", tmp_path / "go-b"
    b = subprocess.Popen([sys.executable, str(script), "0.6", "3", "3", str(go_b)], stdout=subprocess.PIPE, text=True)
    a = subprocess.Popen([sys.executable, str(script), "0.5", "2", "3", str(go_a)], stdout=subprocess.PIPE, text=True)
    go_b.touch()
    probe, deadline = FileLock(str(lock_path(load_params(None)))), time.time() + 240
    while time.time() < deadline:  # wait until B holds the promotion lock
        try:
            probe.acquire(timeout=0)
            probe.release()
            time.sleep(0.05)
        except Timeout:
            break
    else:
        pytest.fail("run B never took the promotion lock")
    go_a.touch()  # A now reads the champion while B is between its read and its write
    out_b, out_a = b.communicate(timeout=300)[0], a.communicate(timeout=300)[0]
    assert b.returncode == 0 and a.returncode == 0
    vb, va = json.loads(out_b.strip().splitlines()[-1]), json.loads(out_a.strip().splitlines()[-1])
    assert vb["promote"] is True and va["promote"] is False
    assert str(client.get_model_version_by_alias("gapo-policy", "champion").version) == "3"
    assert client.get_model_version("gapo-policy", "2").tags["gate.champion_version"] == "3"
