"""The README's quick start, on small synthetic slides: embed, fit, predict, colocalisation."""

import numpy as np

import histodecon as hd


def test_quick_start_predicts_held_out_slide():
    train = [hd.datasets.synthetic(n_spots=150, seed=seed, sample=f"s{seed}", counts=False) for seed in (0, 1)]
    new = hd.datasets.synthetic(n_spots=150, seed=2, sample="new", counts=False)
    for sdata in [*train, new]:
        hd.tl.embed(sdata, models=["handcrafted"])

    model = hd.tl.fit(train, features=["handcrafted"], target="abund", max_epochs=150)
    hd.tl.predict(new, model, interval=0.8)
    table = new.tables["table"]
    assert list(table.obsm["pred_abund"].columns) == list(table.obsm["abund"].columns)
    lower, upper = table.obsm["pred_abund_lower"].values, table.obsm["pred_abund_upper"].values
    assert (lower <= table.obsm["pred_abund"].values).all() and (table.obsm["pred_abund"].values <= upper).all()
    on_tissue = table.obs["in_tissue"].to_numpy()  # training and scoring use the spots on tissue
    truth, pred = table.obsm["abund"][on_tissue], table.obsm["pred_abund"][on_tissue]

    assert hd.metrics.cc_score(truth, pred) > 0.5
    mean_predictor = np.abs(truth - truth.mean()).to_numpy().mean()
    assert np.abs(truth - pred).to_numpy().mean() < mean_predictor

    hd.gr.rbf_graph(new)
    hd.gr.moran_r(new, key="abund")
    hd.gr.moran_r(new, key="pred_abund")
    similarity = hd.metrics.colocalization_similarity(
        table.uns["abund_moranR"]["R"], table.uns["pred_abund_moranR"]["R"]
    )
    assert similarity.attrs["mean"]["pearson"] > 0.5
    figure = hd.pl.colocalization(new, keys=["abund", "pred_abund"], return_fig=True)
    assert len(figure.axes) >= 2
