"""dvc.yaml is the contract between the stages, DVC and the flow: one `gapo <stage>` per stage, params narrowed to
what each stage reads, every checkpoint tracked, resumable rounds, metrics and plots DVC can render."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.repo_copies import REPO, make_repo_copy, run, venv_bin
from gapo import stages
from gapo.config import Params

# Execution settings, not content: changing them must not retrain anything (`dvc exp run -S` still accepts them).
# execution settings, and `compare` (it drives `dvc exp run` over the pipeline; it is not a stage of it)
NOT_CONTENT = {"runtime", "tracking", "compare"}


@pytest.fixture(scope="module")
def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def _field(path: str):
    model, parts = Params, path.split(".")
    for part in parts:
        fields = getattr(model, "model_fields", {})
        assert part in fields, f"dvc.yaml param {path!r}: no field {part!r} in the params schema"
        model = fields[part].annotation
    return model


def _names(items) -> list[str]:
    return [next(iter(i)) if isinstance(i, dict) else i for i in items or []]


def _opts(items, name) -> dict:
    for i in items or []:
        if isinstance(i, dict) and name in i:
            return i[name] or {}
    return {}


def test_dvc_yaml_stages_are_the_python_pipeline_in_order(dvc_yaml):
    """gapo.stages.PIPELINE is the one source of the stage list (the CLI's lock, the flow's tasks); dvc.yaml, which
    cannot import it, restates it and must match, order included."""
    from gapo.stages import PIPELINE, STAGES

    assert list(dvc_yaml["stages"]) == list(PIPELINE)
    assert set(PIPELINE) <= set(STAGES)


def test_every_stage_is_one_gapo_command(dvc_yaml):
    from gapo.stages import STAGES

    for name, spec in dvc_yaml["stages"].items():
        assert spec["cmd"] == f"gapo {name}", "DVC runs the same stage functions as the CLI and the flow"
        assert name in STAGES


def test_params_are_narrowed_per_stage(dvc_yaml):
    readers: dict[str, set[str]] = {}
    for name, spec in dvc_yaml["stages"].items():
        for p in spec.get("params", []):
            assert isinstance(p, str)
            _field(p)
            readers.setdefault(p.split(".")[0], set()).add(name)
    assert readers["ppo"] == {"adversarial"}, "a PPO knob must rerun only the rounds (and, through deps, later stages)"
    assert readers["adversarial"] == {"adversarial"}
    assert "sft" not in readers["reward"] and "prepare" not in readers["models"]
    covered = set(readers) | NOT_CONTENT
    assert covered == set(Params.model_fields), f"sections no stage reads: {set(Params.model_fields) - covered}"


def test_outputs_checkpoints_metrics_plots(dvc_yaml):
    stages = dvc_yaml["stages"]
    outs = {o for s in stages.values() for o in _names(s.get("outs"))}
    assert {"data/sft", "data/pp", "data/rm", "data/pr", "data/ifeval", "models/policy", "models/reward",
            "checkpoints/sft", "checkpoints/rm_warmup", "checkpoints/rounds", "checkpoints/final"} <= outs
    assert _opts(stages["adversarial"]["outs"], "checkpoints/rounds") == {"persist": True}
    for name, spec in stages.items():
        metrics = _names(spec.get("metrics"))
        assert f"metrics/{name}.json" in metrics, name
        assert _opts(spec["metrics"], f"metrics/{name}.json").get("cache") is False
    assert "plots/adversarial.csv" in _names(stages["adversarial"]["plots"])
    assert _names(stages["sft"]["plots"]) == ["plots/sft_loss.csv"]
    assert _names(stages["rm_warmup"]["plots"]) == ["plots/rm_loss.csv"]


def test_round_plots_use_the_columns_the_stage_writes(dvc_yaml):
    """dvc.yaml cannot import Python: its plots of plots/adversarial.csv must equal gapo.train.round_metrics'."""
    from gapo.eval.plots import ADVERSARIAL_COLUMNS
    from gapo.train.round_metrics import DYNAMICS_COLUMNS, DYNAMICS_PANELS, ROUND_COLUMNS

    wanted = {"rm_acc_fakes", "rm_auc", "fool_rate", "mean_reward", "kl", "entropy", "verifier_pass_rate", "hack_gap"}
    panels = {}
    for item in dvc_yaml["plots"]:
        (pid, spec), = item.items()
        assert spec["x"] == "round"
        panels[pid] = tuple(spec["y"]["plots/adversarial.csv"])
    assert panels == DYNAMICS_PANELS
    plotted = {c for cols in panels.values() for c in cols}
    assert plotted == wanted and wanted <= set(ROUND_COLUMNS)
    assert set(ADVERSARIAL_COLUMNS) == set(DYNAMICS_COLUMNS) == wanted | {"round"}
    (stage_plot,) = [p for p in dvc_yaml["stages"]["adversarial"]["plots"] if "plots/adversarial.csv" in p]
    assert stage_plot["plots/adversarial.csv"]["y"] in ROUND_COLUMNS


def test_dvc_parses_the_pipeline(tmp_path):
    root = make_repo_copy(tmp_path / "repo")
    import re

    out = run([venv_bin("dvc"), "dag", "--md"], root).stdout
    nodes = dict(re.findall(r'(node\d+)\["([^"]+)"\]', out))
    edges = {(nodes[a], nodes[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", out)}
    assert {("prepare", "models"), ("models", "sft"), ("models", "rm_warmup"), ("sft", "adversarial"),
            ("rm_warmup", "adversarial"), ("adversarial", "evaluate"), ("evaluate", "register")} <= edges, out
    status = json.loads(run([venv_bin("dvc"), "status", "--json"], root).stdout)
    assert set(status) == set(stages.PIPELINE), "a fresh clone has every stage to run"
    remote = subprocess.run([venv_bin("dvc"), "remote", "default", "--project"], cwd=root, capture_output=True,
                            text=True)
    assert remote.stdout.strip() == "local", "the tracked config names a default remote, so a clone can push"
    assert "~/.cache/gapo/dvc-remote" in (Path(root) / ".dvc" / "config").read_text()
