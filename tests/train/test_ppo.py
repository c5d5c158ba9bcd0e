"""PPO on the tiny profile: experience layout, the RM reading decoded text, one PPO step lowering the policy loss,
NumericalError on NaN, and a 2-process torchrun run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.models import tiny_assets as ta

from gapo.errors import NumericalError
from gapo.io import read_jsonl


def make_gapo_workspace(root: Path, *overrides: str):
    """Tiny data + tiny base models; checkpoints/sft and checkpoints/rm_warmup are the (untrained) base models:
    the PPO and adversarial code only needs HF directories there, and skipping SFT keeps the tests fast."""
    ws, params = ta.tiny_workspace(root, *overrides)
    shutil.copytree(ws.policy_base, ws.sft)
    shutil.copytree(ws.reward_base, ws.rm_warmup)
    return ws, params


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_gapo_workspace(tmp_path_factory.mktemp("ppo"))


def build_models(ws, params):
    from gapo.models.critic import build_critic
    from gapo.models.loading import load_reward_model, load_tokenizer
    from gapo.train import engine as E
    from gapo.train.ppo import build_ppo_models

    torch.manual_seed(params.seed)
    critic = build_critic(params, ws.sft, ws.rm_warmup, load_tokenizer(ws.sft, params.models))
    rm, rm_tok = load_reward_model(ws.rm_warmup, params.models)
    return build_ppo_models(params, ws.sft, ws.sft, critic, E.build_inference_engine(rm, params), rm_tok)


def test_experience_layout_and_rm_reads_decoded_text(tiny):
    from gapo.models.prompting import decode_response
    from gapo.train.ppo import Where, collate_rollouts, make_experience, response_log_probs, response_values
    from gapo.train.reward import rm_score

    ws, params = tiny
    m = build_models(ws, params)
    rows = read_jsonl(ws.jsonl("ifeval", "train"))[:6]
    rollouts, stats = make_experience(m, rows, params, kl_coef=0.05, where=Where(round=1))
    assert len(rollouts) == 6 and 0.0 <= stats["pass_rate"] <= 1.0
    # the stored π_old / V_old are exactly what a fresh forward on each training micro-batch gives (ppo.autocast
    # included): the collation (left-padded prompt, right-padded response) and the shift-by-one slicing agree with
    # the sampler, and the micro-batches ppo_train uses are the ones π_old was computed in (ratio exactly 1)
    from gapo.train.ppo import forward_autocast

    micro = sorted({r.micro for r in rollouts})
    assert micro == list(range(len(micro))) and len(micro) == -(-6 // params.ppo.micro_train_batch_size)
    for mid in micro:
        part = [r for r in rollouts if r.micro == mid]
        b = collate_rollouts(part, m.tokenizer.pad_token_id)
        n = b["action_mask"].size(1)
        with torch.no_grad(), forward_autocast(params, m.device):
            logp, _ = response_log_probs(m.actor.module, b["sequences"], b["attention_mask"], n)
            values = response_values(m.critic.module, b["sequences"], b["attention_mask"], n)
        mask = b["action_mask"].bool()
        torch.testing.assert_close(logp.float()[mask], b["log_probs"][mask], atol=0, rtol=0)
        torch.testing.assert_close(values.float()[mask], b["values"][mask], atol=0, rtol=0)
    # the reward is the RM's score of the DECODED response in the RM's own tokenizer
    texts = [decode_response(r.response_ids.tolist(), m.tokenizer) for r in rollouts]
    expected = rm_score(m.reward, m.reward_tokenizer, [r["prompt"] for r in rows], texts, params)
    assert [r.score for r in rollouts] == pytest.approx(expected.tolist(), abs=1e-5)
    # reward.score: the sigmoid probability or the raw logit of the same RM output
    logits = rm_score(m.reward, m.reward_tokenizer, [r["prompt"] for r in rows], texts,
                      params.model_copy(update={"reward": params.reward.model_copy(update={"score": "logit"})}))
    torch.testing.assert_close(expected, logits if params.reward.score == "logit" else logits.sigmoid())
    # GAE returns = advantages + values on every real token
    for r in rollouts:
        torch.testing.assert_close(r.returns, r.advantages + r.values)


def test_one_ppo_step_lowers_the_policy_loss(tiny):
    from gapo.train.ppo import Where, make_experience, policy_loss_on, ppo_train, whiten_advantages

    ws, params = tiny
    params = params.model_copy(deep=True)
    params.ppo.actor_learning_rate = 1e-3
    m = build_models(ws, params)
    rows = read_jsonl(ws.jsonl("ifeval", "train"))[:8]
    rollouts, _ = make_experience(m, rows, params, kl_coef=0.01, where=Where(round=1))
    whiten_advantages(rollouts)
    adv = torch.cat([r.advantages for r in rollouts])
    assert abs(float(adv.mean())) < 1e-5 and abs(float(adv.std(unbiased=False)) - 1) < 1e-3
    before = policy_loss_on(m, rollouts, params)
    # at ρ = 1 the clipped loss is −mean over sequences of the mean advantage
    expected = -sum(float(r.advantages.mean()) for r in rollouts) / len(rollouts)
    assert before == pytest.approx(expected, abs=1e-4)
    where = Where(round=1)
    stats = ppo_train(m, rollouts, params, where, seed=0)  # train_batch_size 8 = the whole batch: one step
    assert where.step == 1 and math_finite(stats["value_loss"])
    after = policy_loss_on(m, rollouts, params)
    assert after < before - 1e-4, (before, after)


def test_verifier_reward_source_scores_plus_minus_one(tiny):
    from gapo.config import ConfigError
    from gapo.models.prompting import decode_response
    from gapo.train.ppo import Where, make_experience, verifier_verdicts

    ws, params = tiny
    oracle = params.model_copy(update={"ppo": params.ppo.model_copy(update={"reward_source": "verifier"})})
    m = build_models(ws, oracle)
    head = [p for n, p in m.reward.named_parameters() if "classifier" in n and n.endswith("weight")][0]
    with torch.no_grad():
        head.fill_(float("nan"))  # the RM is not consulted at all
    rows = read_jsonl(ws.jsonl("ifeval", "train"))[:6]
    rollouts, stats = make_experience(m, rows, oracle, kl_coef=0.01, where=Where(round=1))
    texts = [decode_response(r.response_ids.tolist(), m.tokenizer) for r in rollouts]
    expected = [1.0 if v else -1.0 for v in verifier_verdicts(rows, texts)]
    assert [r.score for r in rollouts] == expected
    assert stats["reward"] == pytest.approx(sum(expected) / len(expected))
    unchecked = [{k: v for k, v in rows[0].items() if k != "instruction_id_list"}]
    with pytest.raises(ConfigError, match="reward_source=verifier"):
        make_experience(m, unchecked, oracle, kl_coef=0.01, where=Where(round=1))


def test_missing_eos_penalty_lowers_only_unstopped_scores(tiny):
    from gapo.models.prompting import decode_response, stop_token_ids
    from gapo.train.ppo import Where, make_experience, verifier_verdicts

    ws, params = tiny
    ppo = params.ppo.model_copy(update={"reward_source": "verifier", "missing_eos_penalty": 0.5,
                                        "generate_max_len": 4})
    oracle = params.model_copy(update={"ppo": ppo})
    m = build_models(ws, oracle)
    rows = read_jsonl(ws.jsonl("ifeval", "train"))[:6]
    rollouts, stats = make_experience(m, rows, oracle, kl_coef=0.01, where=Where(round=1))
    stops = set(stop_token_ids(m.tokenizer))
    stopped = [int(r.response_ids[-1]) in stops for r in rollouts]
    assert not all(stopped)  # 4 new tokens: most rows hit the cap, so the penalty is exercised
    texts = [decode_response(r.response_ids.tolist(), m.tokenizer) for r in rollouts]
    verdicts = verifier_verdicts(rows, texts)
    assert [r.score for r in rollouts] == [(1.0 if v else -1.0) - (0.0 if s else 0.5)
                                           for v, s in zip(verdicts, stopped)]
    assert stats["stopped"] == pytest.approx(sum(stopped) / len(stopped))


def math_finite(x: float) -> bool:
    import math

    return math.isfinite(x)


def test_nan_reward_raises_numerical_error_naming_round_and_step(tiny):
    from gapo.train.ppo import Where, make_experience

    ws, params = tiny
    m = build_models(ws, params)
    head = [p for n, p in m.reward.named_parameters() if "classifier" in n and n.endswith("weight")][0]
    with torch.no_grad():
        head.fill_(float("nan"))
    rows = read_jsonl(ws.jsonl("ifeval", "train"))[:2]
    with pytest.raises(NumericalError, match=r"adversarial round 3 ppo step 7: reward-model score is not finite"):
        make_experience(m, rows, params, kl_coef=0.01, where=Where(round=3, step=7))


def test_nan_loss_raises_numerical_error(tiny):
    from gapo.train.ppo import Where, make_experience, ppo_train

    ws, params = tiny
    m = build_models(ws, params)
    rows = read_jsonl(ws.jsonl("ifeval", "train"))[:8]
    rollouts, _ = make_experience(m, rows, params, kl_coef=0.01, where=Where(round=2))
    rollouts[0].advantages[0] = float("inf")
    with pytest.raises(NumericalError, match=r"adversarial round 2 ppo step 1: policy loss is not finite"):
        ppo_train(m, rollouts, params, Where(round=2), seed=0)


def test_batch_sizes_are_checked():
    from gapo.config import ConfigError
    from gapo.train.ppo import check_batch_sizes

    params = ta.tiny_params("ppo.train_batch_size=6", "ppo.micro_train_batch_size=4")
    with pytest.raises(ConfigError, match="train_batch_size"):
        check_batch_sizes(params, 1)
    with pytest.raises(ConfigError, match="processes"):
        check_batch_sizes(ta.tiny_params(), 3)


# What each rank runs: one PPO iteration against the fixed warm-up RM (ppo.run_ppo_smoke), rank 0 writes the summary.
PPO_SMOKE = """
import sys
from pathlib import Path

from gapo.config import load_params
from gapo.io import write_json
from gapo.paths import Workspace
from gapo.train.engine import is_main
from gapo.train.ppo import run_ppo_smoke

params = load_params(None, ["runtime.threads=1"], "tiny")
summary = run_ppo_smoke(params, Workspace(Path(sys.argv[1]).resolve()), 1)
if is_main():
    write_json(sys.argv[2], summary)
"""


@pytest.mark.slow
def test_two_process_torchrun_ppo_step(tiny, tmp_path):
    """`torchrun --nproc_per_node 2` of one PPO iteration: 2 ranks (gloo on CPU), 4 prompts each, one PPO step with
    gradients all-reduced by DeepSpeed and advantages whitened over both ranks."""
    from gapo.train.engine import launcher_env

    ws, _ = tiny
    summary, script = tmp_path / "summary.json", tmp_path / "ppo_smoke.py"
    script.write_text(PPO_SMOKE)
    env = launcher_env()
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE"):
        env.pop(k, None)
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + os.getpid() % 300), str(script), str(ws.root), str(summary)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(summary.read_text())
    assert out["world_size"] == 2 and out["steps"] == 1
    assert math_finite(out["last"]["policy_loss"]) and math_finite(out["last"]["value_loss"])


def test_decode_threads_sets_and_restores_the_thread_count():
    from gapo.train.rollout import decode_threads

    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with decode_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with decode_threads(0):  # 0 = runtime.threads, i.e. unchanged
            assert torch.get_num_threads() == 2
        with decode_threads(8):  # never more than the process was given
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)
