"""`gapo --help` and `gapo <stage> --help` print usage and exit 0 (argparse %-formats help strings, so a bare
"%" in a stage's help once crashed the top-level help with a ValueError)."""
from __future__ import annotations

import pytest

from gapo import cli, stages


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in stages.STAGES])
def test_help_prints_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: gapo")
    if argv[0] == "--help":
        assert all(name in out for name in stages.STAGES)
