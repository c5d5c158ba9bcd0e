"""`gapo <stage>`: the command line of every pipeline stage (DVC stages and Prefect tasks call the same
functions in gapo.stages).

    gapo prepare                      # run a stage with params.yaml
    gapo sft -S sft.optim.learning_rate=1e-3 -S seed=7
    gapo --profile tiny adversarial   # merge profiles/tiny.yaml over params.yaml
    gapo config --profile tiny --write params.yaml

A stage with `deepspeed.launcher` torchrun / deepspeed relaunches this same command on every rank
(gapo.train.engine.maybe_relaunch); a launched rank runs the stage's recipe only: the launching `gapo` holds the
workspace lock and the MLflow run, and rank 0 writes the stage's result to `--summary` for it.

Errors a user can fix (bad params, bad data, bad model path) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gapo.errors import INPUT_ERRORS, GapoError, describe_input_error, one_line

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line like every other user error, not usage + message
        print(f"error: {self.prog}: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def _build_parser() -> argparse.ArgumentParser:
    from gapo import stages

    parser = _Parser(prog="gapo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--profile", default=None, help="merge profiles/<name>.yaml over the params file")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a param, as in `dvc exp run -S` (repeatable)")
    parser.add_argument("--workdir", default=".", help="workspace root holding data/, checkpoints/, metrics/")
    # set by gapo.train.engine.maybe_relaunch for the ranks it launches, and by DeepSpeed's launcher (which puts
    # `--local_rank=N` right after the module name); not for users
    parser.add_argument("--summary", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, spec in stages.STAGES.items():
        p = sub.add_parser(name, help=spec.help.replace("%", "%%"), description=spec.help)
        # the same global flags after the stage name, as users type them either way
        p.add_argument("-S", "--set", dest="stage_overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
        for args, kwargs in spec.arguments:
            p.add_argument(*args, **kwargs)
    return parser


def _workdir(text: str) -> Path:
    """--workdir resolved; an existing path must be a directory (a missing one is created by the stage)."""
    path = Path(text).expanduser()
    try:
        root = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise GapoError(f"--workdir {text}: cannot resolve ({exc})") from None
    if root.exists() and not root.is_dir():
        raise GapoError(f"--workdir {text}: is a file, expected the workspace directory")
    return root


def _env_seconds(name: str, default: float) -> float:
    """A duration in seconds from the environment: a finite number >= 0, else a one-line error."""
    import math

    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise GapoError(f"environment {name}={raw[:40]!r}: expected a number of seconds >= 0")
    return value


def _sweep_leftovers(root: Path) -> None:
    """Temp files of a killed earlier attempt (gapo.sweep), under the stage lock; a failure to delete one must not
    cost the stage, so it is a warning."""
    from gapo.sweep import report, sweep_temp_files

    try:
        report("temp file(s)", sweep_temp_files(root))
    except OSError as exc:
        print(f"gapo: warning: leftovers of a killed run not swept: {one_line(str(exc))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from gapo.redaction import redacting_output

    # Credentials in a URI never reach the terminal: not in our lines, nor in MLflow's or urllib3's warnings.
    with redacting_output():
        return _main(argv)


def _main(argv: list[str] | None = None) -> int:
    from gapo import stages
    from gapo.config import load_params
    from gapo.paths import Workspace
    from gapo.train.engine import inside_launcher

    parser = _build_parser()
    ns = parser.parse_args(argv)
    overrides = list(ns.overrides) + list(ns.stage_overrides)
    try:
        spec = stages.STAGES[ns.stage]
        params_path = Path(ns.params)
        params = load_params(params_path if params_path.exists() or ns.params != "params.yaml" else None,
                             overrides, ns.profile)
        extra = {dest: getattr(ns, dest) for dest in spec.dests}
        ws = Workspace(_workdir(ns.workdir))
        if ns.stage == "evaluate":  # --output / --samples never overwrite an input or a tracked file
            from gapo.io import check_output_paths

            check_output_paths({"--output": extra.get("output"), "--samples": extra.get("samples")},
                               {"--input": extra.get("input_path"), "--responses": extra.get("responses_path"),
                                "evaluate.input": params.evaluate.input, "--params": params_path,
                                "the prepared input": ws.jsonl("ifeval", params.evaluate.split)}, ws.root)
        if ns.stage in stages.LAUNCHABLE and inside_launcher():  # one rank; the launching process owns the lock
            # and the MLflow run
            return _launched_rank(spec, params, ws, extra, ns.summary)
        if ns.stage in stages.PIPELINE:  # one writer per workspace (a dvc repro and a flow run must not interleave)
            from gapo.io import workspace_lock

            # the wait lets a rerun start while the stage of a killed run is still shutting down (it got SIGTERM
            # from the flow's death)
            wait = _env_seconds("GAPO_WORKSPACE_LOCK_TIMEOUT_S", 60.0)
            with workspace_lock(ws.root, "stage", f"gapo {ns.stage}", timeout_s=wait):
                _sweep_leftovers(ws.root)
                result = spec.fn(params, ws, **extra)
        else:
            result = spec.fn(params, ws, **extra)
    except GapoError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except INPUT_ERRORS as exc:  # the input or the machine, not a bug: one line too (GAPO_TRACEBACK=1 to debug)
        if os.environ.get("GAPO_TRACEBACK", "").strip() not in ("", "0"):
            raise
        print(f"error: {one_line(describe_input_error(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if result is not None and spec.print_result:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def _launched_rank(spec, params, ws, extra: dict, summary: str | None) -> int:
    """The stage on one launched rank: untracked (functools.wraps keeps the stage function under the MLflow
    wrapper), and only rank 0 reports, to `summary` when the launching process asked for it."""
    from gapo.train.engine import is_main

    result = getattr(spec.fn, "__wrapped__", spec.fn)(params, ws, **extra)
    if is_main():
        if summary:
            from gapo.io import write_json

            write_json(summary, result)
        elif result is not None and spec.print_result:
            print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


# `python -m gapo.cli` is `gapo`: the command the launchers run on every rank (gapo.train.engine.launcher_command)
if __name__ == "__main__":
    sys.exit(main())
