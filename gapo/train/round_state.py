"""What makes an adversarial round resumable: its prompts, its fingerprint, its RNG state and its round file.

A round k reads a seeded slice of the training prompts (`prompt_slice`: the same slice whether round k runs in
one process with all the others or alone under `--round k`). A completed round is `round_NNN/round.json`, written
last, carrying the `fingerprint` of what the round depended on (params, inputs, code): a round with another
fingerprint is stale and is redone, so a resume never continues rounds trained under other settings. The RNG
state (python, numpy, torch, cuda) is saved per rank with the round and restored when the next round resumes from
it, so `--round k` runs give the same weights as one uninterrupted run.

API
- `prompt_slice(rows, k, n, seed, stream)` -> round k's n prompts of a seeded permutation (one per stream)
- `fingerprint(params, ws)`; `code_digest(root)` over `CODE_DEPS`; `input_digest(path)`
- `read_round(ws, k, fp)` -> round.json's record or None; `completed_rounds(ws, fp)`; `write_round_file(...)`
- `save_rng(path)` / `load_rng(path)`; `rng_file(round_dir)` (this rank's file)
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Optional, Sequence

from gapo.config import Params
from gapo.paths import Workspace

ROUND_FILE = "round.json"
BASELINE_FILE = "baseline.json"


def prompt_slice(rows: Sequence[dict], k: int, n: int, seed: int, stream: str) -> list[dict]:
    """Round k's `n` prompts from a seeded permutation of `rows` (one permutation per `stream`): consecutive rounds
    take consecutive, disjoint slices ("fresh" prompts), wrapping around only when the set is exhausted."""
    order = list(range(len(rows)))
    random.Random(f"{seed}/{stream}").shuffle(order)
    start = (k - 1) * n
    return [rows[order[(start + i) % len(order)]] for i in range(min(n, len(order)))]


# ============================================================================================ fingerprint
def input_digest(path: Path) -> str:
    """md5 of an input file, or of a checkpoint folder's weights and json files (names and bytes, sorted)."""
    if not path.exists():  # a missing input is the user's to fix: one line, not a traceback
        from gapo.errors import DataError

        raise DataError(f"{path}: not found (run `gapo prepare`, `gapo sft` and `gapo rm_warmup` first)")
    from gapo.io import content_hash

    return content_hash(path, names=True, suffixes=(".safetensors", ".jsonl", ".json"))


# The code a round's result depends on (the modules this stage runs; sft.py and baselines.py only reach it through
# checkpoints, which are hashed as inputs). DVC reruns the stage when its code deps change and `persist: true`
# keeps the old rounds, so without this a fix to e.g. the PPO loss would resume rounds trained by the old code.
CODE_DEPS = ("gapo/train/adversarial.py", "gapo/train/ppo.py", "gapo/train/losses.py", "gapo/train/reward.py",
             "gapo/train/engine.py", "gapo/train/sampler.py", "gapo/train/rollout.py", "gapo/train/round_state.py",
             "gapo/train/round_metrics.py", "gapo/models", "gapo/data/constraints.py", "gapo/data/catalog.py",
             "gapo/data/ifeval_checkers.py")


def code_digest(root: Optional[Path] = None) -> str:
    """md5 over the .py files of CODE_DEPS (path + content, sorted), relative to the repository root."""
    root = root or Path(__file__).resolve().parents[2]
    h = hashlib.md5()
    for dep in CODE_DEPS:
        base = root / dep
        files = sorted(base.rglob("*.py")) if base.is_dir() else [base]
        for f in files:
            if f.is_file():
                h.update(str(f.relative_to(root)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(params: Params, ws: Workspace) -> str:
    """What a completed round depends on: every knob that changes training (all but `adversarial.rounds`, so adding
    rounds resumes), the inputs' content and the code. A round with another fingerprint is stale and is redone."""
    adv = params.adversarial.model_dump(mode="json")
    adv.pop("rounds")
    ds = params.deepspeed.model_dump(mode="json")
    for k in ("launcher", "hostfile", "master_port"):
        ds.pop(k)
    from gapo.train import engine as E

    tree = {"seed": params.seed, "method": params.method, "ppo": params.ppo.model_dump(mode="json"), "adversarial": adv,
            "reward": params.reward.model_dump(mode="json"), "deepspeed": ds, "world": E.world_size(),
            "models": {**{k: getattr(params.models, k) for k in ("dtype", "critic_init", "gradient_checkpointing",
                                                                  "reward_autocast")},
                       "lora": params.models.lora.model_dump(mode="json")},
            "code": code_digest(),
            "inputs": {name: input_digest(p) for name, p in (("sft", ws.sft), ("rm_warmup", ws.rm_warmup),
                                                             ("ifeval_train", ws.jsonl("ifeval", "train")),
                                                             ("rm_train", ws.jsonl("rm", "train")))}}
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16]


# ============================================================================================ round files
def read_round(ws: Workspace, k: int, fp: str) -> Optional[dict]:
    f = ws.round_dir(k) / ROUND_FILE
    if not f.is_file():
        return None
    info = json.loads(f.read_text(encoding="utf-8"))
    return info if info.get("fingerprint") == fp else None


def completed_rounds(ws: Workspace, fp: str) -> int:
    """Length of the run of complete, current rounds 1..j (a stale or partial round ends it)."""
    k = 0
    while read_round(ws, k + 1, fp) is not None:
        k += 1
    return k


def write_round_file(round_dir: Path, record: dict, fp: str, kl_ctl_state: dict) -> None:
    """round.json: the round's record, what it was computed under, and β's state. Written last: its presence
    marks the round complete."""
    from gapo.io import write_json

    write_json(round_dir / ROUND_FILE, {**record, "fingerprint": fp, "kl_ctl": kl_ctl_state,
                                        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


# ============================================================================================ RNG state
def save_rng(path: Path) -> None:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, path)


def load_rng(path: Path) -> None:
    import numpy as np
    import torch

    state = torch.load(path, weights_only=False)  # our own file, written by save_rng
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(rd: Path) -> Path:
    from gapo.train import engine as E

    return rd / ("rng.pt" if E.rank() == 0 else f"rng.rank{E.rank()}.pt")
