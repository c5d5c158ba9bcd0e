"""`gapo evaluate` generation mode on a tiny workspace: a 2-layer Llama policy, a 2-layer BERT RM, IFEval prompts.

The models are built from configs in seconds (gapo.models.builders); checkpoints/sft holds the same weights as
the final policy, so the KL to SFT must be exactly zero, and a second reference with other weights gives a KL
checked against a direct computation.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gapo.cli import main
from gapo.config import ArchConfig
from gapo.eval import evaluate as ev
from gapo.paths import Workspace

CASES_PATH = Path(__file__).parent / "data" / "ifeval_cases.jsonl"
N_PROMPTS = 12
OVERRIDES = ["-S", "evaluate.max_new_tokens=12", "-S", "evaluate.batch_size=5", "-S", "runtime.threads=1"]


def _cases() -> list[dict]:
    return [json.loads(line) for line in CASES_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


def _untied_llama(arch: ArchConfig, tok, seed: int):
    # builtin llama ties input and output embeddings; a random tied model just repeats the prompt's last token
    # (a newline here, so every response would decode to ""). Untied, greedy text varies from prompt to prompt.
    from transformers import LlamaForCausalLM

    from gapo.models.builders import build_llama

    config = build_llama(arch, tok, seed=seed).config
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _save(model, tok, out: Path) -> None:
    from gapo.models.loading import save_pretrained

    save_pretrained(model, tok, out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from gapo.io import write_jsonl
    from gapo.models.builders import build_bert_classifier, train_bpe_tokenizer, train_wordpiece_tokenizer

    root = tmp_path_factory.mktemp("evalws")
    ws = Workspace(root)
    cases = _cases()[:N_PROMPTS]
    write_jsonl(ws.jsonl("ifeval", "test"),
                [{k: c[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")} for c in cases])
    rm_rows = []
    for c in cases[:8]:
        rm_rows.append({"key": str(c["key"]), "prompt": c["prompt"], "response": c["response"], "label": 1})
        rm_rows.append({"key": str(c["key"]), "prompt": c["prompt"] + " Use no commas.", "response": c["response"],
                        "label": 0})
    write_jsonl(ws.jsonl("rm", "test"), rm_rows)
    texts = [c["prompt"] + " " + c["response"] for c in _cases()] * 4
    arch = ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=400,
                      max_position_embeddings=256)
    tok = train_bpe_tokenizer(texts, vocab_size=400)
    policy = _untied_llama(arch, tok, seed=2)
    _save(policy, tok, ws.final / "policy")
    _save(policy, tok, ws.sft)
    _save(_untied_llama(arch, tok, seed=3), tok, root / "other_reference")
    wp = train_wordpiece_tokenizer(texts, vocab_size=400)
    _save(build_bert_classifier(ArchConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                           vocab_size=400, max_position_embeddings=512), wp, seed=0),
          wp, ws.final / "reward")
    (root / "params.yaml").write_text("", encoding="utf-8")
    return ws


def _run(ws: Workspace, *extra: str) -> int:
    return main(["--params", str(ws.root / "params.yaml"), "--workdir", str(ws.root), *OVERRIDES, "evaluate", *extra])


@pytest.fixture(scope="module")
def evaluated(tiny):
    assert _run(tiny) == 0
    metrics = json.loads(tiny.metrics_file("evaluate").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (tiny.reports / "eval_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    return tiny, metrics, rows


def test_metrics_file_has_the_contracted_keys(evaluated):
    ws, m, rows = evaluated
    for key in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc",
                "by_instruction", "by_category", "kl_to_sft", "rm_accuracy", "rm_auc", "mean_response_tokens"):
        assert key in m, key
    assert m["mode"] == "generate" and m["num_prompts"] == N_PROMPTS == len(rows)
    # workspace-relative: the metrics file is the same in every checkout
    assert m["input"] == "data/ifeval/test.jsonl" and m["model"] == "checkpoints/final/policy"
    assert m["rm_n"] == 16 and 0.0 <= m["rm_auc"] <= 1.0 and 0.0 <= m["rm_accuracy"] <= 1.0
    assert "skipped" not in m
    assert m["mean_response_tokens"] == pytest.approx(sum(r["response_tokens"] for r in rows) / len(rows))
    assert all(1 <= r["response_tokens"] <= 12 for r in rows)
    assert all(math.isfinite(r["rm_reward"]) for r in rows)
    assert sum(bool(r["response"]) for r in rows) >= N_PROMPTS // 2, "the tiny policy should produce text"
    # random text passes some instructions (no comma, forbidden word absent) and fails others (keyword present)
    assert 0.0 < m["inst_level_loose_acc"] < 1.0


def test_rm_rows_takes_whole_pairs(evaluated, tmp_path):
    import shutil

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(evaluated[0].root, ws.root)
    assert _run(ws, "-S", "evaluate.rm_rows=6", "-S", "evaluate.max_prompts=2") == 0
    m = json.loads(ws.metrics_file("evaluate").read_text(encoding="utf-8"))
    assert m["rm_n"] == 6 and m["num_prompts"] == 2  # 3 whole pairs of the 8


def _score_only(ws, rows, field: str, stem) -> dict:
    """Scoring-only mode (`gapo evaluate --responses`) on rows[i][field] as the responses; its report."""
    resp, out = stem.with_suffix(".jsonl"), stem.with_suffix(".json")
    resp.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r[field]}) + "\n" for r in rows),
                    encoding="utf-8")
    assert _run(ws, "--responses", str(resp), "--output", str(out)) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_kl_to_identical_sft_is_zero(evaluated):
    _, m, rows = evaluated
    assert m["kl_to_sft"] == pytest.approx(0.0, abs=1e-6)
    assert all(abs(r["kl_to_sft_seq"]) < 1e-5 for r in rows)


def test_generation_numbers_equal_scoring_only_on_the_same_responses(evaluated, tmp_path):
    ws, m, rows = evaluated
    scored = _score_only(ws, rows, "response", tmp_path / "scores")
    for key in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc",
                "by_instruction", "by_category", "num_instructions"):
        assert scored[key] == m[key], key


def test_greedy_responses_match_hf_generate(evaluated):
    from gapo.models.loading import load_policy
    from gapo.models.prompting import decode_response, encode_prompt, stop_token_ids

    ws, _, rows = evaluated
    model, tok = load_policy(ws.final / "policy")
    for r in rows[:4]:
        ids = torch.tensor([encode_prompt(r["prompt"], tok)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                             eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
        assert decode_response(out[0, ids.size(1):].tolist(), tok) == r["response"]


def test_token_kl_golden_value():
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    p = torch.zeros(1, 1, 2)
    q = torch.log(torch.tensor([[[1.0, 3.0]]]))
    assert ev.token_kl(p, q).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert ev.token_kl(q, q).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_per_row_matches_direct_computation(tiny):
    from gapo.models.loading import load_policy
    from gapo.models.prompting import encode_prompt, pad_token_id, stop_token_ids
    from gapo.train.sampler import sample

    policy, tok = load_policy(tiny.final / "policy")
    ref, _ = load_policy(tiny.root / "other_reference")
    prompts = [c["prompt"] for c in _cases()[:3]]
    s = sample(policy, [encode_prompt(p, tok) for p in prompts], 6, stop_token_ids(tok), pad_token_id(tok),
               greedy=True)
    means, sums = ev.kl_per_row(policy, ref, s, micro_batch=2)
    assert all(x > 0 for x in means)
    for j, p in enumerate(prompts):  # unpadded, one row at a time, plain full-sequence forward
        prompt_ids = encode_prompt(p, tok)
        n = int(s.response_lengths[j])
        seq = torch.tensor([prompt_ids + s.response_ids[j, :n].tolist()])
        with torch.no_grad():
            lp = policy(seq).logits[0, len(prompt_ids) - 1:-1]
            lq = ref(seq).logits[0, len(prompt_ids) - 1:-1]
        kl = (lp.log_softmax(-1).exp() * (lp.log_softmax(-1) - lq.log_softmax(-1))).sum(-1)
        assert sums[j] == pytest.approx(float(kl.sum()), rel=1e-4, abs=1e-6)
        assert means[j] == pytest.approx(float(kl.mean()), rel=1e-4, abs=1e-6)


def test_missing_policy_is_one_line_error(tiny, capsys):
    rc = _run(tiny, "-S", f"evaluate.model={tiny.root / 'nope'}")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "nope" in err and "no such directory" in err


def test_hf_dir_from_mlflow_transformers_layout(tmp_path):
    local = tmp_path / "dl"
    (local / "model").mkdir(parents=True)
    (local / "components" / "tokenizer").mkdir(parents=True)
    (local / "model" / "config.json").write_text("{}")
    (local / "model" / "model.safetensors").write_bytes(b"w")
    (local / "components" / "tokenizer" / "tokenizer.json").write_text("{}")
    out = ev.hf_dir_from_mlflow_model(local, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    (local / "config.json").write_text("{}")
    assert ev.hf_dir_from_mlflow_model(local, tmp_path / "hf2") == local
    from gapo.errors import ModelError

    (tmp_path / "pyfunc_only").mkdir()
    (tmp_path / "pyfunc_only" / "MLmodel").write_text("flavors: {}")
    with pytest.raises(ModelError, match="neither config.json nor model/config.json"):
        ev.hf_dir_from_mlflow_model(tmp_path / "pyfunc_only", tmp_path / "x")


@pytest.mark.slow  # MLflow's sqlite store set-up and log_model: about a minute on a shared 2-core machine
def test_policy_from_registry_alias(evaluated, tmp_path, monkeypatch, capsys):
    """-S evaluate.model=models:/name@alias: the transformers-flavour model from the registry gives the same
    responses as the checkpoint directory it was logged from."""
    import mlflow

    from gapo.models.loading import load_policy

    ws, m, rows = evaluated
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    mlflow.set_experiment("eval-test")
    model, tok = load_policy(ws.final / "policy")
    with mlflow.start_run():
        info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tok}, name="policy",
                                             task="text-generation", registered_model_name="tiny-policy",
                                             pip_requirements=["mlflow"])
    mlflow.MlflowClient().set_registered_model_alias("tiny-policy", "champion", info.registered_model_version)
    out, samples = tmp_path / "eval.json", tmp_path / "samples.jsonl"
    assert _run(ws, "-S", "evaluate.model=models:/tiny-policy@champion", "--output", str(out),
                "--samples", str(samples)) == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got["model"] == "models:/tiny-policy@champion"
    reg_rows = [json.loads(x) for x in samples.read_text(encoding="utf-8").splitlines()]
    assert [r["response"] for r in reg_rows] == [r["response"] for r in rows]
    assert got["prompt_level_loose_acc"] == m["prompt_level_loose_acc"]
    capsys.readouterr()
    rc = _run(ws, "-S", "evaluate.model=models:/tiny-policy@nosuchalias", "--output", str(out))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: policy 'models:/tiny-policy@nosuchalias': cannot download"), err


# ------------------------------------------------------------------------------------ paired comparison with SFT
def test_vs_sft_block_with_an_identical_sft(evaluated):
    """checkpoints/sft holds the final policy's weights: the same greedy responses, every difference 0, p = 1."""
    ws, m, rows = evaluated
    vs = m["vs_sft"]
    assert vs["reference"] == "checkpoints/sft" and vs["n_prompts"] == N_PROMPTS
    assert vs["n_instructions"] == m["num_instructions"] and vs["resamples"] == 10_000
    for key in ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc"):
        cell = vs[key]
        assert cell["final"] == cell["sft"] == pytest.approx(m[key]), key
        assert cell["delta"] == cell["ci95_low"] == cell["ci95_high"] == 0.0 and cell["p_bootstrap"] == 1.0
    assert vs["prompt_level_strict_acc"]["p_mcnemar"] == 1.0 and vs["prompt_level_strict_acc"]["final_only"] == 0
    assert vs["mean_response_tokens"]["delta"] == 0.0
    assert vs["mean_response_tokens"]["final"] == pytest.approx(m["mean_response_tokens"])
    assert set(vs["by_instruction"]) == set(m["by_instruction"])
    assert all(r["sft_response"] == r["response"] for r in rows)
    assert (ws.reports / "paired_vs_sft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # MLflow gets it flattened under one prefix (gapo.tracking.runs.numeric_metrics)
    from gapo.tracking.runs import numeric_metrics

    flat = numeric_metrics(m)
    assert flat["vs_sft.prompt_level_strict_acc.delta"] == 0.0 and "vs_sft.prompt_level_strict_acc.p_mcnemar" in flat


@pytest.fixture(scope="module")
def evaluated_other_sft(tiny, tmp_path_factory):
    """The same workspace with checkpoints/sft replaced by a policy with other weights."""
    import shutil

    ws = Workspace(tmp_path_factory.mktemp("evalws_other_sft") / "ws")
    shutil.copytree(tiny.root, ws.root)
    shutil.rmtree(ws.sft)
    shutil.copytree(tiny.root / "other_reference", ws.sft)
    assert _run(ws, "-S", "evaluate.paired_resamples=2000") == 0
    metrics = json.loads(ws.metrics_file("evaluate").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (ws.reports / "eval_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    return ws, metrics, rows


def test_vs_sft_block_with_another_sft(evaluated, evaluated_other_sft, tmp_path):
    from gapo.eval.paired import compare

    _, same, same_rows = evaluated
    ws, m, rows = evaluated_other_sft
    vs = m["vs_sft"]
    # the final policy's side is unchanged by the choice of SFT; the SFT side is the other policy's
    assert [r["response"] for r in rows] == [r["response"] for r in same_rows]
    assert m["prompt_level_strict_acc"] == same["prompt_level_strict_acc"] == vs["prompt_level_strict_acc"]["final"]
    assert [r["sft_response"] for r in rows] != [r["response"] for r in rows]
    assert vs["resamples"] == 2000 and m["kl_to_sft"] > 0
    # the SFT numbers equal scoring-only mode on the SFT responses
    sft_scores = _score_only(ws, rows, "sft_response", tmp_path / "sft_scores")
    for key in ("prompt_level_strict_acc", "prompt_level_loose_acc", "inst_level_strict_acc", "inst_level_loose_acc"):
        assert vs[key]["sft"] == pytest.approx(sft_scores[key]), key
        assert vs[key]["delta"] == pytest.approx(m[key] - sft_scores[key]), key
        assert vs[key]["ci95_low"] <= vs[key]["delta"] <= vs[key]["ci95_high"], key
    # and the whole block is gapo.eval.paired.compare of the per-prompt verdicts in eval_samples.jsonl
    def verdicts(prefix):
        return [{"key": r["key"], "instruction_id_list": r["instruction_id_list"],
                 "prompt_level_strict_acc": r[f"{prefix}follow_all_instructions_strict"],
                 "prompt_level_loose_acc": r[f"{prefix}follow_all_instructions_loose"],
                 "inst_level_strict_acc": r[f"{prefix}follow_instruction_list_strict"],
                 "inst_level_loose_acc": r[f"{prefix}follow_instruction_list_loose"]} for r in rows]
    again = compare(verdicts(""), verdicts("sft_"), [r["response_tokens"] for r in rows],
                    [r["sft_response_tokens"] for r in rows], resamples=2000, seed=1234)
    assert {"reference": "checkpoints/sft", **again} == vs


def test_no_compare_sft(evaluated, tmp_path):
    import shutil

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(evaluated[0].root, ws.root)
    (ws.reports / "paired_vs_sft.png").unlink()
    assert _run(ws, "-S", "evaluate.max_prompts=3", "--no-compare-sft") == 0
    m = json.loads(ws.metrics_file("evaluate").read_text(encoding="utf-8"))
    assert "vs_sft" not in m and "skipped" not in m and "kl_to_sft" in m
    assert (ws.reports / "paired_vs_sft.png").is_file()  # a figure saying why: the DVC output always exists
    rows = [json.loads(x) for x in (ws.reports / "eval_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "sft_response" not in rows[0]
    # without checkpoints/sft the comparison is named under `skipped`
    shutil.rmtree(ws.sft)
    assert _run(ws, "-S", "evaluate.max_prompts=3") == 0
    m = json.loads(ws.metrics_file("evaluate").read_text(encoding="utf-8"))
    assert set(m["skipped"]) == {"kl_to_sft", "vs_sft"}
    assert "vs_sft" not in m


def test_ifeval_generation_length_is_allowed():
    from gapo.config import load_params

    assert load_params(None, ["evaluate.max_new_tokens=1280"]).evaluate.max_new_tokens == 1280
