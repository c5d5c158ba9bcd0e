"""Process-wide runtime set-up: seeds, torch threads, device. Called once at the top of each stage."""
from __future__ import annotations

import os
import random

from gapo.config import Params


def setup(params: Params, seed_offset: int = 0) -> "torch.device":  # noqa: F821
    import numpy as np
    import torch

    seed = params.seed + seed_offset
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if params.runtime.threads > 0:
        torch.set_num_threads(params.runtime.threads)
    if params.runtime.deterministic:
        # CPU kernels are deterministic already; on CUDA this trades speed for reproducibility.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device(params)


def device(params: Params) -> "torch.device":  # noqa: F821
    import torch

    if params.runtime.device == "cuda" and not torch.cuda.is_available():
        # The engines follow torch.cuda.is_available(), so going on would train on the CPU under a GPU profile.
        from gapo.config import ConfigError

        raise ConfigError("runtime.device=cuda but torch sees no CUDA device (check nvidia-smi and the torch build); "
                          "use runtime.device=auto or cpu")
    if params.runtime.device == "cuda" or (params.runtime.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def bars_off(main: bool = True) -> bool:
    """`disable=` for a tqdm bar: off on non-main ranks, and wherever TQDM_DISABLE is set (Prefect workers, CI).
    tqdm reads TQDM_DISABLE only when `disable` is not passed, and the bars here pass it for the ranks."""
    return (not main) or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")
