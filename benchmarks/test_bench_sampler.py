"""pytest-benchmark view of the sampler (outside `testpaths`: never part of the default `pytest` run).

    pytest benchmarks/test_bench_sampler.py --benchmark-only -p no:cacheprovider

Times one 16×32-token rollout with the static-cache path and with HF's DynamicCache path on the default profile's
policy (benchmarks/rollout.py is the full, interleaved comparison with naive decoding and HF generate).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import rollout  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    return rollout.setup(16, common.ensure_workspace())


@pytest.mark.parametrize("static", [True, False], ids=["static_cache", "dynamic_cache"])
def test_rollout_16x32(benchmark, setup, static):
    import gapo.train.sampler as S

    model, _, prompts, pad = setup
    S.STATIC_CACHE = static
    try:
        out = benchmark.pedantic(lambda: S.sample(model, prompts, 32, [10**9], pad,
                                                  generator=torch.Generator().manual_seed(0)),
                                 rounds=3, warmup_rounds=1)
    finally:
        S.STATIC_CACHE = True
    assert out.response_ids.shape == (16, 32)
