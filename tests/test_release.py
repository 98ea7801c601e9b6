"""The release: the sdist and wheel build, pass ``twine check``, hold what they should, and the wheel runs.

The wheel is installed with ``--no-deps`` into a folder outside the source tree and a synthetic
embed -> fit -> predict runs from it in a fresh interpreter whose ``sys.path`` has that folder
first and not ``src/``, so that a module missing from the wheel fails here and not for users.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import histodecon as hd

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
#: What the sdist ships at its top level: enough to build the wheel and run the tests.
SDIST_TOP = {"src", "tests", "README.md", "CHANGELOG.md", "LICENSE", "pyproject.toml", "PKG-INFO", ".gitignore"}
#: The extras the README and docs/installation.md name.
EXTRAS = {"deconv", "test", "docs", "all"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel (built from the sdist, as ``python -m build`` does), without isolation."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_twine_accepts_the_sdist_and_the_wheel(dist):
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist["sdist"]), str(dist["wheel"])],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_wheel_holds_the_package_only_and_all_of_it(dist):
    with zipfile.ZipFile(dist["wheel"]) as archive:
        names = archive.namelist()
    package = {n for n in names if n.startswith("histodecon/")}
    info = {n for n in names if n.startswith(f"histodecon-{hd.__version__}.dist-info/")}
    assert package | info == set(names)  # no tests, notebooks, benchmarks, docs or data
    sources = {str(p.relative_to(SRC)) for p in (SRC / "histodecon").rglob("*.py")}
    assert package == sources
    assert f"histodecon-{hd.__version__}.dist-info/licenses/LICENSE" in info


def test_sdist_holds_sources_tests_and_licence_only(dist):
    with tarfile.open(dist["sdist"]) as archive:
        names = archive.getnames()
    top = {name.split("/")[1] for name in names if "/" in name}
    assert top == SDIST_TOP
    assert not [n for n in names if n.endswith(".ipynb") or "/benchmarks/" in n or "/docs/" in n]


def test_version_is_single_sourced_and_metadata_complete(dist):
    metadata = wheel_metadata(dist["wheel"])
    assert metadata["Version"] == hd.__version__
    assert dist["wheel"].name == f"histodecon-{hd.__version__}-py3-none-any.whl"
    assert metadata["License-Expression"] == "BSD-3-Clause" and metadata["License-File"] == "LICENSE"
    assert metadata["Requires-Python"] == ">=3.11"
    assert set(metadata.get_all("Provides-Extra")) == EXTRAS
    classifiers = metadata.get_all("Classifier")
    assert "Topic :: Scientific/Engineering :: Bio-Informatics" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression says it
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "pip install histodecon" in metadata.get_payload()  # the README is the long description


def test_install_docs_name_only_extras_that_exist():
    lines = (ROOT / "README.md").read_text() + (ROOT / "docs" / "installation.md").read_text()
    named = set(re.findall(r"histodecon\[([a-z,]+)\]", lines))
    assert named and {extra for group in named for extra in group.split(",")} <= EXTRAS


PIPELINE = textwrap.dedent(
    """
    import json
    import sys
    target, src = sys.argv[1], sys.argv[2]
    sys.path[:] = [target] + [p for p in sys.path if p not in (src, "", ".") and not p.startswith(src)]
    import histodecon as hd
    assert hd.__file__.startswith(target), hd.__file__
    train = [hd.datasets.synthetic(n_spots=12, seed=s, sample=f"s{s}") for s in range(2)]
    new = hd.datasets.synthetic(n_spots=12, seed=5, sample="new")
    for sdata in [*train, new]:
        hd.tl.embed(sdata, models=["handcrafted"], device="cpu")
    model = hd.tl.fit(train, features=["handcrafted"], target="abund", hidden=(8,), max_epochs=2)
    hd.tl.predict(new, model)
    table = new.tables["table"]
    prediction, truth = table.obsm["pred_abund"], table.obsm["abund"]
    assert prediction.shape == truth.shape == (12, truth.shape[1]), prediction.shape
    modules = [m.__file__ for name, m in sys.modules.items() if name.startswith("histodecon")]
    print(json.dumps({"version": hd.__version__, "modules": modules}))
    """
)


def test_wheel_installed_elsewhere_runs_embed_fit_predict(dist, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(dist["wheel"])],
        check=True,
        capture_output=True,
    )
    assert not (target / "tests").exists() and (target / "histodecon" / "__init__.py").is_file()
    result = subprocess.run(
        [sys.executable, "-c", PIPELINE, str(target), str(SRC)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["version"] == hd.__version__
    assert len(report["modules"]) > 50  # the whole package was imported and run ...
    assert all(Path(module).is_relative_to(target) for module in report["modules"])  # ... from the wheel
