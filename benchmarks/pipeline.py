"""Whole-pipeline wall time and peak RSS, per stage and per phase (rollout / reward / RM retrain / PPO update / eval).

Two modes:
- default: runs the dvc.yaml stages' commands (`gapo <stage>`, in dvc.yaml order) one after another in a fresh
  workspace (`--workdir`, default a temp dir), with `--profile` / `-S` applied to every stage, exactly as
  `dvc repro` would run them but without DVC's hashing. Use it for reduced settings.
- `--dvc`: runs `dvc repro` itself in the current repository (the lead's full default run) and splits the wall
  time at DVC's "Running stage '<name>'" lines.
Peak RSS is the largest SUM of resident memory over the process tree (stages that fork data workers count all
of them), sampled every 0.2 s with psutil; per stage too. Phase times come from the stages' metrics:
metrics/adversarial.json per-round `timing/<phase>_s`, metrics/sft.json and metrics/rm_warmup.json `time_s`.

    python benchmarks/pipeline.py --profile tiny                      # reduced: the tiny profile
    python benchmarks/pipeline.py -S adversarial.rounds=1 ...         # default profile with overrides
    python benchmarks/pipeline.py --dvc                               # the full default `dvc repro` (long)
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def dvc_stage_order(root: Path) -> list[str]:
    import yaml

    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


class TreeRSS:
    """Samples the summed RSS of a process and all its descendants in a background thread."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.proc, self.interval, self.peak, self._stop = psutil.Process(pid), interval, 0, threading.Event()
        self.marks: list[tuple[float, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                for p in [self.proc] + self.proc.children(recursive=True):
                    try:
                        total += p.memory_info().rss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                break
            self.peak = max(self.peak, total)
            self.marks.append((time.time(), total))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        return self.peak


def run_stage(cmd: list[str], cwd: Path, log) -> dict:
    t0 = time.time()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    mon = TreeRSS(p.pid)
    rc = p.wait()
    peak = mon.stop()
    return {"rc": rc, "wall_s": round(time.time() - t0, 2), "peak_rss_mib": round(peak / 2**20, 1)}


def phases_from_metrics(ws: Path) -> dict:
    out: dict[str, float] = {}
    m = ws / "metrics"
    adv = m / "adversarial.json"
    if adv.is_file():
        rounds = [r for r in json.loads(adv.read_text()).get("per_round", []) if r.get("round", 0) >= 1]
        for r in rounds:
            for k, v in r.items():
                if k.startswith("timing/") and isinstance(v, (int, float)):
                    name = k[len("timing/"):-2]
                    out[f"adversarial/{name}"] = round(out.get(f"adversarial/{name}", 0.0) + v, 2)
        out["adversarial/rounds_s"] = round(sum(r.get("seconds", 0.0) for r in rounds), 2)
    for st in ("sft", "rm_warmup", "evaluate"):
        f = m / f"{st}.json"
        if f.is_file():
            d = json.loads(f.read_text())
            for k in ("time_s", "seconds", "generation_s", "eval_s"):
                if isinstance(d.get(k), (int, float)):
                    out[f"{st}/{k}"] = d[k]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default=None)
    ap.add_argument("-S", dest="overrides", action="append", default=[])
    ap.add_argument("--workdir", default=None, help="workspace for the stages (default: a new temp dir)")
    ap.add_argument("--stages", default=None, help="comma list (default: every dvc.yaml stage)")
    ap.add_argument("--dvc", action="store_true", help="run `dvc repro` in the repository instead")
    ap.add_argument("--name", default="pipeline")
    ns = ap.parse_args(argv)
    root = common.ROOT
    stages = ns.stages.split(",") if ns.stages else dvc_stage_order(root)
    load_before = common.loadavg()
    per_stage: dict[str, dict] = {}
    if ns.dvc:
        ws = root
        t0 = time.time()
        p = subprocess.Popen(["dvc", "repro"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        mon = TreeRSS(p.pid)
        starts: list[tuple[str, float]] = []
        for line in p.stdout:
            sys.stdout.write(line)
            mt = STAGE_LINE.search(line)
            if mt:
                starts.append((mt.group(1), time.time()))
        rc = p.wait()
        end = time.time()
        peak = mon.stop()
        for i, (name, s) in enumerate(starts):
            e = starts[i + 1][1] if i + 1 < len(starts) else end
            peak_in = max((r for t, r in mon.marks if s <= t <= e), default=0)
            per_stage[name] = {"wall_s": round(e - s, 2), "peak_rss_mib": round(peak_in / 2**20, 1)}
        total = {"rc": rc, "wall_s": round(end - t0, 2), "peak_rss_mib": round(peak / 2**20, 1)}
    else:
        ws = Path(ns.workdir) if ns.workdir else Path(tempfile.mkdtemp(prefix="gapo-pipeline-"))
        ws.mkdir(parents=True, exist_ok=True)
        gapo = str(Path(sys.executable).parent / "gapo")
        base = [gapo, "--params", str(root / "params.yaml"), "--workdir", str(ws)]
        if ns.profile:
            base += ["--profile", ns.profile]
        for o in ns.overrides:
            base += ["-S", o]
        t0 = time.time()
        with open(ws / "pipeline-bench.log", "w") as log:
            for st in stages:
                per_stage[st] = run_stage(base + [st], root, log)
                print(f"[bench] {st}: {per_stage[st]} load {common.loadavg()}", file=sys.stderr)
                if per_stage[st]["rc"] != 0:
                    print(f"[bench] stage {st} failed (rc {per_stage[st]['rc']}); see {ws / 'pipeline-bench.log'}",
                          file=sys.stderr)
                    break
        total = {"rc": max(s["rc"] for s in per_stage.values()), "wall_s": round(time.time() - t0, 2),
                 "peak_rss_mib": max(s["peak_rss_mib"] for s in per_stage.values())}
    out = {"mode": "dvc repro" if ns.dvc else "stage commands", "profile": ns.profile, "overrides": ns.overrides,
           # a machine path would leak into a committed result: say which kind of workspace it was
           "workspace": "this repository" if ns.dvc else "a fresh workspace",
           "total": total, "per_stage": per_stage, "phases_s": phases_from_metrics(ws),
           "load": {"before": load_before, "after": common.loadavg()}}
    common.emit(ns.name, out)
    return out


if __name__ == "__main__":
    main()
