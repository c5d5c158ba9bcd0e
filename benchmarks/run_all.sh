#!/usr/bin/env bash
# Every benchmark at the settings docs/benchmarks.md reports (reduced where noted there). Run from the repo root.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/rollout.py --batch 16 --new 64 --naive-new 32 --threads 1 --repeats 2
python benchmarks/train_flops.py --steps 4 --repeats 1 --threads 2
python benchmarks/ppo_iteration.py --iters 2 --blocks 2 --threads 2 -S ppo.generate_max_len=32 -S ppo.rollout_batch_size=16 -S ppo.train_batch_size=16
python benchmarks/gapo_round.py --pairs 2 --threads 2 -S ppo.generate_max_len=32 -S ppo.rollout_batch_size=16 -S ppo.train_batch_size=16 -S adversarial.prompts_per_round=16 -S adversarial.eval_prompts=8
python benchmarks/pipeline.py --profile tiny -S runtime.threads=1 --stages prepare,models,sft,rm_warmup,adversarial,evaluate
