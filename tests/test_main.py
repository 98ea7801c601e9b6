"""``python -m histodecon --version``; what it refuses is in the bad-input catalogue (tests/test_bad_inputs.py)."""

import subprocess
import sys

import histodecon as hd
from histodecon.__main__ import main


def test_version_prints_the_package_version(capsys):
    main(["--version"])
    assert capsys.readouterr().out == f"histodecon {hd.__version__}\n"


def test_python_dash_m_histodecon_version_runs_the_module():
    result = subprocess.run(
        [sys.executable, "-m", "histodecon", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == f"histodecon {hd.__version__}"
