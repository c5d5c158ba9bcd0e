"""The flow's plain helpers: params overrides, subprocess timeout/kill and failure classes, the DVC cache key,
the retry condition. Real DVC on a one-stage project; no Prefect server needed."""
from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.repo_copies import run, venv_bin

from flows import gapo_pipeline as fp
from flows import supervision


def test_configure_params_writes_profile_and_overrides(tmp_path):
    assert fp.configure_params(tmp_path, None, []) is True  # missing params.yaml: generated from the defaults
    assert fp.configure_params(tmp_path, None, []) is False
    assert fp.configure_params(tmp_path, "tiny", ["ppo.init_kl_coef=0.05", "params.yaml:adversarial.rounds=1"])
    tree = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert tree["ppo"]["init_kl_coef"] == 0.05 and tree["adversarial"]["rounds"] == 1
    assert tree["models"]["policy"] == "builtin:llama-tiny"
    # idempotent: the same profile and overrides leave the file as it is
    assert fp.configure_params(tmp_path, "tiny", ["ppo.init_kl_coef=0.05", "adversarial.rounds=1"]) is False
    from gapo.config import ConfigError

    with pytest.raises(ConfigError, match="ppo.no_such_knob"):
        fp.configure_params(tmp_path, None, ["ppo.no_such_knob=1"])


def test_run_logged_failure_classes(tmp_path):
    lines = []

    class Log:
        def info(self, msg):
            lines.append(msg)

    supervision.run_logged([sys.executable, "-c", "print('hello')"], tmp_path, None, 60, "ok", Log())
    assert lines == ["hello"]
    with pytest.raises(supervision.StageFailed) as crash:
        supervision.run_logged([sys.executable, "-c", "import sys; print('boom'); sys.exit(1)"], tmp_path, None, 60, "crash")
    assert crash.value.transient and crash.value.returncode == 1 and "boom" in str(crash.value)
    with pytest.raises(supervision.StageFailed) as user:
        supervision.run_logged([sys.executable, "-c", "import sys; sys.exit(2)"], tmp_path, None, 60, "bad params")
    assert not user.value.transient


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(300)
    """)
    t0 = time.time()
    with pytest.raises(supervision.StageFailed, match="timed out") as err:
        supervision.run_logged([sys.executable, "-c", script], tmp_path, None, 3, "sleeper")
    assert not err.value.transient and time.time() - t0 < 60
    child = int(pidfile.read_text())
    time.sleep(0.5)
    import psutil

    # the grandchild died with its group (a zombie waiting for its new parent to reap it counts as dead)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


def test_retry_condition_reads_the_failure_class():
    from prefect.states import Failed

    assert fp.retry_transient(None, None, Failed(data=supervision.StageFailed("x", 1, "", transient=True)))
    assert not fp.retry_transient(None, None, Failed(data=supervision.StageFailed("x", 2, "", transient=False)))
    assert fp.retry_transient(None, None, Failed(data=OSError("disk hiccup")))


def test_dvc_cache_key_is_the_lock_entry_of_an_up_to_date_stage(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    run(["git", "init", "-q"], root)
    run([venv_bin("dvc"), "init", "-q"], root)
    (root / "params.yaml").write_text("a: 1\n")
    (root / "dvc.yaml").write_text("stages:\n  s:\n    cmd: python -c \"open('out.txt','w').write('x')\"\n"
                                   "    params: [a]\n    outs: [out.txt]\n")
    params = {"root": str(root), "stage": "s"}
    assert fp.dvc_cache_key(None, params) is None  # never ran: not cached
    run([venv_bin("dvc"), "repro", "-q"], root)
    key = fp.dvc_cache_key(None, params)
    assert key and key.startswith("gapo-") and key == fp.dvc_cache_key(None, params)
    (root / "params.yaml").write_text("a: 2\n")
    assert fp.dvc_cache_key(None, params) is None  # changed param: must run
    run([venv_bin("dvc"), "repro", "-q"], root)
    assert fp.dvc_cache_key(None, params) not in (None, key)
    assert fp.dvc_status(Path(root), "s") == {}
