"""Every plot follows scanpy: shown and ``None`` by default, the Figure on request, drawn once in a notebook."""

import matplotlib.pyplot as plt
import nbformat
import pandas as pd
import pytest
from matplotlib.figure import Figure
from nbclient import NotebookClient

import histodecon as hd

RESULTS = pd.DataFrame(
    {
        "configuration": ["uni", "uni", "conch"],
        "sample": ["A1", "B1", "A1"],
        "cc": [0.4, 0.3, 0.5],
        "l1": [0.8, 0.9, 0.7],
    }
)


@pytest.fixture(scope="module")
def sdata():
    sdata = hd.datasets.synthetic(n_spots=60, counts=False)
    table = sdata.tables["table"]
    table.obsm["pred_abund"] = table.obsm["abund"] ** 0.8
    hd.gr.rbf_graph(sdata, length_scale_um=150)
    for key in ("abund", "pred_abund"):
        hd.gr.moran_r(sdata, key=key)
    return sdata


def _plots(sdata):
    """Each plot with its arguments, and its number of panels."""
    return {
        "scores": (lambda **kw: hd.pl.scores(RESULTS, **kw), 2),
        "colocalization": (lambda **kw: hd.pl.colocalization(sdata, **kw), 2),
        "spatial_abundance": (lambda **kw: hd.pl.spatial_abundance(sdata, "tumour", max_image_px=100, **kw), 2),
    }


@pytest.mark.parametrize("name", ["scores", "colocalization", "spatial_abundance"])
def test_show_and_return_fig_as_scanpy(sdata, name, monkeypatch):
    plot, n_panels = _plots(sdata)[name]
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(name))
    assert plot() is None and shown == [name]  # default: shown once, nothing returned
    figure = plot(return_fig=True)
    assert isinstance(figure, Figure) and shown == [name]  # the Figure, not shown
    axes = plot(show=False)
    assert len(axes) == n_panels and all(ax.figure is axes[0].figure for ax in axes) and shown == [name]
    fig, given = plt.subplots(1, n_panels)
    assert plot(ax=given) == list(given) and shown == [name]  # into the caller's Axes: the caller shows
    assert plot(ax=given, show=True) is None and shown == [name, name]


NOTEBOOK = [
    """import histodecon as hd
import pandas as pd
sdata = hd.datasets.synthetic(n_spots=60, counts=False)
table = sdata.tables["table"]
table.obsm["pred_abund"] = table.obsm["abund"] ** 0.8
hd.settings.verbosity = 0
hd.gr.rbf_graph(sdata, length_scale_um=150)
hd.gr.moran_r(sdata, key="abund")
hd.gr.moran_r(sdata, key="pred_abund")""",
    f"hd.pl.scores(pd.DataFrame({RESULTS.to_dict(orient='list')!r}))",
    "hd.pl.colocalization(sdata)",
    'hd.pl.spatial_abundance(sdata, "tumour", max_image_px=100)',
    'fig = hd.pl.scores(pd.DataFrame({"configuration": ["a"], "sample": ["s"], "cc": [0.1], "l1": [0.2]}), return_fig=True)',
]


def test_each_plot_cell_of_a_notebook_displays_one_image():
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in NOTEBOOK])
    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    images = [sum("image/png" in output.get("data", {}) for output in cell.outputs) for cell in notebook.cells]
    # the returned Figure of the last cell is assigned, so pyplot's inline backend draws it once at the end
    assert images == [0, 1, 1, 1, 1]
