"""The API reference: every documented example runs, and every Returns section renders as one entry.

The documented objects are those of ``docs/api.md`` (its autosummary lists), with the public
methods of its classes.
"""

import doctest
import inspect
import re
from pathlib import Path

import matplotlib
import pytest
from sphinx.ext.napoleon import Config
from sphinx.ext.napoleon.docstring import NumpyDocstring

import histodecon as hd

API = Path(__file__).parents[1] / "docs" / "api.md"

#: Objects whose examples skip some lines (``# doctest: +SKIP``), and why: each needs data or
#: weights the suite does not have, a cluster, the Hub, or a cell2location training of minutes.
EXPLAINED_SKIPS = {
    "io.read_st": "reads her2st's files from disk",
    "io.read_visium": "reads a Space Ranger folder",
    "io.from_anndata": "downloads a Visium dataset with scanpy",
    "io.from_spatialdata": "reads a Space Ranger folder with spatialdata-io and needs UNI's weights",
    "io.read_slide": "reads a whole-slide image",
    "io.read_hest": "reads a HEST dataset",
    "io.read_visium_hd": "reads a Visium HD folder",
    "io.read_xenium": "reads a Xenium folder",
    "datasets.her2st": "reads her2st's files from ../shared/data",
    "pp.spot_patches": "reads a her2st section",
    "tl.embed_many": "starts a dask cluster",
    "tl.reference_signatures": "trains cell2location's reference model (minutes)",
    "tl.deconvolve": "trains cell2location (minutes)",
    "tl.cross_validate": "reads her2st's sections",
    "tl.AbundanceRegressor.save": "writes a model folder",
    "tl.AbundanceRegressor.load": "reads a saved model, or one on the Hub",
    "tl.AbundanceRegressor.push_to_hub": "uploads to the Hugging Face Hub",
}
#: Examples that train or embed several slides: more than ~30 s on a loaded 2-core machine.
SLOW = {"tl.embed", "tl.embed_many", "tl.predict_many", "tl.fit", "tl.predict"}


def documented() -> dict[str, object]:
    """``"module.name"`` (and ``"module.Class.method"``) -> object, for everything docs/api.md lists."""
    objects = {}
    for module, name in re.findall(r"^   ([a-z]+)\.(\w+)$", API.read_text(), flags=re.MULTILINE):
        obj = getattr(getattr(hd, module), name)
        objects[f"{module}.{name}"] = obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                function = getattr(member, "__func__", member)
                if not attr.startswith("_") and inspect.isfunction(function):
                    objects[f"{module}.{name}.{attr}"] = function
    return objects


OBJECTS = documented()
FINDER = doctest.DocTestFinder(recurse=False)
WITH_EXAMPLES = {
    name: test for name, obj in OBJECTS.items() for test in FINDER.find(obj, name, globs={}) if test.examples
}


def test_the_reference_lists_the_api():
    assert {"tl.predict", "pl.scores", "gr.moran_r", "tl.AbundanceRegressor.predict"} <= set(OBJECTS)
    assert len(WITH_EXAMPLES) > 30


def test_every_skipped_example_is_explained():
    # mutation: a new `# doctest: +SKIP` without an entry in EXPLAINED_SKIPS fails here
    skipping = {name for name, test in WITH_EXAMPLES.items() if any(doctest.SKIP in e.options for e in test.examples)}
    assert skipping == set(EXPLAINED_SKIPS)


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in WITH_EXAMPLES]
)
def test_examples_run(name, monkeypatch, tmp_path):
    # mutation: the old predict example (a `model` it never made, unskipped) fails with a NameError
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # examples that save write here
    monkeypatch.setattr(hd.settings, "progress", False)
    test = WITH_EXAMPLES[name]
    test.globs = {}
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


NAPOLEON = Config(napoleon_google_docstring=False, napoleon_numpy_docstring=True, napoleon_use_rtype=True)


@pytest.mark.parametrize(
    "name", [name for name, obj in OBJECTS.items() if "\nReturns\n" in inspect.cleandoc(obj.__doc__ or "")]
)
def test_returns_render_as_one_entry(name):
    """A numpydoc Returns section is a type line and an indented description; free text breaks into a list.

    napoleon turns each unindented line into an entry of its own, so a wrapped sentence became
    a bullet list with raw ``None`` as a type (mutation: unindenting a description fails here).
    """
    rendered = str(NumpyDocstring(inspect.cleandoc(OBJECTS[name].__doc__), NAPOLEON, what="function"))
    assert ":returns:" in rendered or ":rtype:" in rendered, f"{name}: the Returns section is lost"
    returns = rendered[rendered.find(":returns:") :]
    assert not returns.startswith(":returns: *"), f"{name} renders its Returns as a list:\n{returns[:400]}"
