"""The tiny pipeline the end-to-end tests run (a plain module: conftest files are not importable by name)."""

# Tiny profile, made smaller still: a few prompts and steps per stage; 2 adversarial rounds (the e2e and the
# reliability tests run this pipeline).
FAST_PIPELINE = ("data.num_products=40", "data.prompts_per_product=1", "data.test_prompts=12", "data.workers=1",
                 "sft.max_steps=3", "sft.eval_examples=4", "sft.optim.micro_batch_size=4",
                 "reward.warmup_examples=32", "reward.eval_examples=8", "reward.optim.micro_batch_size=8",
                 "reward.max_length=128", "adversarial.rounds=2", "adversarial.prompts_per_round=4",
                 "adversarial.eval_prompts=4", "ppo.rollout_batch_size=4", "ppo.micro_rollout_batch_size=4",
                 "ppo.train_batch_size=4", "ppo.micro_train_batch_size=4", "ppo.episodes_per_round=1",
                 "ppo.generate_max_len=12", "ppo.prompt_max_len=128", "evaluate.max_prompts=6",
                 "evaluate.max_new_tokens=12", "evaluate.batch_size=6", "tracking.system_metrics_interval_s=2")
