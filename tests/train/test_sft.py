"""Warm-up SFT on the tiny profile; a policy and an RM with different vocabularies training side by side; a
2-process DeepSpeed run under torchrun."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.models import tiny_assets as ta

from gapo.models.loading import load_policy, load_reward_model
from gapo.train import sft


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ta.tiny_workspace(tmp_path_factory.mktemp("ws"))


def test_length_grouped_batches_cover_every_example_once():
    lengths = [(i * 37) % 101 for i in range(250)]
    batches = sft.length_grouped_batches(lengths, 16, seed=3, group=4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(250)) and all(len(b) <= 16 for b in batches)
    assert batches != sft.length_grouped_batches(lengths, 16, seed=4, group=4)  # the seed shuffles
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 50  # grouped: far below the ~95 of random batches of 16 over lengths 0..100


def test_collate_right_pads_and_masks_labels():
    batch = sft.collate_sft([([1, 2, 3], [-100, 2, 3]), ([4], [4])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_completion_loss_ignores_prompt_tokens(tiny):
    """Changing prompt-token labels' targets must not matter; the loss is the mean over response tokens."""
    ws, params = tiny
    model, tok = load_policy(ws.policy_base, params.models)
    ids, labels = sft.tokenize_sft_rows([{"prompt": "Describe a mug.", "completion": "A mug."}], tok, 64)[0]
    batch = sft.collate_sft([(ids, labels)], tok.pad_token_id)
    loss, n = sft.completion_loss(model, batch)
    n_resp = sum(1 for y in labels if y != -100)
    assert n == n_resp
    logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
    tgt = torch.tensor(labels[1:])
    keep = tgt != -100
    manual = torch.nn.functional.cross_entropy(logits[keep], tgt[keep])
    torch.testing.assert_close(loss, manual)


def test_sft_loss_falls_and_outputs_are_written(tiny):
    ws, _ = tiny
    params = ta.tiny_params("sft.max_steps=30", "sft.eval_examples=32", "sft.log_every=10")
    out = sft.run_sft(params, ws)
    m = json.loads(ws.metrics_file("sft").read_text())
    assert m["eval_loss"] < m["eval_loss_before"] - 0.5, m
    assert m["train_loss_final"] < m["train_loss_first"] - 0.5, m
    # batches at the end of a length-sorted window may be short: at most micro_batch_size per step
    assert m["steps"] == 30 and 25 * 16 <= m["examples_seen"] <= 30 * params.sft.optim.micro_batch_size
    rows = (ws.plots / "sft_loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr" and len(rows) == 31
    model, _ = load_policy(ws.sft, params.models)
    base, _ = load_policy(ws.policy_base, params.models)
    assert not torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert len(out["samples"]) == 3 and all(isinstance(s, str) for s in out["samples"])


def test_policy_and_rm_with_different_vocabularies_train_together(tiny):
    """One SFT step on the policy and one RM step on the policy's decoded samples, re-tokenised by the RM."""
    from gapo.config import OptimConfig
    from gapo.io import read_jsonl
    from gapo.models.prompting import decode_response, encode_prompt, stop_token_ids
    from gapo.train.engine import build_train_engine
    from gapo.train.reward import rm_score, train_reward_model
    from gapo.train.sampler import sample

    ws, params = tiny
    policy, ptok = load_policy(ws.policy_base, params.models)
    rm, rtok = load_reward_model(ws.reward_base, params.models)
    assert ptok.get_vocab() != rtok.get_vocab()
    text = "Answer with at least 40 words."
    assert ptok(text, add_special_tokens=False)["input_ids"] != rtok(text, add_special_tokens=False)["input_ids"]
    rows = read_jsonl(ws.jsonl("sft", "train"))[:8]
    before_p = policy.model.embed_tokens.weight.clone()
    before_r = rm.classifier.weight.clone()

    engine = build_train_engine(policy, params, OptimConfig(learning_rate=1e-3, micro_batch_size=8,
                                                            warmup_ratio=0.0), 1)
    batch = sft.collate_sft(sft.tokenize_sft_rows(rows, ptok, 256), ptok.pad_token_id)
    loss, _ = sft.completion_loss(engine, batch)
    engine.backward(loss)
    engine.step()

    prompts = [encode_prompt(r["prompt"], ptok, 128) for r in rows]
    out = sample(engine.module, prompts, 12, stop_token_ids(ptok), ptok.pad_token_id,
                 generator=torch.Generator().manual_seed(0))
    fakes = [decode_response(ids, ptok) for ids in out.response_ids.tolist()]
    rm_rows = [{"key": f"g{i}", "prompt": r["prompt"], "response": f, "label": 0} for i, (r, f) in
               enumerate(zip(rows, fakes))]
    rm_rows += [{"key": f"r{i}", "prompt": r["prompt"], "response": r["completion"], "label": 1}
                for i, r in enumerate(rows)]
    rm_engine, curve = train_reward_model(rm, rtok, rm_rows, params, epochs=1.0)
    assert len(curve) >= 1 and all(torch.isfinite(torch.tensor(c[1])) for c in curve)
    scores = rm_score(rm_engine, rtok, [r["prompt"] for r in rows], fakes, params)
    assert scores.shape == (8,) and torch.isfinite(scores).all()
    if params.reward.score == "prob":
        assert ((scores > 0) & (scores < 1)).all()
    assert not torch.equal(policy.model.embed_tokens.weight, before_p)
    assert not torch.equal(rm_engine.module.classifier.weight, before_r)


def _free_port() -> int:
    from gapo.train.engine import _free_port

    return _free_port()


@pytest.mark.slow
def test_two_process_sft_under_torchrun(tiny, tmp_path):
    """`gapo sft` with deepspeed.launcher=torchrun relaunches itself as 2 ranks (gloo, ZeRO-2) and finishes."""
    import shutil

    ws, _ = tiny
    root = tmp_path / "ws2"
    shutil.copytree(ws.data, root / "data")
    shutil.copytree(ws.models, root / "models")
    cmd = [sys.executable, "-m", "gapo.cli", "--profile", "tiny", "--workdir", str(root), "sft",
           "-S", "deepspeed.launcher=torchrun", "-S", "deepspeed.num_processes=2", "-S", "deepspeed.zero_stage=2",
           "-S", f"deepspeed.master_port={_free_port()}", "-S", "sft.max_steps=4", "-S", "sft.eval_examples=8",
           "-S", "ppo.generate_max_len=8", "-S", "runtime.threads=1"]
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GAPO_SINGLE_PROCESS_ENV")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((root / "metrics" / "sft.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 4
    assert 4 * 2 < m["examples_seen"] <= 4 * 2 * ta.tiny_params().sft.optim.micro_batch_size
    model, _ = load_policy(root / "checkpoints" / "sft", ta.tiny_params().models)
    assert model.config.model_type == "llama"
