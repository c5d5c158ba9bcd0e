"""Every kind of bad input of issue 13 through the real `gapo` command (a subprocess each): exit status 2, exactly one
`error:` line naming the source and what was expected, no traceback, no hang, and nothing left behind (the workspace
and the input folder byte for byte as before, `.gapo/` aside).

The cases use the commands that load no model (`config`, `prepare`, `evaluate --responses`) wherever the input
allows; the weight cases run `gapo models`, which reads only safetensors headers. The table in docs/reliability.md
("Issue 13 inputs") lists each case with its line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

GAPO = str(Path(sys.executable).parent / "gapo")
GOOD = {"key": 1, "prompt": "Describe a mug.", "instruction_id_list": ["length_constraints:number_words"],
        "kwargs": [{"num_words": 50, "relation": "less than"}]}
SMALL = ["-S", "data.num_products=5", "-S", "data.test_prompts=3", "-S", "data.workers=1"]


def rec(**changes) -> str:
    return json.dumps({**GOOD, **changes}) + "\n"


def write(ctx, name: str, text: str | bytes) -> str:
    p = ctx.inp / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def user_data(name: str, text: str | bytes, param: str = "ifeval"):
    return lambda ctx: ["prepare", *SMALL, "-S", f"data.user.{param}={write(ctx, name, text)}"]


def config(*sets: str):
    return lambda ctx: ["config", *[x for s in sets for x in ("-S", s)]]


def score(inp: str | None = None, resp: str | None = None, **flags):
    """evaluate --responses (scoring only, no model): the input and responses files, and --output/--samples."""
    def build(ctx):
        i = write(ctx, "in.jsonl", inp or rec())
        r = write(ctx, "resp.jsonl", resp or json.dumps({"prompt": GOOD["prompt"], "response": "A mug."}) + "\n")
        argv = ["evaluate", "--input", i, "--responses", r]
        for flag, value in flags.items():
            argv += [f"--{flag}", value(ctx) if callable(value) else value]
        return argv
    return build


def bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + f"\nseed: *a{levels - 1}\n"


def fifo(ctx) -> str:
    p = ctx.inp / "fifo.jsonl"
    os.mkfifo(p)
    return str(p)


def symlink_loop(ctx) -> str:
    a, b = ctx.inp / "loop_a.jsonl", ctx.inp / "loop_b.jsonl"
    a.symlink_to(b)
    b.symlink_to(a)
    return str(a)


def self_pointer(ctx) -> list[str]:
    d = ctx.inp / "pointer"
    d.mkdir()
    (d / "source.json").write_text(json.dumps({"source": str(d)}))
    return ["models", "-S", f"models.policy={d}"]


def weights(kind: str):
    def build(ctx):
        from tests.reliability.test_strict_weights import _variant

        policy, reward = ctx.models
        bad = _variant(policy, ctx.inp / kind, kind)
        return ["models", "-S", f"models.policy={bad}", "-S", f"models.reward={reward}"]
    return build


def tracked_output(ctx) -> list[str]:
    """--output naming a file git tracks (the issue's case: the workspace's tracked params.yaml)."""
    repo = ctx.inp / "repo"
    repo.mkdir()
    (repo / "notes.json").write_text("{}\n")
    for cmd in (["init", "-q"], ["add", "notes.json"]):
        subprocess.run(["git", *cmd], cwd=repo, check=True, capture_output=True)
    return score(output=str(repo / "notes.json"))(ctx)


# (id, argv builder, extra env, substrings of the one error line)
CASES = [
    # -- huge integers, a seed beyond 64 bits --------------------------------------------------------------------
    ("int_key_beyond_int64", user_data("h.jsonl", rec(key=10**30)), {}, ["line 1", "field 'key'", "out of range"]),
    ("int_argument_beyond_int64", user_data("h.jsonl", rec(kwargs=[{"num_words": 10**40, "relation": "at least"}])),
     {}, ["field 'kwargs[0].num_words'", "out of range"]),
    ("int_5000_digits", user_data("h.jsonl", rec().replace("50", "9" * 5000)), {}, ["line 1", "invalid JSON"]),
    ("int_param_huge", config("sft.max_steps=100000000000000000000000"), {}, ["sft.max_steps", "64-bit"]),
    ("seed_beyond_64_bits", config(f"seed={2**64}"), {}, ["seed", "less than 9223372036854775808"]),
    ("seed_negative", config("seed=-1"), {}, ["seed", "greater than or equal to 0"]),
    # -- deep JSON, unknown language, lone surrogates -------------------------------------------------------------
    ("json_nested_deeply", user_data("d.jsonl", "[" * 100_000 + "]" * 100_000 + "\n"), {},
     ["d.jsonl line 1", "nested deeper than 64"]),
    ("json_nested_deeply_responses", score(resp="[" * 100_000 + "]" * 100_000 + "\n"), {},
     ["resp.jsonl line 1", "nested deeper"]),
    ("unknown_language_code", user_data("l.jsonl", rec(instruction_id_list=["language:response_language"],
                                                       kwargs=[{"language": "xx"}])), {},
     ["field 'kwargs[0].language'", "unknown language code 'xx'"]),
    ("lone_surrogate_prompt", user_data("s.jsonl", rec(prompt="bad \ud800 text")), {}, ["line 1", "lone surrogate"]),
    ("lone_surrogate_response", score(resp=json.dumps({"prompt": GOOD["prompt"], "response": "x \udc00"}) + "\n"),
     {}, ["resp.jsonl line 1", "lone surrogate"]),
    # -- not a regular file where a file is expected ---------------------------------------------------------------
    ("data_is_a_directory", lambda ctx: ["prepare", *SMALL, "-S", f"data.user.ifeval={ctx.inp}"], {},
     ["directory holds neither"]),
    ("data_is_a_fifo", lambda ctx: ["prepare", *SMALL, "-S", f"data.user.ifeval={fifo(ctx)}"], {},
     ["fifo.jsonl", "not a regular file"]),
    ("data_is_a_symlink_loop", lambda ctx: ["prepare", *SMALL, "-S", f"data.user.ifeval={symlink_loop(ctx)}"], {},
     ["loop_a.jsonl", "symlink loop"]),
    ("params_is_a_directory", lambda ctx: ["--params", str(ctx.inp), "config"], {}, ["is a directory"]),
    ("params_is_a_fifo", lambda ctx: ["--params", fifo(ctx), "config"], {}, ["fifo.jsonl", "cannot read"]),
    ("workdir_is_a_file", lambda ctx: ["--workdir", write(ctx, "f.txt", "x"), "config"], {},
     ["--workdir", "is a file"]),
    ("output_is_a_directory", score(output=lambda ctx: str(ctx.inp)), {}, ["--output", "is a directory"]),
    ("samples_is_a_directory", score(samples=lambda ctx: str(ctx.inp)), {}, ["--samples", "is a directory"]),
    # -- environment, pointers ----------------------------------------------------------------------------------------
    ("lock_timeout_not_a_number", lambda ctx: ["prepare", *SMALL], {"GAPO_WORKSPACE_LOCK_TIMEOUT_S": "abc"},
     ["GAPO_WORKSPACE_LOCK_TIMEOUT_S='abc'", "seconds"]),
    ("lock_timeout_inf", lambda ctx: ["prepare", *SMALL], {"GAPO_WORKSPACE_LOCK_TIMEOUT_S": "inf"},
     ["GAPO_WORKSPACE_LOCK_TIMEOUT_S='inf'"]),
    ("source_json_points_at_itself", self_pointer, {}, ["source.json pointers form a loop"]),
    # -- params: out of range, not finite, alias bomb --------------------------------------------------------------
    ("lr_inf", config("ppo.actor_learning_rate=.inf"), {}, ["ppo.actor_learning_rate", "finite"]),
    ("kl_inf", config("ppo.init_kl_coef=.inf"), {}, ["ppo.init_kl_coef", "finite"]),
    ("temperature_nan", config("ppo.temperature=.nan"), {}, ["ppo.temperature", "finite"]),
    ("reward_clip_nan", config("ppo.reward_clip_range=[.nan, 1.0]"), {}, ["ppo.reward_clip_range.0", "finite"]),
    ("adam_beta_1", config("sft.optim.adam_betas=[0.9, 1.0]"), {}, ["sft.optim.adam_betas.1", "less than 1"]),
    ("adam_beta_negative", config("reward.optim.adam_betas=[-0.1, 0.9]"), {},
     ["reward.optim.adam_betas.0", "greater than or equal to 0"]),
    ("yaml_alias_bomb_params", lambda ctx: ["--params", write(ctx, "bomb.yaml", bomb()), "config"], {},
     ["bomb.yaml", "aliases", "expanded"]),
    ("yaml_alias_bomb_override", lambda ctx: ["config", "-S", "seed=" + bomb(7).replace("\n", " ")
                                              .split("seed:")[0].replace("a0:", "[").replace(" a", ", ") + "]"],
     {}, ["error:"]),
    ("yaml_self_alias", lambda ctx: ["--params", write(ctx, "rec.yaml", "seed: &a [1, *a]\n"), "config"], {},
     ["rec.yaml", "aliases"]),
    ("yaml_long_value_cut", config("method=" + "x" * 5000), {}, ["method", "..."]),
    # -- data the checkers would randomise, contradict or choke on ------------------------------------------------
    ("nth_paragraph_beyond_num_paragraphs",
     user_data("n.jsonl", rec(instruction_id_list=["length_constraints:nth_paragraph_first_word"],
                              kwargs=[{"num_paragraphs": 2, "nth_paragraph": 5, "first_word": "hi"}])), {},
     ["field 'kwargs[0].nth_paragraph'", "random value"]),
    ("redos_keyword", user_data("r.jsonl", rec(instruction_id_list=["keywords:existence"],
                                               kwargs=[{"keywords": ["(a+)+$"]}])), {},
     ["field 'kwargs[0].keywords'", "not a valid pattern"]),
    ("redos_keyword_scoring", score(inp=rec(instruction_id_list=["keywords:existence"],
                                            kwargs=[{"keywords": ["(a+)+$"]}])), {},
     ["in.jsonl line 1", "field 'kwargs[0].keywords'"]),
    ("response_too_long_to_check", score(resp=json.dumps({"prompt": GOOD["prompt"], "response": "[" * 25000}) + "\n"),
     {}, ["25000 characters", "at most 20000"]),
    ("pp_chosen_equals_rejected",
     user_data("pp.jsonl", json.dumps({"response": "A red mug.", "chosen_prompt": "Describe it.",
                                       "rejected_prompt": " Describe  it. ", "perturbation": "modify",
                                       "perturbed_instruction_id": "punctuation:no_comma",
                                       "chosen_instruction_id_list": ["punctuation:no_comma"],
                                       "chosen_kwargs": [{}], "rejected_instruction_id_list": ["punctuation:no_comma"],
                                       "rejected_kwargs": [{}]}) + "\n", "preferential_prompt"), {},
     ["field 'rejected_prompt'", "labelled both chosen and rejected"]),
    ("duplicate_json_field", user_data("dup.jsonl", '{"key": 1, "prompt": "a", "prompt": "b"}\n'), {},
     ["line 1", "field 'prompt'", "given twice"]),
    ("duplicate_key_sft", user_data("sft.jsonl", (json.dumps({"key": 4, "prompt": "p", "completion": "ok",
                                                              "instruction_id_list": [], "kwargs": []}) + "\n") * 2,
                                    "sft"), {}, ["line 2", "duplicate key 4"]),
    # -- outputs over inputs and tracked files ---------------------------------------------------------------------
    ("output_is_the_input", score(output=lambda ctx: str(ctx.inp / "in.jsonl")), {}, ["is the --input file"]),
    ("samples_is_the_responses", score(samples=lambda ctx: str(ctx.inp / "resp.jsonl")), {},
     ["is the --responses file"]),
    ("output_equals_samples", score(output=lambda ctx: str(ctx.inp / "o.json"),
                                    samples=lambda ctx: str(ctx.inp / "o.json")), {}, ["the same file as --output"]),
    ("output_is_git_tracked", tracked_output, {}, ["git tracks this file"]),
    ("output_is_params_yaml", lambda ctx: score(output=str(ctx.ws / "params.yaml"))(ctx), {},
     ["params.yaml", "refusing to overwrite"]),
    # -- weights (headers only) ------------------------------------------------------------------------------------
    ("weights_truncated", weights("truncated"), {}, ["model.safetensors", "truncated"]),
    ("weights_empty", weights("empty"), {}, ["model.safetensors", "empty"]),
    ("weights_header_bomb", weights("header_bomb"), {}, ["model.safetensors", "header bomb"]),
    ("weights_wrong_shape", weights("wrong_shape"), {}, ["model.safetensors", "wrong shape"]),
    ("weights_foreign_keys", weights("foreign"), {}, ["model.safetensors", "missing from the checkpoint"]),
]


class Ctx:
    def __init__(self, tmp: Path, models):
        self.inp, self.ws, self.models = tmp / "inputs", tmp / "ws", models
        self.inp.mkdir()
        self.ws.mkdir()


def snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if ".gapo" in rel.parts:
            continue
        st = p.lstat()
        out[str(rel)] = (st.st_size, st.st_mtime_ns, p.is_symlink())
    return out


def test_the_corpus_covers_every_kind_of_the_issue():
    ids = {c[0] for c in CASES}
    assert len(ids) == len(CASES) >= 45
    for kind in ("int_", "seed_beyond_64_bits", "json_nested", "unknown_language", "lone_surrogate", "directory",
                 "fifo", "symlink_loop", "output_is_a_directory", "lock_timeout", "workdir_is_a_file",
                 "params_is_a_directory", "source_json", "yaml_alias_bomb", "lr_inf", "reward_clip_nan", "adam_beta",
                 "seed_negative", "nth_paragraph", "redos", "pp_chosen_equals_rejected", "duplicate_json_field",
                 "duplicate_key", "output_is_the_input", "output_is_git_tracked", "weights_"):
        assert any(kind in i for i in ids), kind


@pytest.mark.parametrize("case,build,env,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_through_the_cli(case, build, env, expect, tmp_path, tiny_model_dirs):
    ctx = Ctx(tmp_path, tiny_model_dirs)
    argv = build(ctx)
    before_ws, before_in = snapshot(ctx.ws), snapshot(ctx.inp)
    t0 = time.time()
    proc = subprocess.run([GAPO, "--workdir", str(ctx.ws), *argv] if argv[0] != "--workdir" else [GAPO, *argv],
                          cwd=ctx.ws, env={**os.environ, "GAPO_TRACKING": "off", **env}, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    elapsed = time.time() - t0
    err = proc.stderr
    lines = [x for x in err.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error: ")]
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and errors[0] == lines[-1], lines[-10:]
    assert len(errors[0]) <= 2100, len(errors[0])  # long values are cut
    for part in expect:
        assert part in errors[0], (part, errors[0])
    assert elapsed < 150, f"{case} took {elapsed:.0f} s"  # no hang (a loaded CI box included)
    assert snapshot(ctx.ws) == before_ws, "the failed command changed the workspace"
    assert snapshot(ctx.inp) == before_in, "the failed command changed an input"
