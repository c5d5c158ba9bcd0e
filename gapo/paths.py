"""Where every stage reads and writes, relative to one workspace root (the repo by default).

The layout is the contract between stages, DVC (dvc.yaml lists these paths) and Prefect: a stage
reads only the files an earlier stage wrote here, never another stage's internals.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DATA_KINDS = ("sft", "pp", "rm", "pr", "ifeval")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Workspace:
    root: Path = field(default_factory=Path.cwd)
    # Where kind "rm" (the encoder RM's classification rows) is read from: data/rm, or data/rm_pr for
    # `paradigm: pr` (gapo.train.baselines.paradigm_workspace sets it, so the RM stages need no paradigm branch).
    rm_data: str = "rm"

    # -- data (prepare) ------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.root / "data"

    def jsonl(self, kind: str, split: str) -> Path:
        """data/<kind>/<split>.jsonl; kind in DATA_KINDS, where kind "rm" means data/<rm_data>/."""
        return self.data / (self.rm_data if kind == "rm" else kind) / f"{split}.jsonl"

    def hf_dataset(self, kind: str) -> Path:
        """data/hf/<kind>: a DatasetDict saved with save_to_disk."""
        return self.data / "hf" / kind

    @property
    def data_stats(self) -> Path:
        return self.data / "stats.json"

    # -- base models (models stage) --------------------------------------------------------
    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def policy_base(self) -> Path:
        return self.models / "policy"

    @property
    def reward_base(self) -> Path:
        return self.models / "reward"

    # -- checkpoints -----------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def sft(self) -> Path:
        return self.checkpoints / "sft"

    @property
    def rm_warmup(self) -> Path:
        return self.checkpoints / "rm_warmup"

    @property
    def rounds(self) -> Path:
        return self.checkpoints / "rounds"

    def round_dir(self, k: int) -> Path:
        return self.rounds / f"round_{k:03d}"

    @property
    def final(self) -> Path:
        """checkpoints/final: the policy and RM the pipeline hands to evaluate and register."""
        return self.checkpoints / "final"

    # -- metrics, plots, reports -------------------------------------------------------------
    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def metrics_file(self, stage: str) -> Path:
        return self.metrics / f"{stage}.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def reports(self) -> Path:
        return self.root / "reports"
