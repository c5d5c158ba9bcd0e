"""Security defaults: safetensors only unless `models.allow_pickle`, no remote code unless
`models.trust_remote_code`, servers on loopback, and credentials taken from the environment are never logged."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tests.reliability import rel_helpers
from tests.reliability.rel_helpers import REPO

from gapo.config import ModelsConfig, load_params
from gapo.errors import ModelError

SECRETS = {**rel_helpers.SECRETS, "PREFECT_API_KEY": "s3cr3t-XYZ-prefect"}


def _pickle_only(src: Path, dest: Path) -> Path:
    import torch
    from safetensors.torch import load_file

    shutil.copytree(src, dest)
    torch.save(load_file(str(dest / "model.safetensors")), dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()
    return dest


def test_defaults_are_safe():
    p = load_params(REPO / "params.yaml")
    assert p.models.allow_pickle is False and p.models.trust_remote_code is False
    assert ModelsConfig().allow_pickle is False and ModelsConfig().trust_remote_code is False


def test_pickle_checkpoint_refused_unless_the_param_allows_it(tiny_model_dirs, tmp_path):
    from gapo.models.loading import load_policy

    policy, _ = tiny_model_dirs
    bad = _pickle_only(policy, tmp_path / "pickled")
    with pytest.raises(ModelError, match=r"pickle-only checkpoint \(pytorch_model\.bin\).*models\.allow_pickle=true"):
        load_policy(bad, ModelsConfig())
    model, _ = load_policy(bad, ModelsConfig(allow_pickle=True))  # explicit opt-in: loads, same weights
    ref, _ = load_policy(policy, ModelsConfig())
    a, b = model.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_remote_code_is_never_imported_unless_set(tiny_model_dirs, tmp_path):
    from gapo.models.loading import load_policy

    policy, _ = tiny_model_dirs
    d = tmp_path / "custom"
    shutil.copytree(policy, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="gapo-custom-arch", auto_map={"AutoConfig": "custom.CustomConfig",
                                                         "AutoModelForCausalLM": "custom.CustomModel"})
    (d / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "EXECUTED"
    (d / "custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(ModelError, match="needs custom code.*models.trust_remote_code=true only if you trust it"):
        load_policy(d, ModelsConfig())
    assert not marker.exists()


def test_servers_bind_to_loopback():
    """The servers the project starts (Prefect's ephemeral API, `mlflow ui/server/models serve` in the docs and
    scripts) listen on 127.0.0.1; only the containers bind 0.0.0.0, published on BIND_ADDRESS (tests/infra)."""
    from mlflow.cli import cli as mlflow_cli
    from prefect.settings import PREFECT_SERVER_API_HOST

    assert PREFECT_SERVER_API_HOST.value() == "127.0.0.1"
    for path in (["server"], ["models", "serve"]):  # `mlflow ui` is `mlflow server`
        cmd = mlflow_cli
        for name in path:
            cmd = cmd.commands[name]
        host = next(p for p in cmd.params if p.name == "host")
        assert host.default in ("127.0.0.1", "localhost"), (path, host.default)
    offenders = []
    for rel in subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout.split():
        if rel.startswith(("infra/", ".venv")) or not rel.endswith((".py", ".md", ".sh", ".yaml", ".yml", ".toml")):
            continue
        path = REPO / rel
        if not path.is_file() or rel == "tests/reliability/test_security.py":
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if re.search(r"(?:--host|\s-h)[ =]+(?!127\.0\.0\.1|localhost|\$|\{)[\w.]", line) or \
                    re.search(r"host\w*[\"']?\s*[=:]\s*[\"']?0\.0\.0\.0", line, re.I):
                offenders.append(f"{rel}:{i}: {line.strip()[:120]}")
    assert not offenders, offenders


def test_secrets_in_the_environment_are_never_logged(tmp_path, monkeypatch, capfd):
    """A stage run through the CLI with tracking on and fake credentials in the environment: no params, tags,
    artifacts, database bytes, workspace file or output line contains them."""
    from gapo import cli

    ws = tmp_path / "ws"
    ws.mkdir()
    for key, value in {**SECRETS, "GAPO_TRACKING": "on", "MLFLOW_TRACKING_USERNAME": "gapo-user",
                       "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ws)
    rc = cli.main(["--workdir", str(ws), "prepare", "-S", "data.num_products=10", "-S", "data.test_prompts=4",
                   "-S", "data.workers=1", "-S", "tracking.system_metrics_interval_s=1",
                   "-S", f"tracking.artifact_location={tmp_path}/art", "-S", "tracking.experiment=secrets"])
    out = capfd.readouterr()
    assert rc == 0, out.err[-3000:]
    needles = list(SECRETS.values())
    assert not [n for n in needles if n in out.out + out.err]
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("secrets").experiment_id])
    assert len(runs) >= 2  # the stage run and its parent
    for r in runs:
        values = list(r.data.params.values()) + list(r.data.tags.values()) + list(r.data.params) + list(r.data.tags)
        assert not [v for v in values for n in needles if n in v], r.info.run_id
    assert any(f.suffix == ".json" for f in (tmp_path / "art").rglob("*")), "artifacts were logged"
    assert not rel_helpers.grep_tree(tmp_path, needles)  # mlflow.db, artifacts, workspace outputs


def test_credentials_in_a_tracking_uri_are_redacted():
    from gapo.tracking.backend import redact, ui_url

    uri = "https://gapo-user:s3cr3t-XYZ@mlflow.example:5000/base"
    assert redact(uri) == "https://mlflow.example:5000/base"
    assert "s3cr3t" not in redact(ui_url(uri, "1", "abc"))
