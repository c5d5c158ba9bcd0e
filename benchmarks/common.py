"""Shared pieces of the benchmark scripts: a benchmark workspace, interleaved A/B timing, machine facts.

Every comparison runs its contenders alternately in ONE process (A B C A B C ...), `repeats` times, and reports
medians: the box is shared, so load hits every side alike. Load averages before/after are recorded with each result.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WS = Path(os.environ.get("GAPO_BENCH_WS", "/tmp/gapo-bench/ws"))
# Reduced data so the workspace builds in ~30 s. The older benchmarks measure the toy profile's models (llama-small
# policy, MiniLM RM); benchmarks/real_model.py passes profile=None for the default SmolLM2.
WS_OVERRIDES = ["data.num_products=200", "data.test_prompts=60", "runtime.threads=1"]
PROFILE = "toy"


def gapo(ws: Path, *args: str, overrides: Optional[list[str]] = None, profile: Optional[str] = PROFILE) -> None:
    cmd = [str(Path(sys.executable).parent / "gapo"), "--workdir", str(ws)]
    if profile:
        cmd += ["--profile", profile]
    for o in (overrides if overrides is not None else WS_OVERRIDES):
        cmd += ["-S", o]
    subprocess.run(cmd + list(args), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def ensure_workspace(ws: Path = DEFAULT_WS, stages: tuple[str, ...] = ("prepare", "models")) -> Path:
    """prepare + models (+ more stages) on the default profile with reduced data, once (kept between runs)."""
    ws.mkdir(parents=True, exist_ok=True)
    marks = {"prepare": ws / "data" / "ifeval" / "train.jsonl", "models": ws / "models" / "policy" / "config.json",
             "sft": ws / "checkpoints" / "sft" / "config.json",
             "rm_warmup": ws / "checkpoints" / "rm_warmup" / "config.json"}
    for st in stages:
        if not marks[st].exists():
            print(f"[bench] building workspace stage {st} in {ws}", file=sys.stderr)
            gapo(ws, st)
    return ws


def load_params(overrides: Optional[list[str]] = None, profile: Optional[str] = PROFILE):
    from gapo.config import load_params as lp

    return lp(ROOT / "params.yaml", list(WS_OVERRIDES) + list(overrides or []), profile)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(contenders: dict[str, Callable[[], float]], repeats: int = 3, warmup: bool = True) -> dict:
    """Run each contender `repeats` times, alternating A B C A B C. A contender returns its work units (tokens,
    samples) and is timed here; returns per contender the median seconds, units and units/s."""
    if warmup:
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    units: dict[str, float] = {}
    before = loadavg()
    for _ in range(repeats):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            units[name] = fn()
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"median_s": round(med, 4), "all_s": [round(t, 4) for t in ts], "units": units[name],
                     "per_s": round(units[name] / med, 2)}
    out["_load"] = {"before": before, "after": loadavg()}
    return out


def ratio(res: dict, a: str, b: str) -> float:
    return round(res[a]["per_s"] / res[b]["per_s"], 2)


def machine() -> dict:
    import torch

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "load": loadavg()}


def matmul_peak(threads: int, n: int = 1024, seconds: float = 1.5, dtype: str = "float32") -> float:
    """This machine's matmul throughput (FLOP/s, fp32 unless `dtype`) on `threads` threads: best of repeated
    n×n @ n×n."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n, dtype=getattr(torch, dtype)), torch.randn(n, n, dtype=getattr(torch, dtype))
        a @ b
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            a @ b
            best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
        return best
    finally:
        torch.set_num_threads(prev)


def emit(name: str, result: dict, out_dir: Optional[Path] = None) -> None:
    """Print the result as JSON and write it to benchmarks/results/<name>.json."""
    out_dir = out_dir or ROOT / "benchmarks" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": machine(), **result}
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
