"""The adversarial round fingerprint covers exactly what dvc.yaml declares for the stage (issue 13, item 11).

DVC reruns `adversarial` when one of its declared params changes and keeps `checkpoints/rounds` (persist: true);
the stage then resumes every round whose fingerprint still matches. So every declared param must change the
fingerprint, or a changed knob resumes rounds trained with the old value (the hand-written fingerprint had
missed `models.reward_autocast`). This test walks every leaf of every param dvc.yaml declares for the stage,
perturbs it to another valid value and asserts the fingerprint changes; the few params that cannot change a
completed round are listed below with the reason. A param added to dvc.yaml (or to a declared section) without
reaching the fingerprint fails here.
"""
from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from tests.reliability.rel_helpers import REPO

from gapo.config import Params, load_params

# declared param (or a prefix of it) -> why changing it must NOT make completed rounds stale
NOT_IN_ROUNDS = {
    "adversarial.rounds": "more rounds resume after the completed ones",
    "deepspeed.launcher": "how the ranks are started, not what they compute (the world size is fingerprinted)",
    "deepspeed.hostfile": "idem",
    "deepspeed.master_port": "idem",
    "train_seed": "the stage copies it into `seed` before fingerprinting (gapo.stages.adversarial); `seed` is covered",
    "paradigm": "selects the RM data (data/rm vs data/rm_pr), whose content the fingerprint hashes",
    "baselines": "read only by the baselines (method != gapo), which keep no rounds; baselines.ppo_reward decides "
                 "whether method ppo runs rounds at all",
    "method": "gapo and ppo(encoder) share run_adversarial, and round.json records the method; another method "
              "runs a baseline with no rounds",
}


# params that can only change together (Params._cross_checks): the partner's value set with the perturbed one
COUPLED = {"deepspeed.precision": ("models.dtype", "bfloat16"), "models.dtype": ("deepspeed.precision", "bf16")}


def _declared_params() -> list[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return [next(iter(p)) if isinstance(p, dict) else p for p in stages["adversarial"]["params"]]


def _annotation(path: list[str]):
    model: typing.Any = Params
    ann = None
    for part in path:
        field = model.model_fields[part]
        ann = field.annotation
        model = ann
    return ann


def _candidates(value, ann) -> list:
    args = typing.get_args(ann)
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return [a for a in args if a != value]
    if value is None:
        inner = [a for a in args if a is not type(None)]
        base = typing.get_origin(inner[0]) or inner[0] if inner else None
        return {float: [0.5, 1e-3], int: [1, 7], str: ["x"]}.get(base, [0.5, 1, "x"])
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2]
    if isinstance(value, float):
        return [value * 2, value / 2, value + 0.1, 0.5, 0.0]
    if isinstance(value, list):
        if value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return [[v * 0.5 for v in value], [v - 1 for v in value]]
        return [value[:-1], value + value[-1:]] if value else [["x"]]
    return []


def _leaves(tree, prefix: str):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}.{k}")
    else:
        yield prefix, tree


def _set(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        tree = tree[p]
    tree[parts[-1]] = value


@pytest.fixture(scope="module")
def fp_ws(tmp_path_factory):
    """A workspace holding just what the fingerprint hashes (it reads no weights beyond hashing them)."""
    from gapo.paths import Workspace

    ws = Workspace(tmp_path_factory.mktemp("fp"))
    for d in (ws.sft, ws.rm_warmup):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"weights of " + d.name.encode())
    for kind in ("ifeval", "rm"):
        ws.jsonl(kind, "train").parent.mkdir(parents=True)
        ws.jsonl(kind, "train").write_text('{"key": 1}\n')
    return ws


def test_every_param_dvc_declares_changes_the_round_fingerprint(fp_ws):
    from gapo.train import adversarial as A

    base = load_params(REPO / "params.yaml")
    tree = base.model_dump(mode="json")
    fp0 = A.fingerprint(base, fp_ws)
    checked, missing, no_value = [], [], []
    for name in _declared_params():
        node = tree
        for part in name.split("."):
            node = node[part]
        for leaf, value in _leaves(node, name):
            if any(leaf == k or leaf.startswith(k + ".") for k in NOT_IN_ROUNDS):
                continue
            ann = _annotation(leaf.split("."))
            for cand in [c for c in _candidates(value, ann) if c != value]:
                changed = base.model_dump(mode="json")
                _set(changed, leaf, cand)
                if leaf in COUPLED:
                    _set(changed, *COUPLED[leaf])
                try:
                    params = Params.model_validate(changed)
                except Exception:  # noqa: BLE001 - not a valid value here (a cross-check): try the next
                    continue
                if A.fingerprint(params, fp_ws) == fp0:
                    missing.append(f"{leaf}: {value!r} -> {cand!r}")
                checked.append(leaf)
                break
            else:
                no_value.append(leaf)
    assert not missing, ("dvc.yaml declares these params of the adversarial stage, but changing them leaves the "
                         f"round fingerprint unchanged (a stale round would be resumed): {missing}")
    assert not no_value, f"no valid other value found to perturb: {no_value}"
    assert "models.reward_autocast" in checked and len(checked) > 40, checked


def test_params_outside_the_declaration_or_excluded_keep_completed_rounds(fp_ws):
    from gapo.train import adversarial as A

    base = load_params(REPO / "params.yaml")
    fp0 = A.fingerprint(base, fp_ws)
    for override in ("adversarial.rounds=9", "deepspeed.master_port=29999", "evaluate.max_new_tokens=17",
                     "registry.policy_name=other", "sft.max_steps=3"):
        assert A.fingerprint(load_params(REPO / "params.yaml", [override]), fp_ws) == fp0, override


def test_the_exclusions_are_declared_params():
    declared = _declared_params()
    for key in NOT_IN_ROUNDS:
        assert any(key == d or key.startswith(d + ".") for d in declared), f"{key} is not declared in dvc.yaml"


def test_data_and_checkpoint_deps_reach_the_fingerprint(fp_ws, tmp_path):
    import shutil

    from gapo.paths import Workspace
    from gapo.train import adversarial as A

    params = load_params(REPO / "params.yaml")
    fp0 = A.fingerprint(params, fp_ws)
    for rel in ("checkpoints/sft/model.safetensors", "checkpoints/rm_warmup/model.safetensors",
                "data/ifeval/train.jsonl", "data/rm/train.jsonl"):
        copy = Workspace(tmp_path / rel.replace("/", "_"))
        shutil.copytree(fp_ws.root, copy.root)
        f = Path(copy.root / rel)
        f.write_bytes(f.read_bytes() + b"\n")
        assert A.fingerprint(params, copy) != fp0, rel
