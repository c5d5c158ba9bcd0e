"""Models: how the generator (causal LM) and the encoder reward model are built, loaded, saved and fed.

- `builders`     tokenizers trained on the local corpus, Llama / BERT built from `ArchConfig`
- `loading`      safe load/save of policy and reward model (safetensors only, clear `ModelError`s)
- `materialize`  the `models` stage: models/policy and models/reward from params
- `prompting`    `format_prompt` and the EOS convention shared by SFT, PPO, fake sampling and evaluation
- `rm_inputs`    (prompt, response) text pairs in the reward model's own tokenizer, constraint-keeping truncation
- `reward_model` the RM kinds (encoder-BCE, decoder-BT): encode / score / loss, and the one RM batching function
- `critic`       value model (backbone + per-token scalar head), initialised from the policy or from the RM
"""
