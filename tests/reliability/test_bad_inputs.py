"""The bad-input corpus: malformed data files, params.yaml, model paths and CLI overrides, each through the real
`gapo` command line (in-process). Every case must

- exit with status 2 and print exactly one line on stderr: `error: <source> <place>: <what was expected>`, no
  traceback (the substrings each case lists name the source, the place and the expectation);
- leave the workspace exactly as it was (no new, changed or temporary file).

A few cases also go through `dvc repro` in a repo copy (slow): the stage fails with the same line, dvc.lock and
the DVC cache are untouched.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tests.reliability.rel_helpers import dvc_cache_is_intact, make_repo_copy, run, tracked_env, venv_bin

GOOD_IFEVAL = {"key": 1, "prompt": "Describe a mug.", "instruction_id_list": ["length_constraints:number_words"],
               "kwargs": [{"num_words": 50, "relation": "less than"}]}
SMALL_DATA = ("-S", "data.num_products=10", "-S", "data.test_prompts=5", "-S", "data.workers=1")


def _jsonl(**changes) -> bytes:
    rec = {**GOOD_IFEVAL, **changes}
    return (json.dumps({k: v for k, v in rec.items() if v is not ...}) + "\n").encode()


# -- case builders: (ctx) -> argv; ctx has .inp (a folder outside the workspace), .ws, .models ------------------------
def user_data(param: str, content: bytes | None, name: str = "in.jsonl"):
    def build(ctx):
        path = ctx.inp / name
        if content is not None:
            path.write_bytes(content)
        return ["prepare", *SMALL_DATA, "-S", f"data.user.{param}={path}"]
    return build


def params_file(text: str, stage: str = "prepare"):
    def build(ctx):
        path = ctx.inp / "params.yaml"
        path.write_text(text)
        return ["--params", str(path), stage]
    return build


def override(*sets: str, stage: str = "prepare", pre: tuple[str, ...] = ()):
    def build(ctx):
        argv = list(pre) + [stage]
        for s in sets:
            argv += ["-S", s.format(inp=ctx.inp, policy=ctx.models[0], reward=ctx.models[1])]
        return argv
    return build


def model_dir(kind: str, role: str):
    """models stage with `role` pointing at a broken model dir, the other role at a good tiny model."""
    def build(ctx):
        policy, reward = ctx.models
        bad = ctx.inp / kind
        src = policy if role == "policy" else reward
        if kind == "missing":
            pass
        elif kind == "not_a_model":
            bad.mkdir()
            (bad / "README.md").write_text("hello")
        elif kind == "a_file":
            bad.write_text("{}")
        elif kind == "no_weights":
            shutil.copytree(src, bad)
            (bad / "model.safetensors").unlink()
        elif kind == "pickle_only":
            import torch
            from safetensors.torch import load_file

            shutil.copytree(src, bad)
            torch.save(load_file(str(bad / "model.safetensors")), bad / "pytorch_model.bin")
            (bad / "model.safetensors").unlink()
        elif kind == "bad_config":
            shutil.copytree(src, bad)
            (bad / "config.json").write_text("{ not json")
        elif kind == "remote_code":
            shutil.copytree(src, bad)
            cfg = json.loads((bad / "config.json").read_text())
            cfg.update(model_type="gapo-custom-arch", auto_map={"AutoConfig": "custom.CustomConfig"})
            (bad / "config.json").write_text(json.dumps(cfg))
            (bad / "custom.py").write_text(f"open({str(ctx.inp / 'EXECUTED')!r}, 'w').write('pwned')\n")
        elif kind == "swap":  # the other role's (valid) model: a decoder as RM, an encoder as policy
            bad = reward if role == "policy" else policy
        good = {"policy": policy, "reward": reward}
        good[role] = bad
        return ["models", "-S", f"models.policy={good['policy']}", "-S", f"models.reward={good['reward']}"]
    return build


def evaluate_model(which: str):
    """`gapo evaluate --input X -S evaluate.model=<which>`: a missing dir, or the RM given as the policy."""
    def build(ctx):
        inp = ctx.inp / "ifeval.jsonl"
        inp.write_bytes(_jsonl())
        model = ctx.models[1] if which == "reward" else ctx.inp / which
        return ["evaluate", "--input", str(inp), "-S", f"evaluate.model={model}"]
    return build


def corrupt_pipeline_file(stage: str, rel: str, content: bytes):
    """A pipeline file an earlier stage wrote, truncated or hand-edited, read by `stage`."""
    def build(ctx):
        ctx.setup_pipeline_ws()
        (ctx.ws / rel).write_bytes(content)
        return [stage]
    return build


# (id, builder, substrings of the one error line)
CASES = [
    # -- user data files (data.user.*) -----------------------------------------------------------------------------
    ("data_bad_json", user_data("ifeval", b'{"key": 1, "prompt": "x"\n'), ["in.jsonl line 1", "invalid JSON"]),
    ("data_missing_field", user_data("ifeval", _jsonl(prompt=...)), ["line 1", "field 'prompt'", "missing"]),
    ("data_wrong_type", user_data("ifeval", _jsonl(prompt=5)), ["field 'prompt'", "expected a string"]),
    ("data_unknown_instruction", user_data("ifeval", _jsonl(instruction_id_list=["keywords:rhymes"])),
     ["field 'instruction_id_list[0]'", "unknown IFEval instruction id"]),
    ("data_missing_argument", user_data("ifeval", _jsonl(kwargs=[{"num_words": 5}])),
     ["field 'kwargs[0]'", "missing argument(s) relation"]),
    ("data_not_utf8", user_data("ifeval", b'{"key": 1, "prompt": "caf\xe9"}\n'), ["line 1", "not UTF-8"]),
    ("data_empty_file", user_data("ifeval", b""), ["in.jsonl", "file is empty"]),
    ("data_duplicate_key", user_data("ifeval", _jsonl() + _jsonl()), ["line 2", "duplicate key 1"]),
    ("data_file_not_found", user_data("sft", None, "nope.jsonl"), ["nope.jsonl", "file not found", "data.user.sft"]),
    ("data_sft_unsatisfied", user_data("sft", b'{"prompt": "p", "completion": "far too many words for this limit", '
                                              b'"instruction_id_list": ["length_constraints:number_words"], '
                                              b'"kwargs": [{"num_words": 3, "relation": "less than"}]}\n'),
     ["line 1", "does not satisfy length_constraints:number_words"]),
    ("data_pr_missing_rejected", user_data("preferential_response",
                                           b'{"prompt": "p", "chosen": "ok", "instruction_id_list": [], "kwargs": []}\n'),
     ["line 1", "field 'rejected'", "missing"]),
    # -- pipeline files an earlier stage wrote, then corrupted -------------------------------------------------------
    ("pipeline_truncated_sft_data", corrupt_pipeline_file("sft", "data/sft/train.jsonl", b'{"prompt": "p", "compl'),
     ["data/sft/train.jsonl line 1", "invalid JSON", "rerun the stage"]),
    ("pipeline_truncated_rm_data", corrupt_pipeline_file("rm_warmup", "data/rm/train.jsonl", b'\xff\xfe{"x"\n'),
     ["data/rm/train.jsonl line 1", "invalid JSON"]),
    ("pipeline_sft_before_prepare", override(stage="sft"), ["data/sft/train.jsonl: not found", "gapo prepare"]),
    ("pipeline_adversarial_before_sft", override(stage="adversarial"), ["not found", "gapo sft"]),
    ("pipeline_register_before_final", override(stage="register"), ["final policy", "not a saved HF model dir"]),
    # -- params.yaml -------------------------------------------------------------------------------------------------
    ("params_unknown_section", params_file("sftt:\n  max_steps: 3\n"), ["params.yaml", "sftt: unknown key",
                                                                          "expected one of"]),
    ("params_unknown_key", params_file("sft:\n  max_step: 3\n"), ["sft.max_step: unknown key", "max_steps"]),
    ("params_wrong_type", params_file("sft:\n  max_steps: many\n"), ["sft.max_steps", "valid integer", "'many'"]),
    ("params_out_of_range", params_file("ppo:\n  gamma: 1.5\n"), ["ppo.gamma", "less than or equal to 1"]),
    ("params_bad_literal", params_file("method: gapo2\n"), ["method", "'gapo'", "'gapo2'"]),
    ("params_invalid_yaml", params_file("sft:\n  max_steps: [3\n"), ["params.yaml line", "invalid YAML"]),
    ("params_not_a_mapping", params_file("- 1\n- 2\n"), ["expected a mapping", "got list"]),
    ("params_file_missing", lambda ctx: ["--params", str(ctx.inp / "nope.yaml"), "prepare"],
     ["nope.yaml", "file not found"]),
    ("params_contradictory_batches", params_file("ppo:\n  rollout_batch_size: 1\n  n_samples_per_prompt: 4\n"
                                                 "  micro_rollout_batch_size: 8\n"),
     ["micro_rollout_batch_size (samples per sampler batch) must be <= ppo.rollout_batch_size × "
      "ppo.n_samples_per_prompt"]),
    ("params_group_needs_samples", params_file("ppo:\n  n_samples_per_prompt: 1\n  micro_rollout_batch_size: 8\n"),
     ["ppo.advantage_estimator=group needs ppo.n_samples_per_prompt >= 2"]),
    ("params_contradictory_precision", params_file("deepspeed:\n  precision: bf16\n"),
     ["deepspeed.precision=bf16 needs models.dtype=bfloat16"]),
    ("params_contradictory_constraints", params_file("data:\n  min_constraints: 4\n  max_constraints: 2\n"),
     ["data", "min_constraints (4) must be <= max_constraints (2)"]),
    # -- model paths -------------------------------------------------------------------------------------------------
    ("model_policy_missing", model_dir("missing", "policy"), ["policy", "missing", "no such directory"]),
    ("model_policy_not_a_model", model_dir("not_a_model", "policy"), ["not a model directory (no config.json)"]),
    ("model_policy_is_a_file", model_dir("a_file", "policy"), ["is a file, expected a model directory"]),
    ("model_policy_no_weights", model_dir("no_weights", "policy"), ["no weights (*.safetensors)"]),
    ("model_policy_pickle_only", model_dir("pickle_only", "policy"),
     ["pickle-only checkpoint (pytorch_model.bin)", "models.allow_pickle=true"]),
    ("model_reward_pickle_only", model_dir("pickle_only", "reward"), ["reward", "pickle-only checkpoint"]),
    ("model_reward_is_a_decoder", model_dir("swap", "reward"), ["reward", "is a decoder-only model (llama)",
                                                                "must be an encoder"]),
    ("model_policy_is_an_encoder", model_dir("swap", "policy"), ["policy", "is an encoder (bert)", "causal LM"]),
    ("model_reward_bad_config", model_dir("bad_config", "reward"), ["reward", "unreadable config.json"]),
    ("model_remote_code", model_dir("remote_code", "policy"),
     ["needs custom code", "models.trust_remote_code=true only if you trust it"]),
    ("model_unknown_builtin", override("models.reward=builtin:gpt5", stage="models"),
     ["models.reward 'builtin:gpt5'", "unknown builtin", "bert-tiny"]),
    ("model_evaluate_missing_model", evaluate_model("gone"), ["policy", "gone", "no such directory"]),
    ("model_evaluate_reward_as_policy", evaluate_model("reward"), ["is an encoder (bert)", "causal LM"]),
    # -- CLI overrides and arguments ---------------------------------------------------------------------------------
    ("cli_override_without_value", override("sft.max_steps"), ["override 'sft.max_steps'", "expected key.path=value"]),
    ("cli_override_unknown_key", override("sft.max_stepz=3"), ["sft.max_stepz: unknown key", "max_steps"]),
    ("cli_override_out_of_range", override("sft.max_steps=-1"), ["sft.max_steps", "greater than or equal to 0"]),
    ("cli_override_value_as_section", override("seed.x=1"), ["seed", "valid integer", "got {'x': 1}"]),
    ("cli_override_section_as_value", override("sft=3"), ["sft", "valid dictionary", "got 3"]),
    ("cli_override_empty_path", override("sft..max_steps=3"), ["empty key path"]),
    ("cli_unknown_profile", override(pre=("--profile", "huge")), ["profile 'huge'", "known:", "tiny"]),
    ("cli_round_out_of_range", lambda ctx: ["--profile", "tiny", "adversarial", "--round", "9"],
     ["adversarial --round 9", "expected 1..2"]),
    ("cli_round_not_an_int", lambda ctx: ["adversarial", "--round", "two"], ["--round", "invalid int value: 'two'"]),
    ("cli_unknown_stage", lambda ctx: ["trian"], ["invalid choice: 'trian'", "prepare"]),
]


class Ctx:
    def __init__(self, tmp: Path, models):
        self.inp, self.ws, self.models = tmp / "inputs", tmp / "ws", models
        self.inp.mkdir()
        self.ws.mkdir()

    def setup_pipeline_ws(self) -> None:
        """data/ (fixture rows) and models/ (tiny models) as the earlier stages would leave them."""
        from gapo.paths import Workspace
        from tests.models import tiny_assets

        ws = Workspace(self.ws)
        tiny_assets.write_fixture_data(ws, n_train=8, n_val=2, n_test=2)
        shutil.copytree(self.models[0], ws.policy_base)
        shutil.copytree(self.models[1], ws.reward_base)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder (size, mtime), except .gapo/ (the workspace lock, not an output)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if (p.is_file() or p.is_dir()) and ".gapo" not in p.relative_to(root).parts}


def test_corpus_is_large_and_covers_every_kind():
    kinds = {c[0].split("_")[0] for c in CASES}
    assert len(CASES) >= 30 and kinds == {"data", "pipeline", "params", "model", "cli"}
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case,build,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(case, build, expect, tmp_path, tiny_model_dirs, capsys,
                                                     monkeypatch):
    from gapo import cli

    ctx = Ctx(tmp_path, tiny_model_dirs)
    argv = build(ctx)
    monkeypatch.chdir(ctx.ws)  # relative outputs (params.yaml lookup, workspace) resolve here
    before = snapshot(ctx.ws)
    capsys.readouterr()
    try:
        rc = cli.main(["--workdir", str(ctx.ws), *argv])
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    for part in expect:
        assert part in errors[0], (part, errors[0])
    assert snapshot(ctx.ws) == before, "the failed command changed the workspace"
    assert not (ctx.inp / "EXECUTED").exists(), "remote code ran"


# -- through dvc repro: the stage fails with the same line; dvc.lock and the cache stay as they were ------------------
@pytest.mark.slow
def test_dvc_repro_of_bad_inputs_leaves_lock_and_cache_intact(tmp_path, tiny_model_dirs):
    import yaml

    root = make_repo_copy(tmp_path / "repo", "tiny", ("data.num_products=10", "data.test_prompts=5",
                                                     "data.workers=1"))
    env = tracked_env(root, GAPO_TRACKING="off")
    run([venv_bin("dvc"), "repro", "prepare"], root, env)
    lock, n_cache = (root / "dvc.lock").read_text(), dvc_cache_is_intact(root)
    # data/stats.json is a `cache: false` metric: DVC deletes it before rerunning the stage and cannot restore it
    data_before = {k: v[0] for k, v in snapshot(root / "data").items() if k != "stats.json"}
    bad_data = tmp_path / "bad.jsonl"
    bad_data.write_bytes(b'{"key": 1, "prompt": 3}\n')
    policy, _ = tiny_model_dirs
    good = (root / "params.yaml").read_text()

    def bad_file(p):
        p["data"]["user"]["ifeval"] = str(bad_data)

    def out_of_range(p):
        p["sft"]["max_steps"] = -3

    def decoder_rm(p):
        p["models"]["policy"], p["models"]["reward"] = str(policy), str(policy)

    for mutate, expect in ((bad_file, "field 'prompt'"), (out_of_range, "sft.max_steps"),
                           (decoder_rm, "must be an encoder")):
        tree = yaml.safe_load(good)
        mutate(tree)
        (root / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
        proc = run([venv_bin("dvc"), "repro"], root, env, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and expect in out, out[-3000:]
        assert sum(1 for line in out.splitlines() if line.startswith("error: ")) == 1, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
        assert (root / "dvc.lock").read_text() == lock, "a failed stage reached dvc.lock"
        assert dvc_cache_is_intact(root) == n_cache, "a failed stage added to the DVC cache"
        assert not (root / "models").exists() and not (root / "checkpoints").exists()
        (root / "params.yaml").write_text(good)
        # DVC removes a stage's outputs before running it; the cache still holds the last good ones
        run([venv_bin("dvc"), "checkout", "prepare"], root, env)
        assert {k: v[0] for k, v in snapshot(root / "data").items() if k != "stats.json"} == data_before
        # ... except the `cache: false` metrics, which only a successful run writes again
        status = json.loads(run([venv_bin("dvc"), "status", "prepare", "--json"], root, env).stdout or "{}")
        changed = {k for entry in status.get("prepare", []) for k in entry.get("changed outs", {})}
        assert changed <= {"data/stats.json", "metrics/prepare.json"}, status
        run([venv_bin("dvc"), "repro", "prepare"], root, env)  # the next case starts from an up-to-date prepare
        lock, n_cache = (root / "dvc.lock").read_text(), dvc_cache_is_intact(root)
