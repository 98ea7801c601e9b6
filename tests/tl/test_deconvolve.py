import importlib.util
import logging
import sys

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from scipy import sparse

import histodecon as hd
from histodecon.tl._signatures import import_cell2location, reference_cells, select_genes

#: Tests that train or call cell2location; the others never import it (it takes 20-60 s).
needs_cell2location = pytest.mark.skipif(
    importlib.util.find_spec("cell2location") is None, reason="the `deconv` extra is not installed"
)

#: Spatial epochs enough for the synthetic slide (r > 0.7 for every type, with a margin).
RECOVERY_EPOCHS = 1000


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def quiet_progress():
    progress = hd.settings.progress
    hd.settings.progress = False
    yield
    hd.settings.progress = progress


def mean_signatures(ref: AnnData, labels_key: str = "cell_type") -> pd.DataFrame:
    """Genes x types mean counts per cell: the signature a perfect reference model would find."""
    counts = ref.X.toarray()
    labels = ref.obs[labels_key]
    return pd.DataFrame(
        {name: counts[(labels == name).to_numpy()].mean(axis=0) for name in labels.cat.categories},
        index=ref.var_names,
    )


@pytest.fixture(scope="module")
def _small_table(make_slide):
    return make_slide(seed=0, n_spots=40, sample="synthetic", counts=True).tables["table"]


@pytest.fixture
def table(_small_table):
    """A fresh synthetic slide table of 40 spots, counts in X and the truth in obsm["abund"]."""
    return _small_table.copy()


def pearson_per_type(estimate: pd.DataFrame, truth: pd.DataFrame) -> pd.Series:
    return pd.Series({name: np.corrcoef(estimate[name], truth[name])[0, 1] for name in truth.columns})


# --- Bad input: every case is refused or warned about before any training. ---


def test_normalised_counts_are_refused_naming_layer(table):
    table.layers["counts"] = table.X.copy()
    table.X = sparse.csr_matrix(np.log1p(table.X.toarray()))
    with pytest.raises(ValueError, match=r"raw counts.*layer="):
        hd.tl.deconvolve(table, mean_signatures(hd.datasets.synthetic_reference()), max_epochs=1, key_added="c2l")
    assert "c2l" not in table.obsm


def test_normalised_reference_is_refused(table):
    ref = hd.datasets.synthetic_reference(n_cells_per_type=20)
    ref.X = ref.X * 0.5
    with pytest.raises(ValueError, match="The reference `X` does not hold raw counts"):
        hd.tl.deconvolve(table, ref, labels_key="cell_type", max_epochs=1, key_added="c2l")


def test_no_shared_genes_is_refused(table):
    signatures = mean_signatures(hd.datasets.synthetic_reference(n_cells_per_type=20))
    signatures.index = [f"ENSG{i:011d}" for i in range(len(signatures))]
    with pytest.raises(ValueError, match="share no gene names"):
        hd.tl.deconvolve(table, signatures, max_epochs=1, key_added="c2l")


def test_few_shared_genes_warn(table, caplog, monkeypatch):
    signatures = mean_signatures(hd.datasets.synthetic_reference(n_cells_per_type=20)).iloc[:50]
    monkeypatch.setattr(hd.tl._deconvolve, "_train_spatial", _untrained)
    with caplog.at_level(logging.WARNING, logger="histodecon"):
        hd.tl.deconvolve(table, signatures, max_epochs=1, key_added="c2l")
    assert "share only 50 genes" in caplog.text


def _untrained(spots, signatures, **kwargs):
    """Stand-in for the training: zeros, to test the plumbing around it."""
    return np.zeros((spots.n_obs, signatures.shape[1])), 0.0


def test_missing_labels_column_lists_obs_columns(table):
    ref = hd.datasets.synthetic_reference(n_cells_per_type=20)
    with pytest.raises(KeyError, match=r"no `obs\['celltype'\]`.*\['cell_type'\]"):
        hd.tl.deconvolve(table, ref, labels_key="celltype", max_epochs=1, key_added="c2l")
    with pytest.raises(ValueError, match="needs `labels_key=`"):
        hd.tl.deconvolve(table, ref, max_epochs=1, key_added="c2l")


def test_rare_cell_types_warn_by_name(caplog):
    ref = hd.datasets.synthetic_reference(n_cells_per_type=20)
    keep = (ref.obs["cell_type"] != "adipocyte").to_numpy()
    keep[np.flatnonzero(ref.obs["cell_type"] == "adipocyte")[:4]] = True
    with caplog.at_level(logging.WARNING, logger="histodecon"):
        cells = reference_cells(ref[keep].copy(), labels_key="cell_type", batch_key=None, layer=None)
    assert "adipocyte (4)" in caplog.text
    assert "tumour" not in caplog.text
    assert list(cells.obs["label"].cat.categories) == ["tumour", "lymphocyte", "fibroblast", "adipocyte", "endothelial"]


def test_existing_result_is_refused_before_training(table, monkeypatch):
    """``obsm["abund"]`` of the synthetic slide holds the truth: deconvolving into it needs ``overwrite``."""

    def fail(*args, **kwargs):
        raise AssertionError("trained although the result exists")

    monkeypatch.setattr(hd.tl._deconvolve, "_train_spatial", fail)
    with pytest.raises(KeyError, match="overwrite=True"):
        hd.tl.deconvolve(table, mean_signatures(hd.datasets.synthetic_reference(n_cells_per_type=20)))


def test_missing_extra_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "cell2location", None)
    with pytest.raises(ImportError, match=r'pip install "histodecon\[deconv\]"'):
        import_cell2location()


@needs_cell2location
def test_spots_of_several_slides_are_trained_together_and_split_back(table, monkeypatch):
    other = table.copy()
    other.obs["sample"] = "other"
    other = other[:25].copy()
    seen = {}

    def spot_number(spots, signatures, **kwargs):
        seen["samples"] = spots.obs["sample"].tolist()
        return np.repeat(np.arange(spots.n_obs, dtype=float)[:, None], signatures.shape[1], axis=1), 1.0

    monkeypatch.setattr(hd.tl._deconvolve, "_train_spatial", spot_number)
    signatures = mean_signatures(hd.datasets.synthetic_reference(n_cells_per_type=20))
    hd.tl.deconvolve([table, other], signatures, key_added="c2l")
    assert seen["samples"] == ["synthetic"] * 40 + ["other"] * 25
    np.testing.assert_array_equal(table.obsm["c2l"]["tumour"], np.arange(40))
    np.testing.assert_array_equal(other.obsm["c2l"]["endothelial"], np.arange(40, 65))
    assert other.obsm["c2l"].index.equals(other.obs_names)
    assert table.uns["histodecon"]["deconvolve"]["c2l"]["samples"] == ["synthetic", "other"]


@needs_cell2location
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_gene_filter_matches_cell2location(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from cell2location.utils.filtering import filter_genes

    rng = np.random.default_rng(0)
    counts = sparse.csr_matrix(
        rng.poisson(rng.gamma(0.3, 1.0, (600, 400)) * rng.gamma(0.5, 2.0, 400)), dtype=np.float32
    )
    labels = pd.Series(pd.Categorical(np.repeat(["a", "b", "c"], 200)))
    ref = AnnData(X=counts, var=pd.DataFrame(index=[f"g{i}" for i in range(400)]))
    expected = ref.var_names.isin(filter_genes(ref))
    assert 0 < expected.sum() < 400
    np.testing.assert_array_equal(select_genes(counts, labels), expected)


def test_gene_filter_keeps_markers_of_small_types():
    counts = sparse.csr_matrix(np.r_[np.full((12, 1), 3.0), np.zeros((500, 1))])
    labels = pd.Series(pd.Categorical(["rare"] * 12 + ["common"] * 500))
    assert select_genes(counts, labels).tolist() == [True]
    half = sparse.csr_matrix(np.r_[np.full((6, 1), 3.0), np.zeros((506, 1))])
    assert select_genes(half, labels).tolist() == [False]


# --- Training. ---


@needs_cell2location
def test_signatures_belong_to_their_cell_type(quiet_progress):
    """Each learnt signature matches its own type's mean profile, whatever the label order.

    The synthetic labels are not in alphabetical order, which cell2location 0.1.5 mixes up
    (see :func:`histodecon.tl._signatures.fit_signatures`); a few epochs are enough to see it.
    """
    ref = hd.datasets.synthetic_reference(n_cells_per_type=40)
    assert list(ref.obs["cell_type"].cat.categories) != sorted(ref.obs["cell_type"].cat.categories)
    learnt = hd.tl.reference_signatures(ref, labels_key="cell_type", max_epochs=5, num_samples=5)
    truth = mean_signatures(ref).loc[learnt.index]
    assert learnt.columns.tolist() == truth.columns.tolist()
    r = pd.DataFrame(np.corrcoef(learnt.T, truth.T)[:5, 5:], index=learnt.columns, columns=truth.columns)
    assert (np.diag(r) > 0.95).all(), r
    assert (r.idxmax(axis=1) == r.index).all(), r


@pytest.fixture(scope="module")
def two_slides(make_slide):
    """Two synthetic slides deconvolved jointly for a few epochs, from mean signatures."""
    progress = hd.settings.progress
    hd.settings.progress = False
    slides = [
        make_slide(seed=0, n_spots=40, sample="a", counts=True),
        make_slide(seed=1, n_spots=30, sample="b", counts=True).tables["table"],
    ]
    hd.tl.deconvolve(
        slides,
        mean_signatures(hd.datasets.synthetic_reference(n_cells_per_type=30)),
        max_epochs=20,
        num_samples=10,
        key_added="c2l",
    )
    hd.settings.progress = progress
    return slides


#: Spatial epochs of the fast recovery test: about 15 s of CPU on 40 spots, r 0.63 to 0.88 for the abundant types.
FAST_RECOVERY_EPOCHS = 300


@needs_cell2location
@pytest.mark.usefixtures("one_thread")  # torch on two threads of a loaded CPU is several times slower
def test_recovers_abundances_in_a_few_seconds(table, quiet_progress):
    """Known abundances of 40 synthetic spots from their counts and the true mean signatures.

    The bar (r > 0.5 for every abundant type) fails a model trained for one epoch, whose
    abundances are near its prior (r < 0 here), and a trainer returning random numbers.
    Adipocytes (about 0.1 per spot) are left out, as in the slow end-to-end test.
    """
    signatures = mean_signatures(hd.datasets.synthetic_reference(n_cells_per_type=30))
    hd.tl.deconvolve(
        table,
        signatures,
        max_epochs=FAST_RECOVERY_EPOCHS,
        num_samples=10,
        n_cells_per_location=10,
        detection_alpha=200,  # the synthetic counts have no within-slide technical variation
        key_added="c2l",
    )
    r = pearson_per_type(table.obsm["c2l"], table.obsm["abund"])
    assert (r.drop("adipocyte") > 0.5).all(), r


@needs_cell2location
def test_abundances_split_back_to_each_slide(two_slides):
    tables = [two_slides[0].tables["table"], two_slides[1]]
    for table, n in zip(tables, (40, 30), strict=True):
        frame = table.obsm["c2l"]
        assert isinstance(frame, pd.DataFrame)
        assert frame.index.equals(table.obs_names)
        assert frame.columns.tolist() == ["tumour", "lymphocyte", "fibroblast", "adipocyte", "endothelial"]
        assert frame.shape == (n, 5)
        assert np.isfinite(frame.to_numpy()).all() and (frame.to_numpy() > 0).all()


@needs_cell2location
def test_provenance_records_the_run(two_slides):
    record = two_slides[1].uns["histodecon"]["deconvolve"]["c2l"]
    assert record["epochs"] == 20
    assert record["samples"] == ["a", "b"]
    assert record["n_genes"] == 300
    assert record["reference"] == {"kind": "signatures", "n_genes": 300}
    assert np.isfinite(record["elbo"]) and record["elbo"] > 0
    assert set(record["versions"]) == {"cell2location", "scvi-tools", "pyro-ppl", "torch"}


@needs_cell2location
def test_rerun_needs_overwrite(two_slides):
    with pytest.raises(KeyError, match="overwrite=True"):
        hd.tl.deconvolve(
            two_slides, mean_signatures(hd.datasets.synthetic_reference(n_cells_per_type=5)), key_added="c2l"
        )


@needs_cell2location
@pytest.mark.slow
def test_recovers_synthetic_abundances(quiet_progress, make_slide):
    """Reference signatures and spatial model, end to end, against the known truth of the synthetic slide.

    Adipocytes are large: the synthetic spots hold about 0.04 of them on average, so their truth
    is mostly zero and their correlation is not asserted; every other type must be recovered.
    """
    sdata = make_slide(seed=0, n_spots=200, counts=True)
    hd.tl.deconvolve(
        sdata,
        hd.datasets.synthetic_reference(),
        labels_key="cell_type",
        max_epochs=RECOVERY_EPOCHS,
        num_samples=100,
        n_cells_per_location=10,  # the synthetic slides hold about 11 cells per spot
        key_added="c2l",
    )
    table = sdata.tables["table"]
    r = pearson_per_type(table.obsm["c2l"], table.obsm["abund"])
    abundant = table.obsm["abund"].mean() > 0.5
    assert list(abundant[~abundant].index) == ["adipocyte"]
    assert (r[abundant] > 0.7).all(), r
