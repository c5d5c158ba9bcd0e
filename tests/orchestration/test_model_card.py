"""gapo.tracking.model_card: the card of a registered version (pure rendering, golden rows and structure), its
trimmed registry description, and the parameter count read from safetensors headers."""
from __future__ import annotations

import pytest

from gapo.tracking.model_card import registry_description, render_model_card, safetensors_parameters

BASE = {"spec": "builtin:smollm2", "parameters": 134_515_008, "architecture": "llama, 30 layers, 576 hidden",
        "weights": "safetensors, float32, trust_remote_code off", "notes": ["LoRA adapters merged into the weights"]}
TRAINING = {"method": "gapo", "adversarial rounds": 3}
LINEAGE = {"tags": {"git.commit": "abc123", "git.dirty": "false", "prefect.flow_run_id": "flow-1",
                    "prefect.flow_run_name": "brave-fox", "dvc.lock.sft": "11aa", "dvc.lock.prepare": "22bb",
                    "dvc.out.data/ifeval": "33cc.dir", "dvc.out.checkpoints/final/policy": "44dd.dir",
                    "eval.prompt_level_strict_acc": "0.3"},
           "params_md5": "55ee", "run_id": "run-1", "pipeline_run_id": "pipe-1"}


def cell(final, sft, delta, lo, hi, pb, pm=None):
    c = {"final": final, "sft": sft, "delta": delta, "ci95_low": lo, "ci95_high": hi, "p_bootstrap": pb}
    if pm is not None:
        c.update({"p_mcnemar": pm, "final_only": 3, "sft_only": 1})
    return c


EVALUATION = {
    "input": "data/ifeval/test.jsonl", "model": "checkpoints/final/policy", "num_prompts": 300,
    "num_instructions": 480, "prompt_level_strict_acc": 0.31, "kl_to_sft": 0.0123, "mean_response_tokens": 88.0,
    "rm_accuracy": 0.81, "rm_auc": 0.9, "rm_loss": 0.45, "rm_n": 200,
    "vs_sft": {"reference": "checkpoints/sft", "n_prompts": 300, "n_instructions": 480, "resamples": 10000,
               "seed": 1234,
               "prompt_level_strict_acc": cell(0.31, 0.28, 0.03, -0.005, 0.065, 0.09, 0.1094),
               "prompt_level_loose_acc": cell(0.35, 0.30, 0.05, 0.01, 0.09, 0.012, 0.0005),
               "inst_level_strict_acc": cell(0.52, 0.49, 0.03, 0.002, 0.058, 0.04),
               "inst_level_loose_acc": cell(0.55, 0.51, 0.04, 0.01, 0.07, 0.0001)}}


def card(role="policy", evaluation=EVALUATION, **kw):
    name = "gapo-policy" if role == "policy" else "gapo-reward-model"
    return render_model_card(role, name, "7", BASE, TRAINING, LINEAGE, evaluation,
                             kw.pop("gate", {"verdict": "promoted", "reasons": "no champion yet"}),
                             kw.pop("hack_gap", 0.12), **kw)


def test_policy_card_golden_rows():
    md = card()
    assert md.startswith("# gapo-policy version 7\n")
    assert ("| metric | final | SFT | Δ (pt) | 95% CI of Δ (pt) | p (bootstrap) | p (McNemar) |\n"
            "|---|---|---|---|---|---|---|\n"
            "| prompt-level strict | 31.0% | 28.0% | +3.0 | [-0.5, +6.5] | 0.090 | 0.109 |\n"
            "| prompt-level loose | 35.0% | 30.0% | +5.0 | [+1.0, +9.0] | 0.012 | <0.001 |\n"
            "| instruction-level strict | 52.0% | 49.0% | +3.0 | [+0.2, +5.8] | 0.040 | n/a |\n"
            "| instruction-level loose | 55.0% | 51.0% | +4.0 | [+1.0, +7.0] | <0.001 | n/a |\n") in md
    assert "n = 300 prompts, 480 instructions" in md and "10000 resamples, seed 1234" in md
    assert "- Base: `builtin:smollm2`\n- Parameters: 134.5 M (llama, 30 layers, 576 hidden)" in md
    assert "- Code: git `abc123`\n" in md and "- Params: md5 `55ee`" in md
    assert "- Prefect flow run: `flow-1` (brave-fox)" in md
    assert "| `data/ifeval` | `33cc.dir` |" in md and "| sft | `11aa` |" in md
    assert "eval.prompt_level_strict_acc" not in md  # only lineage tags make the lineage section
    # the strict CI holds 0: the card says the gain is not established; the hack gap is reported
    assert "not distinguishable from zero on 300 prompts (95% CI [-0.5, +6.5] pt)" in md
    assert "hack_gap (RM score vs verifier pass rate) was 0.12" in md
    assert "mlflow models serve -m models:/gapo-policy/7" in md and "arXiv 2503.20194" in md


def test_card_sections_in_order():
    for role in ("policy", "reward_model"):
        md = card(role)
        heads = [line for line in md.splitlines() if line.startswith("## ")]
        assert heads == ["## Base model", "## Training", "## Evaluation", "## Promotion gate at registration",
                         "## Known limits", "## Intended use", "## Lineage"], heads


def test_reward_model_card_has_rm_metrics_then_the_policy_table():
    md = card("reward_model")
    assert md.startswith("# gapo-reward-model version 7\n") and "reward model (encoder classifier)" in md
    assert "On 200 preferential-prompt test rows:" in md and "| pair accuracy | 0.81 |" in md and "| AUC | 0.9 |" in md
    assert md.index("| AUC |") < md.index("The policy trained against this reward model:") < md.index(
        "Held-out IFEval-format prompts") < md.index("| prompt-level strict | 31.0%")
    assert "not calibrated" in md and "`prompt` and `response` columns" in md


def test_card_without_evaluation_says_so():
    for role in ("policy", "reward_model"):
        md = card(role, evaluation=None, gate=None, hack_gap=None)
        assert "**Not evaluated yet.**" in md and "quality is unknown" in md
        assert "Not evaluated: nothing is known" in md and "## Promotion gate" not in md


def test_card_without_paired_comparison_gives_the_reason_and_the_final_numbers():
    ev = {k: v for k, v in EVALUATION.items() if k != "vs_sft"}
    ev["skipped"] = {"vs_sft": "no SFT checkpoint at checkpoints/sft", "rm_accuracy": "no reward model"}
    md = card(evaluation=ev)
    assert "No paired comparison with the SFT policy (no SFT checkpoint at checkpoints/sft)" in md
    assert "| prompt-level strict | 31.0% |" in md and "| prompt-level loose | – |" in md
    del ev["rm_accuracy"], ev["rm_auc"], ev["rm_loss"]
    assert "Reward-model accuracy was not measured (no reward model)" in card("reward_model", evaluation=ev)


def test_card_carries_no_credentials():
    lineage = {**LINEAGE, "tags": {**LINEAGE["tags"],
                                   "prefect.flow_run_name": "see https://alice:s3cret@prefect.example/runs/1"}}
    md = render_model_card("policy", "gapo-policy", "1", {**BASE, "spec": "https://bob:hunter2@hf.example/m"},
                           {}, lineage, None)
    assert "s3cret" not in md and "hunter2" not in md and "alice" not in md and "bob" not in md


def test_card_rejects_an_unknown_role():
    with pytest.raises(ValueError, match="role"):
        render_model_card("critic", "x", "1", BASE, {}, LINEAGE, None)


def test_registry_description_trims_at_a_section():
    md = card()
    assert registry_description(md) == md  # fits: whole
    short = registry_description(md, limit=1500)
    assert len(short) <= 1500 and short.startswith("# gapo-policy version 7")
    assert "README.md" in short and "1500-character" in short
    body = short[:short.index("\n\n*Trimmed")]
    assert md.startswith(body) and md[len(body):].lstrip("\n").startswith("## ")  # cut before a whole section


def test_safetensors_parameters_reads_headers(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"c": torch.zeros(2, 2, 2)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    assert safetensors_parameters(tmp_path) == 12 + 5 + 8
    assert safetensors_parameters(tmp_path / "none") is None
