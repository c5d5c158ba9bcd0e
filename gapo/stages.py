"""One function per pipeline stage: the only entry point the CLI, dvc.yaml and the Prefect flow call.

Each stage takes the validated `Params` and a `Workspace`, reads the files earlier stages wrote,
writes its own outputs atomically and returns a small JSON-able summary (paths, counts, metrics).
Heavy imports happen inside the functions so `gapo --help` stays fast.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from gapo.config import Params, render_params_yaml
from gapo.paths import Workspace


@dataclass
class StageSpec:
    fn: Callable[..., Any]
    help: str
    arguments: list[tuple[tuple, dict]] = field(default_factory=list)
    print_result: bool = True

    @property
    def dests(self) -> list[str]:
        out = []
        for args, kwargs in self.arguments:
            out.append(kwargs.get("dest") or args[0].lstrip("-").replace("-", "_"))
        return out


def config(params: Params, ws: Workspace, write: str | None = None) -> None:
    """Print (or write) the fully merged, validated params: how a profile becomes a params.yaml."""
    text = render_params_yaml(params)
    if write:
        from gapo.io import atomic_file

        with atomic_file(write) as fh:
            fh.write(text)
    else:
        print(text, end="")


def prepare(params: Params, ws: Workspace) -> dict:
    from gapo.data.prepare import run_prepare

    return run_prepare(params, ws)


STAGES: dict[str, StageSpec] = {
    "config": StageSpec(config, "print or write the merged, validated params",
                        [(("--write",), {"default": None, "help": "write to this file instead of stdout"})],
                        print_result=False),
    "prepare": StageSpec(prepare, "generate / load constraint data and write data/"),
}
