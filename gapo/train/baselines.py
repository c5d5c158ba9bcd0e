"""The paper's baselines on the same data, engines and outputs as GAPO (docs/baselines.md).

`method` (params) picks what the `adversarial` stage trains; every method starts from checkpoints/sft and writes
checkpoints/final/{policy,reward} (+ final.json), metrics/adversarial.json and plots/adversarial.csv, so `evaluate`
and `register` run unchanged:

- `sft`: no preference training; final policy = the SFT policy.
- `ppo`: the paper's PPO baseline. A DECODER reward model (the SFT policy's architecture and weights with a scalar
  head, `AutoModelForSequenceClassification`) is trained Bradley–Terry on the pairs, then frozen, and the policy is
  trained by gapo.train.ppo against it for the same PPO iterations GAPO runs (rounds × episodes, same prompts).
  `baselines.ppo_reward: encoder` runs gapo.train.adversarial's PPO against the warm-up encoder RM instead.
- `dpo` / `kto` (trl.DPOTrainer / trl.KTOTrainer), `orpo` (trl.experimental.orpo), `simpo` (trl.experimental.cpo
  with loss_type="simpo"), each inside DeepSpeed: the TRL trainers get the `deepspeed=` dict built by
  gapo.train.engine.ds_config from the same `deepspeed` params as every other trained model.

`paradigm` picks the pairs. A pair is `{key, prompt_chosen, prompt_rejected, chosen, rejected}`:
- PR (preferential response, data/pr): one prompt, two responses (prompt_chosen == prompt_rejected).
- PP (preferential prompt, data/pp): one response R, two prompts: (chosen_prompt, R) is preferred to
  (rejected_prompt, R). DPO/ORPO/SimPO losses only compare two sequence log-likelihoods, so nothing in them needs the
  prompts to be equal: we feed each side its own prompt (`rejected_prompt_ids`), i.e. the DPO implicit reward
  r(x, y) = β log π(y|x)/π_ref(y|x) is compared across (x_w, R) and (x_l, R). KTO is unpaired: (x_w, R, desirable)
  and (x_l, R, undesirable). The decoder RM scores (x, R) pairs Bradley–Terry either way.
The final reward model handed to evaluate/register is the warm-up ENCODER RM for every baseline (evaluate's RM
metrics then describe the same model for all of them); the PPO baseline's decoder RM is kept in
checkpoints/final/reward_decoder and its pairwise accuracy is in metrics/adversarial.json.

API
- pair views of the data (`preference_pairs`, `unpaired_rows`, `rm_rows`, `sample_pairs`): gapo.data.preferences
- `encode_pair(pair, tokenizer, max_length)` -> {prompt_ids, chosen_ids, rejected_prompt_ids, rejected_ids}
- `paradigm_workspace(params, ws)` -> Workspace whose data/rm is the chosen paradigm's classification view
- `pair_scores(model, tokenizer, pairs, max_length, device)` -> (chosen, rejected) decoder-RM scores;
  `pairwise_accuracy(model, tokenizer, pairs, params)`; `train_decoder_rm(params, ws, pairs)` (Bradley-Terry, the
  `DecoderRM` kind of gapo.models.reward_model)
- `is_baseline(params)`; `run_baseline(params, ws)` / `run_baseline_stage(params, ws)`
"""
from __future__ import annotations

import dataclasses
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from gapo.config import ConfigError, Params
from gapo.data.preferences import preference_pairs, rm_rows, sample_pairs, unpaired_rows
from gapo.errors import DataError
from gapo.models.reward_model import DECODER, collate
from gapo.paths import Workspace
from gapo.runtime import bars_off

TRL_METHODS = ("dpo", "kto", "orpo", "simpo")
BASELINES = ("sft", "ppo", *TRL_METHODS)


def encode_pair(pair: dict, tokenizer, max_length: int) -> dict:
    """Token ids of both sides with the SFT convention (gapo.models.prompting.encode_sft_example: formatted prompt,
    response + EOS, prompt cut at its start, response keeps at least half the window), so the preference losses
    score exactly the sequences SFT trained on and PPO samples."""
    from gapo.models.prompting import encode_sft_example

    out = {}
    for side, prompt, text in (("chosen", pair["prompt_chosen"], pair["chosen"]),
                               ("rejected", pair["prompt_rejected"], pair["rejected"])):
        ids, labels = encode_sft_example(prompt, text, tokenizer, max_length)
        n_prompt = sum(1 for x in labels if x == -100)
        out[f"{side}_prompt_ids"], out[f"{side}_ids"] = ids[:n_prompt], ids[n_prompt:]
    return {"prompt_ids": out["chosen_prompt_ids"], "chosen_ids": out["chosen_ids"],
            "rejected_prompt_ids": out["rejected_prompt_ids"], "rejected_ids": out["rejected_ids"]}


# ============================================================================================ paradigm view
def paradigm_workspace(params: Params, ws: Workspace) -> Workspace:
    """`ws` for PP; for PR the same workspace with `rm_data="rm_pr"` (its jsonl("rm") is data/rm_pr), (re)written
    here from data/pr (a derived, cheap, deterministic file: the rows of data/pr in the data/rm schema)."""
    from gapo.io import write_jsonl, read_jsonl

    if params.paradigm == "pp" or ws.rm_data == "rm_pr":
        return ws
    for split in ("train", "validation", "test"):
        src = ws.jsonl("pr", split)
        if src.is_file():
            write_jsonl(ws.jsonl("rm_pr", split), rm_rows(preference_pairs(read_jsonl(src), "pr")))
    return dataclasses.replace(ws, rm_data="rm_pr")


def load_pairs(params: Params, ws: Workspace, split: str) -> list[dict]:
    from gapo.io import read_jsonl

    kind = params.paradigm
    path = ws.jsonl(kind, split)
    if not path.is_file():
        raise DataError(f"{path}: not found (run `gapo prepare` first)")
    return preference_pairs(read_jsonl(path), kind)


def is_baseline(params: Params) -> bool:
    """True when the adversarial stage must run a baseline of this module (not GAPO, not encoder-RM PPO)."""
    if params.method == "gapo":
        return False
    if params.method == "ppo":
        return params.baselines.ppo_reward == "decoder"
    return True


# ============================================================================================ DeepSpeed for TRL
def trainer_deepspeed_config(params: Params, optim) -> dict:
    """gapo.train.engine.ds_config (ZeRO stage, precision, offload, optimizer choice) with the batch / clipping keys
    left to the HF Trainer ("auto": filled from its TrainingArguments, which we set from the same params)."""
    from gapo.train.engine import ds_config

    cfg = ds_config(params.deepspeed, optim, world=1)
    for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
              "gradient_clipping"):
        cfg[k] = "auto"
    if "optimizer" in cfg:  # torch_adam false: DeepSpeed's own AdamW with the Trainer's hyper-parameters
        cfg["optimizer"]["params"] = {"lr": "auto", "betas": "auto", "weight_decay": "auto"}
    return cfg


def num_steps(n_examples: int, params: Params, per_example: int = 1) -> int:
    b = params.baselines
    if b.max_steps:
        return b.max_steps
    per_step = b.optim.micro_batch_size * b.optim.gradient_accumulation_steps
    return max(1, math.ceil(n_examples * per_example * b.epochs / per_step))


def training_kwargs(params: Params, out_dir: Path, steps: int) -> dict:
    """TrainingArguments fields shared by the four TRL trainers, from params (same knobs as our engines)."""
    b, o = params.baselines, params.baselines.optim
    return dict(
        output_dir=str(out_dir), per_device_train_batch_size=o.micro_batch_size,
        gradient_accumulation_steps=o.gradient_accumulation_steps, learning_rate=o.learning_rate,
        weight_decay=o.weight_decay, adam_beta1=o.adam_betas[0], adam_beta2=o.adam_betas[1],
        max_grad_norm=params.deepspeed.gradient_clipping, max_steps=steps,
        # floor, not ceil: HF's warm-up starts at LR 0, so a 1-2 step run with one warm-up step would not move
        warmup_steps=int(o.warmup_ratio * steps), lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": o.min_lr_ratio}, logging_steps=max(1, min(b.log_every, steps)), save_strategy="no",
        report_to="none", seed=params.seed, data_seed=params.seed, bf16=params.deepspeed.precision == "bf16",
        dataloader_num_workers=0, disable_tqdm=False, deepspeed=trainer_deepspeed_config(params, o),
        gradient_checkpointing=params.models.gradient_checkpointing, max_length=b.max_length,
        remove_unused_columns=False,
    )


# ============================================================================================ TRL trainers
def _per_side_collator(pad_token_id: int):
    """DPO collator taking each side's own prompt (`rejected_prompt_ids`, default: the shared `prompt_ids`)."""
    import torch

    def collate(examples: list[dict]) -> dict:
        seqs, masks = [], []
        for side in ("chosen", "rejected"):
            for e in examples:
                prompt = e["prompt_ids"]
                if side == "rejected" and e.get("rejected_prompt_ids") is not None:
                    prompt = e["rejected_prompt_ids"]
                seqs.append(list(prompt) + list(e[f"{side}_ids"]))
                masks.append([0] * len(prompt) + [1] * len(e[f"{side}_ids"]))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        comp = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, m) in enumerate(zip(seqs, masks)):
            ids[i, :len(s)] = torch.tensor(s)
            attn[i, :len(s)] = 1
            comp[i, :len(m)] = torch.tensor(m)
        return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}

    return collate


def _dpo_trainer(policy, ref, tok, dataset, params: Params, out_dir: Path, steps: int, peft_config=None):
    from trl import DPOConfig, DPOTrainer

    class PerSidePromptDPOTrainer(DPOTrainer):
        """DPOTrainer on our pre-tokenised pairs (SFT's token convention), each side with its own prompt."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _set_signature_columns_if_needed(self):
            self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_prompt_ids", "rejected_ids"]

    args = DPOConfig(**training_kwargs(params, out_dir, steps), beta=params.baselines.beta, loss_type=["sigmoid"])
    from gapo.models.prompting import pad_token_id

    return PerSidePromptDPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset,
                                   processing_class=tok, data_collator=_per_side_collator(pad_token_id(tok)),
                                   peft_config=peft_config)


def _kto_trainer(policy, ref, tok, dataset, params: Params, out_dir: Path, steps: int, peft_config=None):
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(**training_kwargs(params, out_dir, steps), beta=params.baselines.beta)
    return KTOTrainer(model=policy, ref_model=ref, args=args, train_dataset=dataset, processing_class=tok,
                      peft_config=peft_config)


def _odds_trainer(method: str, policy, tok, dataset, params: Params, out_dir: Path, steps: int, peft_config=None):
    """ORPO (trl.experimental.orpo) or SimPO (trl.experimental.cpo, loss_type="simpo", cpo_alpha=0): reference-free,
    tokenised by our `encode_pair` through an overridden `tokenize_row` (per-side prompts, SFT's convention)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        if method == "orpo":
            from trl.experimental.orpo import ORPOConfig as Cfg, ORPOTrainer as Base
        else:
            from trl.experimental.cpo import CPOConfig as Cfg, CPOTrainer as Base
    kw = training_kwargs(params, out_dir, steps)
    kw.pop("max_length")
    b = params.baselines
    if method == "orpo":
        args = Cfg(**kw, max_length=b.max_length, beta=b.orpo_lambda)
    else:
        args = Cfg(**kw, max_length=b.max_length, loss_type="simpo", cpo_alpha=0.0,
                   beta=b.simpo_beta, simpo_gamma=b.simpo_gamma)
    max_length = b.max_length

    class PerSidePromptTrainer(Base):
        def tokenize_row(self, feature, model=None) -> dict:
            enc = encode_pair(feature, self.processing_class, max_length)
            out = {"prompt_input_ids": enc["prompt_ids"], "prompt_attention_mask": [1] * len(enc["prompt_ids"])}
            for side, prompt in (("chosen", enc["prompt_ids"]), ("rejected", enc["rejected_prompt_ids"])):
                ids = prompt + enc[f"{side}_ids"]
                out[f"{side}_input_ids"] = ids
                out[f"{side}_attention_mask"] = [1] * len(ids)
                out[f"{side}_labels"] = [-100] * len(prompt) + enc[f"{side}_ids"]
            return out

    return PerSidePromptTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tok,
                                peft_config=peft_config)


def _loss_curve(trainer) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h["loss"])) for h in trainer.state.log_history if "loss" in h and "step" in h]


def _last_logged(trainer, *names: str) -> dict:
    out = {}
    for h in trainer.state.log_history:
        for n in names:
            if n in h:
                out[n] = float(h[n])
    return out


def train_trl(params: Params, ws: Workspace, out_policy: Path) -> dict:
    """Train `params.method` (dpo/kto/orpo/simpo) from checkpoints/sft; save the policy (HF dir) to `out_policy`."""
    import tempfile

    from datasets import Dataset

    from gapo.models.loading import load_policy, save_pretrained
    from gapo.models.prompting import format_prompt
    from gapo.train import engine as E

    method = params.method
    E.init_distributed()
    pairs = sample_pairs(load_pairs(params, ws, "train"), params.baselines.max_pairs, params.seed)
    if not pairs:
        raise DataError(f"{ws.jsonl(params.paradigm, 'train')}: no pairs")
    policy, tok = load_policy(ws.sft, params.models)
    if method == "kto":
        rows = unpaired_rows(pairs)
        dataset = Dataset.from_list([{"prompt": format_prompt(r["prompt"], tok), "completion": r["completion"],
                                      "label": r["label"]} for r in rows])
        steps = num_steps(len(rows), params)
    elif method == "dpo":
        dataset = Dataset.from_list([encode_pair(p, tok, params.baselines.max_length) for p in pairs])
        steps = num_steps(len(pairs), params)
    else:
        dataset = Dataset.from_list([{k: p[k] for k in ("prompt_chosen", "prompt_rejected", "chosen", "rejected")}
                                     for p in pairs])
        steps = num_steps(len(pairs), params)
    t0 = time.perf_counter()
    # LoRA: TRL trains the adapter and, with ref_model=None, uses the base with the adapter off as the reference
    # (no second copy); the adapter is merged before saving, so the policy loads with plain transformers.
    peft = None
    if params.models.lora.enabled:
        from gapo.models.adapters import lora_config

        peft = lora_config(policy, params.models.lora)
    with tempfile.TemporaryDirectory(prefix=f"gapo-{method}-", dir=ws.checkpoints) as tmp:
        if method in ("dpo", "kto"):
            ref = None if peft is not None else load_policy(ws.sft, params.models, role="reference")[0]
            build = _dpo_trainer if method == "dpo" else _kto_trainer
            trainer = build(policy, ref, tok, dataset, params, Path(tmp), steps, peft)
        else:
            trainer = _odds_trainer(method, policy, tok, dataset, params, Path(tmp), steps, peft)
        if not trainer.is_deepspeed_enabled:  # the TRL path must run in the same engines as every other model
            raise ConfigError(f"method {method}: the HF Trainer did not enable DeepSpeed")
        trainer.train()
        curve = _loss_curve(trainer)
        logged = _last_logged(trainer, "rewards/accuracies", "rewards/margins", "kl", "train_loss")
        model = trainer.accelerator.unwrap_model(trainer.model)
        if peft is not None:
            model = model.merge_and_unload()
        if E.is_main():
            save_pretrained(model, tok, out_policy)
        E.barrier()
    return {"method": method, "paradigm": params.paradigm, "train_pairs": len(pairs), "steps": steps,
            "train_loss_first": curve[0][1] if curve else None, "train_loss_final": curve[-1][1] if curve else None,
            "train_reward_accuracy": logged.get("rewards/accuracies"),
            "train_reward_margin": logged.get("rewards/margins"), "time_s": round(time.perf_counter() - t0, 2),
            "loss_curve": curve}


# ============================================================================================ PPO with a decoder RM
def pair_scores(model, tok, pairs: Sequence[dict], max_length: int, device):
    """Decoder-RM scores of the chosen and of the rejected sides of `pairs`, in one forward (the same (prompt,
    response) encoding PPO scores with: gapo.models.rm_inputs in the RM's own tokenizer, here the policy's)."""
    batch = {k: v.to(device) for k, v in collate(DECODER.encode(tok, pairs, max_length), tok).items()}
    return DECODER.chosen_rejected(DECODER.score(model, batch))


def pairwise_accuracy(model, tok, pairs: Sequence[dict], params: Params, batch: int = 16) -> float:
    import torch

    if not pairs:
        return float("nan")
    module = getattr(model, "module", model)
    was = module.training
    module.eval()
    device = next(module.parameters()).device
    wins = 0
    with torch.no_grad():
        for s in range(0, len(pairs), batch):
            c, r = pair_scores(module, tok, pairs[s:s + batch], params.reward.max_length, device)
            wins += int((c > r).sum())
    module.train(was)
    return wins / len(pairs)


def train_decoder_rm(params: Params, ws: Workspace, pairs: list[dict]):
    """Bradley–Terry training of the decoder RM inside a DeepSpeed engine. Returns (engine, tokenizer, metrics)."""
    import torch
    from tqdm import tqdm

    from gapo.errors import NumericalError
    from gapo.models.loading import load_reward_model
    from gapo.train import engine as E

    b = params.baselines
    model, tok = load_reward_model(ws.sft, params.models, "decoder reward model", kind=DECODER.name)
    optim = b.rm_optim
    steps = max(1, math.ceil(len(pairs) * b.rm_epochs / (optim.micro_batch_size * optim.gradient_accumulation_steps)))
    engine = E.build_train_engine(model, params, optim, steps)
    rng = random.Random(params.seed + 17)
    order: list[int] = []
    curve = []
    engine.train()
    for step in tqdm(range(1, steps + 1), desc="decoder rm", disable=bars_off(E.is_main()), dynamic_ncols=True):
        total = 0.0
        for _ in range(optim.gradient_accumulation_steps):
            if len(order) < optim.micro_batch_size:
                more = list(range(len(pairs)))
                rng.shuffle(more)
                order += more
            idx, order = order[:optim.micro_batch_size], order[optim.micro_batch_size:]
            batch = {k: v.to(engine.device) for k, v in
                     collate(DECODER.encode(tok, [pairs[i] for i in idx], params.reward.max_length), tok).items()}
            loss = DECODER.loss(DECODER.score(engine, batch), batch)
            if not torch.isfinite(loss):
                raise NumericalError(f"decoder rm step {step}: Bradley-Terry loss is {loss.item()}")
            engine.backward(loss)
            engine.step()
            total += loss.item() / optim.gradient_accumulation_steps
        curve.append((step, total))
    return engine, tok, {"rm_steps": steps, "rm_loss_first": curve[0][1], "rm_loss_final": curve[-1][1],
                         "rm_curve": curve}


def train_ppo_decoder(params: Params, ws: Workspace, out_policy: Path, out_rm: Path) -> dict:
    """Decoder RM (Bradley–Terry, then frozen) + PPO (gapo.train.ppo) for the same iterations and prompts as GAPO."""
    from gapo.io import read_jsonl
    from gapo.models.critic import build_critic
    from gapo.train import engine as E
    from gapo.train.ppo import build_ppo_models, run_ppo_phase

    E.init_distributed()
    t0 = time.perf_counter()
    pairs = sample_pairs(load_pairs(params, ws, "train"), params.baselines.max_pairs, params.seed)
    rm_engine, rm_tok, rm_metrics = train_decoder_rm(params, ws, pairs)
    val = load_pairs(params, ws, "validation") if ws.jsonl(params.paradigm, "validation").is_file() else []
    rm_metrics["rm_val_pair_accuracy"] = pairwise_accuracy(rm_engine, rm_tok, val[:200], params)
    E.save_hf(rm_engine, rm_tok, out_rm)
    rm_module = E.unwrap(rm_engine)
    del rm_engine
    reward = E.build_inference_engine(rm_module, params)
    tok_policy = rm_tok
    critic = build_critic(params, ws.sft, ws.rm_warmup, tok_policy) if params.ppo.advantage_estimator == "gae" else None
    models = build_ppo_models(params, ws.sft, ws.sft, critic, reward, rm_tok)
    prompts = read_jsonl(ws.jsonl("ifeval", "train"))
    stats: list[dict] = []
    for k in range(1, max(1, params.adversarial.rounds) + 1):
        stats += run_ppo_phase(models, prompts, params, k)[0]
    E.save_hf(models.actor, models.tokenizer, out_policy)
    curve = rm_metrics.pop("rm_curve")
    return {"method": "ppo", "paradigm": params.paradigm, "train_pairs": len(pairs), **rm_metrics,
            "ppo_iterations": len(stats), "rollout_reward_first": stats[0]["reward"],
            "rollout_reward_last": stats[-1]["reward"], "rollout_pass_rate_last": stats[-1]["pass_rate"],
            "rollout_kl_last": stats[-1]["kl"], "time_s": round(time.perf_counter() - t0, 2),
            "loss_curve": [(s, l) for s, l in curve]}


# ============================================================================================ the stage
def run_baseline(params: Params, ws: Workspace) -> dict:
    """Train `params.method` (a baseline) and write what the adversarial stage writes for GAPO."""
    from gapo import runtime
    from gapo.io import atomic_dir, write_json
    from gapo.train import engine as E
    from gapo.train.adversarial import baseline_health
    from gapo.train.round_metrics import write_outputs

    if not is_baseline(params):
        raise ConfigError(f"method {params.method!r}: not a baseline of gapo.train.baselines")
    for p in (ws.sft, ws.rm_warmup):
        if not (p / "config.json").is_file():
            raise DataError(f"{p}: not found (run `gapo sft` and `gapo rm_warmup` first)")
    E.init_distributed()
    runtime.setup(params, seed_offset=5)
    ws.checkpoints.mkdir(parents=True, exist_ok=True)
    work = ws.checkpoints / "baseline_work"
    if E.is_main() and work.exists():
        shutil.rmtree(work)
    E.barrier()
    policy_dir, rm_dir = work / "policy", work / "reward_decoder"
    if params.method == "sft":
        info: dict[str, Any] = {"method": "sft", "paradigm": params.paradigm}
        policy_dir = ws.sft
    elif params.method == "ppo":
        info = train_ppo_decoder(params, ws, policy_dir, rm_dir)
    else:
        info = train_trl(params, ws, policy_dir)
    curve = info.pop("loss_curve", [])
    baseline = {"round": 0, **baseline_health(params, ws)}
    final = {"round": 1, **(baseline_health(params, ws, policy_dir, 1) if policy_dir != ws.sft else baseline),
             **{k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    final["round"] = 1
    metrics = {}
    if E.is_main():
        # checkpoints/rounds is a (persistent) DVC output of the stage: a baseline has no rounds, but says so there
        write_json(ws.rounds / "method.json", {"method": params.method, "paradigm": params.paradigm,
                                               "rounds": "none: a baseline (docs/baselines.md)"})
        metrics = write_outputs(ws, baseline, [final], 1)
        metrics.update({"method": params.method, "paradigm": params.paradigm,
                        "train_loss_curve": [[s, l] for s, l in curve]})
        write_json(ws.metrics_file("adversarial"), metrics)
        with atomic_dir(ws.final) as tmp:
            shutil.copytree(policy_dir, tmp / "policy")
            shutil.copytree(ws.rm_warmup, tmp / "reward")
            if rm_dir.is_dir():
                shutil.copytree(rm_dir, tmp / "reward_decoder")
            write_json(tmp / "final.json", {"method": params.method, "paradigm": params.paradigm,
                                            "policy_from": str(policy_dir if policy_dir == ws.sft else "trained"),
                                            "reward_from": str(ws.rm_warmup),
                                            **{k: v for k, v in info.items() if not isinstance(v, list)}})
        if work.exists():
            shutil.rmtree(work)
    E.barrier()
    return {"method": params.method, "paradigm": params.paradigm, "final": str(ws.final),
            **{k: metrics.get(k) for k in ("pass_rate_sft", "pass_rate_last", "kl")},
            **{k: v for k, v in info.items() if k in ("steps", "train_loss_first", "train_loss_final", "time_s",
                                                     "rm_val_pair_accuracy", "train_reward_accuracy")}}


def check_baseline_stage(params: Params, round: int | None = None) -> None:  # noqa: A002 (the CLI flag)
    """A baseline's settings the method stage refuses before anything runs (gapo.stages, gapo.preflight)."""
    if round is not None:
        raise ConfigError(f"adversarial --round {round}: method {params.method} has no rounds")
    if params.deepspeed.launcher != "none":
        raise ConfigError(f"method {params.method!r} with deepspeed.launcher={params.deepspeed.launcher}: the "
                          "baselines run in one process (set deepspeed.launcher=none)")


def run_baseline_stage(params: Params, ws: Workspace) -> dict:
    check_baseline_stage(params)
    return run_baseline(params, ws)
