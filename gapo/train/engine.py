"""DeepSpeed engines built from params: one place that knows ZeRO, precision, optimizers, schedules and launchers.

API
- `init_distributed(master_port=None)` -> (rank, world_size)   idempotent; works bare, under torchrun and `deepspeed`
- `rank()`, `world_size()`, `is_main()`, `barrier()`, `all_reduce_mean(x)`
- `ds_config(ds, optim, world_size=None)` -> dict             the DeepSpeed JSON config
- `build_optimizer(model, optim)` -> torch.optim.AdamW        decay / no-decay groups (no JIT op build)
- `cosine_with_min_lr(optimizer, num_training_steps, optim)` -> LambdaLR (OpenRLHF's schedule)
- `build_train_engine(model, params, optim, num_training_steps)` -> DeepSpeedEngine
      use: `loss = engine(**batch)...; engine.backward(loss); engine.step()`; `engine.module` is the HF model;
      gradient accumulation, clipping and the LR schedule happen inside `engine.step()`.
- `build_inference_engine(model, params)` -> frozen module (ZeRO-3: a partitioned DeepSpeed engine), eval mode
- `unwrap(model_or_engine)` -> the HF module
- `consolidated_state_dict(engine)` -> state dict on rank 0 (ZeRO-3 gathers; collective: call on every rank)
- `save_hf(engine, tokenizer, out_dir, extra_json=None)`       HF dir (safetensors), written by rank 0, atomic
- `save_critic(critic_or_engine, out_dir)`                     a gapo.models.critic.Critic dir (load_critic reads it)
- `save_engine_state(engine, state_dir, client_state)` / `load_engine_state(engine, state_dir)` -> client_state
      optimizer, LR scheduler and step counters for resume (DeepSpeed checkpoint format, our own files only)
- `num_update_steps(n_examples, optim, epochs, world)` -> optimizer steps for a run
- `launcher_command(gapo_args, ds)` / `launcher_env()`        relaunch `gapo <gapo_args>` under torchrun / deepspeed
- `maybe_relaunch(stage_args, params, ws)` -> summary | None  a stage with deepspeed.launcher != none
- `inside_launcher()`                                            RANK/LOCAL_RANK from a launcher (not our own)

Why torch AdamW: DeepSpeed's FusedAdam / DeepSpeedCPUAdam are JIT-compiled C++ ops (2-4 min each on 2 cores);
torch's AdamW works in every ZeRO stage with no build. Why the shm skip: every CPU `init_distributed()` would
otherwise compile `deepspeed_shm_comm` (~100 s) for an inference all-reduce fast path we never use.
"""
from __future__ import annotations

import atexit
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from gapo.config import DeepSpeedConfig, OptimConfig, Params

_SINGLE_PROCESS_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE")
_SET_BY_US = "GAPO_SINGLE_PROCESS_ENV"
CLI_MODULE = "gapo.cli"  # what every launched rank runs: `gapo <stage>`, nothing else


def _free_port() -> int:
    # Several engineers / tests run single-process jobs on one machine: a fixed default port collides.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quiet_deepspeed() -> None:
    import logging

    try:
        from deepspeed.utils import logger

        logger.setLevel(logging.WARNING)
    except ImportError:
        pass


def init_distributed(master_port: Optional[int] = None) -> tuple[int, int]:
    """Start torch.distributed through DeepSpeed once per process. Without a launcher the env variables of a
    1-process group are set (else DeepSpeed falls into MPI discovery and needs mpi4py)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    # Bare process (no launcher), or a child that inherited the variables a bare parent set for itself: a
    # 1-process world on an in-memory store. No TCP port, so nothing collides with the parent's store or with
    # other jobs on the machine (a "free" port picked here can be taken before it is bound).
    bare = os.environ.get(_SET_BY_US) == "1" or ("RANK" not in os.environ and "WORLD_SIZE" not in os.environ)
    if bare:
        for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(master_port or 29500)).items():
            os.environ[k] = v  # DeepSpeed reads LOCAL_RANK/RANK from the environment
        os.environ[_SET_BY_US] = "1"
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import deepspeed.ops

    _quiet_deepspeed()
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip the ~100 s shm op build (CPU)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if bare:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed()  # wraps the existing group, or rendezvous from the launcher's env
    atexit.register(_destroy_process_group)
    return dist.get_rank(), dist.get_world_size()


def _destroy_process_group() -> None:
    """Tear the group down before the interpreter does: a gloo group left to interpreter teardown sometimes
    aborts a rank whose work is done ("terminate called without an active exception", SIGABRT), and the launcher
    then reports the finished stage as failed (seen once in 2-process `torchrun` runs on CPU)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - at exit a half-closed group must not turn success into an error
            pass


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_mean(values: list[float]) -> list[float]:
    """Mean of floats over ranks (metrics); identity in one process."""
    import torch
    import torch.distributed as dist

    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return (t / world_size()).tolist()


def comm_device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


# ------------------------------------------------------------------------------------------ config
def ds_config(ds: DeepSpeedConfig, optim: OptimConfig, world: Optional[int] = None) -> dict:
    world = world or world_size()
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": optim.micro_batch_size,
        "gradient_accumulation_steps": optim.gradient_accumulation_steps,
        "train_batch_size": optim.micro_batch_size * optim.gradient_accumulation_steps * world,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "steps_per_print": 10**9,  # we log ourselves; DeepSpeed's step prints would interleave with tqdm
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer and ds.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        # With torch AdamW, let ZeRO-Offload run the client optimizer instead of demanding DeepSpeedCPUAdam (JIT).
        cfg["zero_force_ds_cpu_optimizer"] = not ds.torch_adam
    if ds.offload_param and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    if ds.zero_stage == 3:
        # Gather full weights on save so HF dirs are written without a separate zero_to_fp32 pass.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if not ds.torch_adam:
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": optim.learning_rate, "betas": list(optim.adam_betas),
                                                        "weight_decay": optim.weight_decay}}
    return cfg


def build_optimizer(model, optim: OptimConfig):
    """AdamW; biases and norm weights get no weight decay (decaying a LayerNorm gain toward 0 only hurts)."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=optim.learning_rate, betas=tuple(optim.adam_betas))


def cosine_lr_factor(step: int, num_training_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup (step+1)/(warmup+1), then cosine decay to `min_lr_ratio` at
    `num_training_steps`, flat after it."""
    if step < warmup_steps:
        # transformers starts at exactly 0, so the first update is a no-op: with the 1-10 update steps of a
        # per-round RM retrain that is a large share of the work lost.
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, num_training_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_with_min_lr(optimizer, num_training_steps: int, optim: OptimConfig):
    """OpenRLHF's `cosine_with_min_lr` (transformers' schedule: warmup = ceil(warmup_ratio * steps), floor
    min_lr_ratio * lr) with two changes: the warmup's first step is not at LR 0, and past `num_training_steps`
    the LR stays at the floor (transformers' cosine climbs back up there, which an engine reused for extra
    steps, e.g. RM retraining each round, would hit)."""
    from torch.optim.lr_scheduler import LambdaLR

    warmup = math.ceil(optim.warmup_ratio * num_training_steps)
    return LambdaLR(optimizer, lambda s: cosine_lr_factor(s, num_training_steps, warmup, optim.min_lr_ratio))


def num_update_steps(n_examples: int, optim: OptimConfig, epochs: float = 1.0, world: Optional[int] = None) -> int:
    world = world or world_size()
    per_update = optim.micro_batch_size * optim.gradient_accumulation_steps * world
    return max(1, math.ceil(n_examples * epochs / per_update))


# ------------------------------------------------------------------------------------------ engines
def build_train_engine(model, params: Params, optim: OptimConfig, num_training_steps: int):
    """A DeepSpeed training engine around `model` (an HF module) with AdamW and the cosine schedule."""
    import deepspeed

    init_distributed()
    if params.models.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
        if hasattr(model, "config"):
            model.config.use_cache = False
    cfg = ds_config(params.deepspeed, optim)
    client_opt = build_optimizer(model, optim) if params.deepspeed.torch_adam else None
    engine, *_ = deepspeed.initialize(
        model=model, config=cfg, optimizer=client_opt,
        model_parameters=None if client_opt is not None else [p for p in model.parameters() if p.requires_grad],
        lr_scheduler=lambda opt: cosine_with_min_lr(opt, num_training_steps, optim))
    return engine


def build_inference_engine(model, params: Params):
    """Frozen model for forward passes only (the PPO reference policy, a scored RM). Under ZeRO-3 the weights
    are partitioned across ranks like the trained models; otherwise a plain module on the device."""
    import torch

    model.eval()
    model.requires_grad_(False)
    if params.deepspeed.zero_stage == 3:
        import deepspeed

        init_distributed()
        cfg = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
               "bf16": {"enabled": params.deepspeed.precision == "bf16"}, "steps_per_print": 10**9}
        engine, *_ = deepspeed.initialize(model=model, config=cfg)
        engine.eval()
        return engine
    dtype = torch.bfloat16 if params.deepspeed.precision == "bf16" else None
    return model.to(device=comm_device(), dtype=dtype)


def unwrap(model_or_engine):
    return getattr(model_or_engine, "module", model_or_engine)


def is_zero3(engine) -> bool:
    return bool(getattr(engine, "zero_optimization_partition_weights", lambda: False)())


def consolidated_state_dict(engine) -> Optional[dict]:
    """Full weights; collective under ZeRO-3 (every rank must call), meaningful on rank 0."""
    if is_zero3(engine):
        return engine._zero3_consolidated_16bit_state_dict()
    return unwrap(engine).state_dict()


def save_hf(engine, tokenizer, out_dir: str | Path, extra_json: Optional[dict] = None) -> Path:
    """Save the engine's model as an HF directory (safetensors). Collective; rank 0 writes, the others wait.
    A LoRA policy is saved merged (base + adapter delta, base key names): every checkpoint loads with plain
    transformers, and the registry serves it as is."""
    from gapo.models.adapters import has_lora, merged_state_dict
    from gapo.models.loading import save_pretrained

    state = engine._zero3_consolidated_16bit_state_dict() if is_zero3(engine) else None
    if has_lora(unwrap(engine)):
        state = merged_state_dict(unwrap(engine)) if state is None else _merge_lora_keys(unwrap(engine), state)
    if is_main():
        save_pretrained(unwrap(engine), tokenizer, out_dir, extra_json=extra_json, state_dict=state)
    barrier()
    return Path(out_dir)


def _merge_lora_keys(module, state: Optional[dict]) -> Optional[dict]:
    """ZeRO-3: the consolidated state dict of a LoRA module, merged the same way (rank 0 holds it)."""
    if state is None:
        return None
    from gapo.models.adapters import merged_state_dict

    original = {k: v.clone() for k, v in module.state_dict().items()}
    module.load_state_dict(state, strict=False)
    try:
        return merged_state_dict(module)
    finally:
        module.load_state_dict(original, strict=False)


def save_critic(critic_or_engine, out_dir) -> Path:
    """A gapo.models.critic.Critic as load_critic reads it: HF dir of the backbone (safetensors) + value_head.safetensors + critic.json (+ encoder tokenizer).
    Collective under ZeRO-3 (every rank must call); rank 0 writes atomically."""
    from safetensors.torch import save_file

    from gapo.io import atomic_dir, write_json
    from gapo.models.critic import CRITIC_FILE, HEAD_FILE
    from gapo.models.loading import quiet_transformers

    module = unwrap(critic_or_engine)
    state = consolidated_state_dict(critic_or_engine)
    if is_main():
        quiet_transformers()
        back = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        head = {k[len("value_head."):]: v.detach().cpu().contiguous() for k, v in state.items()
                if k.startswith("value_head.")}
        with atomic_dir(Path(out_dir)) as tmp:
            module.backbone.save_pretrained(tmp, state_dict=back)
            save_file(head, str(tmp / HEAD_FILE))
            info = {"init": module.init, "max_length": module.bridge.max_length if module.bridge else None}
            write_json(tmp / CRITIC_FILE, info)
            if module.bridge is not None:
                module.bridge.etok.save_pretrained(tmp)
    barrier()
    return Path(out_dir)


def save_engine_state(engine, state_dir: str | Path, client_state: Optional[dict] = None) -> Path:
    """Optimizer + LR scheduler + step counters (and DeepSpeed's copy of the weights) for an exact resume.
    Collective. These are our own files, read back with pickle by DeepSpeed; never load a foreign state dir."""
    engine.save_checkpoint(str(state_dir), tag="state", client_state=client_state or {}, save_latest=False)
    return Path(state_dir)


def load_engine_state(engine, state_dir: str | Path) -> dict:
    from gapo.errors import ModelError

    path = Path(state_dir)
    if not (path / "state").is_dir():
        raise ModelError(f"{path}: no DeepSpeed state (expected {path / 'state'}); cannot resume from it")
    load_path, client_state = engine.load_checkpoint(str(path), tag="state", load_optimizer_states=True,
                                                     load_lr_scheduler_states=True)
    if load_path is None:
        raise ModelError(f"{path}: DeepSpeed could not load the engine state")
    return client_state or {}


# ------------------------------------------------------------------------------------------ launchers
def launcher_env() -> dict:
    """The environment for a child launcher: without the single-process rendezvous variables we set, which
    would otherwise make every child believe it is rank 0 of a 1-process world."""
    env = dict(os.environ)
    if env.pop(_SET_BY_US, None):
        for k in _SINGLE_PROCESS_VARS:
            env.pop(k, None)
    return env


def launcher_command(gapo_args: list[str], ds: DeepSpeedConfig) -> list[str]:
    """The launcher command line that runs `gapo <gapo_args>` on every rank, as `python -m gapo.cli` (the console
    script's own module: the same interpreter on every node, no PATH lookup). `torchrun` starts the ranks of THIS
    node only (static rendezvous on 127.0.0.1:master_port); for several nodes use `deepspeed` with a hostfile (it
    starts every node's ranks over pdsh), or start `torchrun --nnodes ... -m gapo.cli ...` on each node yourself
    (infra/deepspeed/README.md)."""
    if ds.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ds.num_processes}",
                "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={ds.master_port}", "-m", CLI_MODULE,
                *gapo_args]
    if ds.launcher == "deepspeed":
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", str(ds.num_processes),
               "--master_port", str(ds.master_port)]
        if ds.hostfile:
            cmd += ["--hostfile", ds.hostfile]
        return cmd + ["--module", CLI_MODULE, *gapo_args]
    raise ValueError(f"deepspeed.launcher={ds.launcher!r} launches nothing")


def inside_launcher() -> bool:
    """Whether this process is a rank some launcher started (torchrun, deepspeed, pdsh on another node, a
    Kubernetes PyTorchJob): it has RANK / LOCAL_RANK that WE did not set for a bare process. GAPO_LAUNCHED alone is
    not enough: DeepSpeed's multi-node runner forwards only a few variable prefixes to the ranks it starts."""
    if os.environ.get("GAPO_LAUNCHED") == "1":
        return True
    if os.environ.get(_SET_BY_US) == "1":
        return False
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def launch_dir(ws) -> Path:
    """Scratch directory for the merged params and the summary of one launched job: under the workspace, which a
    multi-node job must have on a shared filesystem anyway (a local /tmp is invisible to the other nodes).
    `<workspace>/tmp/` is git-ignored and no DVC output."""
    import uuid

    d = Path(ws.root).resolve() / "tmp" / f"launch-{uuid.uuid4().hex[:12]}"
    d.mkdir(parents=True, exist_ok=False)
    return d


def maybe_relaunch(stage_args: list[str], params: Params, ws) -> Optional[dict]:
    """If params ask for a launcher and we are not inside one yet, run `gapo <stage_args>` (e.g. `adversarial
    --round 2`) under it with the merged params (profiles and -S overrides included) and return rank 0's summary;
    else None (run in-process)."""
    import json
    import shutil

    from gapo.config import dump_params
    from gapo.errors import GapoError

    if params.deepspeed.launcher == "none" or inside_launcher():
        return None
    what = "gapo " + " ".join(stage_args)
    tmp = launch_dir(ws)
    try:
        pfile, sfile = tmp / "params.yaml", tmp / "summary.json"
        pfile.write_text(dump_params(params), encoding="utf-8")
        env = launcher_env()
        env["GAPO_LAUNCHED"] = "1"
        cmd = launcher_command(["--params", str(pfile), "--workdir", str(Path(ws.root).resolve()),
                                "--summary", str(sfile), *stage_args], params.deepspeed)
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise GapoError(f"{what}: launcher {params.deepspeed.launcher} exited with status {proc.returncode}")
        if not sfile.is_file():
            raise GapoError(f"{what}: launcher {params.deepspeed.launcher} finished but rank 0 wrote no summary "
                            f"({sfile})")
        return json.loads(sfile.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
