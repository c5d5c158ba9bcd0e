"""The encoder reward model as an MLflow pyfunc: scores (prompt, response) pairs.

Input: a DataFrame (or list of dicts / dict of lists) with string columns `prompt` and `response`.
Output: a DataFrame with `score` (what PPO received: sigmoid probability or raw logit, per
`params.reward.score` at registration, overridable per request with the `score` param) and `logit`.
Encoding, batching and the score read are the RM kind's (gapo.models.reward_model: `kind_of`, `collate`), the
exact path the RM was trained and scored with in PPO (the package is shipped inside the model via `code_paths`, so
the served model does not depend on the installed version of gapo).
"""
from __future__ import annotations

import mlflow.pyfunc

ARTIFACT_KEY = "reward_model"


class RewardModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = context.artifacts[ARTIFACT_KEY]
        cfg = dict(context.model_config or {})
        self.max_length = int(cfg.get("max_length", 256))
        self.score_kind = str(cfg.get("score", "prob"))
        self.batch_size = int(cfg.get("batch_size", 32))
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True)
        self.model.eval()
        self.torch = torch

    def predict(self, context, model_input, params=None):  # noqa: ARG002 (no type hints: MLflow would infer a schema)
        import pandas as pd

        from gapo.models.reward_model import collate, encode_rows, keeps_facts, kind_of

        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in ("prompt", "response") if c not in df.columns]
        if missing:
            raise ValueError(f"reward model input: missing column(s) {missing}; expected string columns "
                             "'prompt' and 'response'")
        params = params or {}
        kind = str(params.get("score") or self.score_kind)
        if kind not in ("prob", "logit"):
            raise ValueError(f"reward model param score={kind!r}: expected 'prob' or 'logit'")
        batch_size = int(params.get("batch_size") or self.batch_size)
        prompts = [str(x) for x in df["prompt"].tolist()]
        responses = [str(x) for x in df["response"].tolist()]
        rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
        rm, facts = kind_of(self.model), keeps_facts(self.model)
        logits: list[float] = []
        with self.torch.no_grad():
            for i in range(0, len(rows), batch_size):
                batch = collate(encode_rows(self.tokenizer, rows[i:i + batch_size], self.max_length, facts),
                                self.tokenizer)
                logits.extend(rm.score(self.model, batch).tolist())
        t = self.torch.tensor(logits, dtype=self.torch.float64)
        scores = self.torch.sigmoid(t) if kind == "prob" else t
        return pd.DataFrame({"score": scores.tolist(), "logit": logits})


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("string", "response")]),
        outputs=Schema([ColSpec("double", "score"), ColSpec("double", "logit")]),
        # "" / 0 = the defaults chosen at registration (model_config)
        params=ParamSchema([ParamSpec("score", "string", ""), ParamSpec("batch_size", "long", 0)]),
    )
