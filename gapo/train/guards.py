"""Finite checks for losses, rewards and advantages, and the NaN fault-injection hook the reliability tests use.

API
- `check_finite(x, what, where)`   raise `NumericalError("<where>: <what> is not finite (...)")` if any element of
      the tensor (or float) `x` is NaN/inf. `where` names the place: "sft step 3", "adversarial round 2 ppo step 1".
- `inject_nan(point, x, **ctx)` -> x   returns `x * NaN` when the environment variable GAPO_INJECT_NAN names this
      injection point (and every `key=value` given with it matches `ctx`), else `x` unchanged.

GAPO_INJECT_NAN holds `;`-separated specs `point[@key=value,key=value...]`, e.g.
    GAPO_INJECT_NAN="ppo.policy_loss@round=2,step=1"     # the first PPO step of round 2
    GAPO_INJECT_NAN="sft.loss@step=3"                    # SFT's third optimizer step
Points wired into the training code: sft.loss, rm.loss (ctx: step, desc), ppo.reward, ppo.advantages,
ppo.policy_loss (ctx: round, step). Why an environment variable: the fault must reach a `gapo <stage>` process
started by `dvc repro` or a Prefect task, where no test can monkeypatch; unset (always, outside tests) it costs
one dict lookup per step.
"""
from __future__ import annotations

import math
import os
from typing import Any

from gapo.errors import NumericalError

ENV_INJECT_NAN = "GAPO_INJECT_NAN"


def check_finite(x: Any, what: str, where: Any) -> None:
    if isinstance(x, (int, float)):
        if not math.isfinite(x):
            raise NumericalError(f"{where}: {what} is not finite ({x})")
        return
    import torch

    x = x.detach()
    if not torch.isfinite(x).all():
        bad = x[~torch.isfinite(x)]
        raise NumericalError(f"{where}: {what} is not finite ({bad.numel()} value(s), e.g. {float(bad.flatten()[0])})")


def _parse(spec: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for part in spec.split(";"):
        part = part.strip()
        if not part:
            continue
        point, _, cond = part.partition("@")
        ctx = {}
        for item in cond.split(","):
            if "=" in item:
                k, v = item.split("=", 1)
                ctx[k.strip()] = v.strip()
        out.append((point.strip(), ctx))
    return out


def inject_nan(point: str, x: Any, **ctx: Any) -> Any:
    spec = os.environ.get(ENV_INJECT_NAN)
    if not spec:
        return x
    for name, cond in _parse(spec):
        if name == point and all(str(ctx.get(k)) == v for k, v in cond.items()):
            return x * float("nan")
    return x


ENV_PAUSE_AT = "GAPO_PAUSE_AT"
ENV_PAUSE_MARKER = "GAPO_PAUSE_MARKER"


def pause_point(point: str) -> None:
    """Test hook for the kill tests: with GAPO_PAUSE_AT=<point>, announce the point (GAPO_PAUSE_MARKER file) and
    block there, mid-work, until the process is killed. A kill after a fixed delay misses the stage entirely on a
    fast machine (the tiny stages take under a second), so the kill point must not depend on speed."""
    if os.environ.get(ENV_PAUSE_AT) != point:
        return
    import time
    from pathlib import Path

    marker = os.environ.get(ENV_PAUSE_MARKER)
    if marker:
        Path(marker).write_text(point, encoding="utf-8")
    while True:
        time.sleep(1.0)
