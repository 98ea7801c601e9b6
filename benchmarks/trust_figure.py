"""The figure of docs/trust.md's intervals section: per-spot 80% intervals on a held-out her2st section.

Trains the default `hd.tl.fit` on B4 and C2 (stereoscope `major` proportions, weights-free
`handcrafted` encoder), predicts C3 with `interval=0.8`, and draws, for the three most abundant
cell types, the truth, the prediction and the interval width on the section
(`docs/images/trust_intervals.png`). Prints the section's coverage and mean width, and its
applicability record. The data is read from HISTODECON_DATA_DIR, else ../shared/data.
"""

from __future__ import annotations

from pathlib import Path

from _common import default_data_dir
from her2st_loso import TARGET, load

import histodecon as hd
from histodecon._constants import Key

FIGURE = Path(__file__).resolve().parents[1] / "docs" / "images" / "trust_intervals.png"
LEVEL = 0.8


def main() -> None:
    b4, c2, c3 = load(["B4", "C2", "C3"], default_data_dir())
    model = hd.tl.fit([b4, c2], features=["handcrafted"], target=TARGET)
    hd.tl.predict(c3, model, interval=LEVEL)
    table = c3.tables["table"]
    lower, upper = (table.obsm[key] for key in Key.obsm.interval_bounds(Key.obsm.pred_abund))
    truth = table.obsm[TARGET][model.cell_types]
    inside = ((lower <= truth) & (truth <= upper)).to_numpy()
    print(f"C3 at {LEVEL}: coverage {inside.mean():.3f}, mean width {(upper - lower).to_numpy().mean():.3f}")
    print("applicability:", table.uns["histodecon"]["applicability"])
    types = list(truth.mean().sort_values(ascending=False).index[:3])
    fig = hd.pl.spatial_abundance(
        c3,
        types,
        keys=[TARGET, Key.obsm.pred_abund, f"{Key.obsm.pred_abund}_width"],
        titles=["stereoscope (truth)", "predicted from H&E", f"{LEVEL:.0%} interval width"],
        return_fig=True,
    )
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=100)
    print(f"wrote {FIGURE}")


if __name__ == "__main__":
    main()
