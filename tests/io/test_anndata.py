import anndata as ad
import numpy as np
import pytest
import scanpy as sc

import histodecon as hd

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def visium_adata(visium_folder):
    adata = sc.read_visium(visium_folder.path)
    adata.obs["cluster"] = np.arange(adata.n_obs) % 3
    adata.obsm["X_pca"] = np.arange(adata.n_obs * 2, dtype=float).reshape(-1, 2)
    return adata


def test_round_trip_lands_spots_on_the_same_image_content(visium_folder, visium_adata):
    before = visium_adata.copy()
    converted = hd.io.from_anndata(visium_adata)
    direct = hd.io.read_visium(visium_folder.path)  # hires image, read from the Space Ranger folder
    table, reference = converted.tables["table"], direct.tables["table"]
    assert list(table.obs_names) == list(reference.obs_names)
    np.testing.assert_allclose(table.obsm["spatial"], reference.obsm["spatial"])
    mpp = [t.uns["histodecon"]["samples"]["lib1"]["mpp"] for t in (table, reference)]
    assert mpp[0] == pytest.approx(mpp[1]) == pytest.approx(2.0)
    np.testing.assert_array_equal(converted.images["lib1_image"].values, direct.images["lib1_image"].values)
    np.testing.assert_array_equal(hd.pp.spot_patches(converted, size=8)[:], hd.pp.spot_patches(direct, size=8)[:])
    centres = hd.pp.spot_patches(converted, size=8)[:][:, 4, 4]
    np.testing.assert_array_equal(centres, np.stack([visium_folder.colours[b] for b in table.obs_names]))
    # user annotations come along; the input is untouched
    np.testing.assert_array_equal(table.obs["cluster"], visium_adata.obs["cluster"])
    np.testing.assert_array_equal(table.obsm["X_pca"], visium_adata.obsm["X_pca"])
    np.testing.assert_array_equal(table.X.toarray(), visium_adata.X.toarray())
    assert list(visium_adata.uns) == list(before.uns) and visium_adata.obs.equals(before.obs)


def test_bad_input(visium_adata):
    with pytest.raises(TypeError, match="AnnData"):
        hd.io.from_anndata({"uns": {}})
    bare = visium_adata.copy()
    del bare.uns["spatial"]
    with pytest.raises(KeyError, match="uns\\['spatial'\\]"):
        hd.io.from_anndata(bare)
    two = visium_adata.copy()
    two.uns["spatial"]["lib2"] = two.uns["spatial"]["lib1"]
    with pytest.raises(ValueError, match="library_id"):
        hd.io.from_anndata(two)
    with pytest.raises(KeyError, match="lib3"):
        hd.io.from_anndata(two, "lib3")
    lowres_only = visium_adata.copy()
    lowres_only.uns["spatial"]["lib1"]["images"] = {"lowres": lowres_only.uns["spatial"]["lib1"]["images"]["lowres"]}
    with pytest.raises(KeyError, match="hires"):
        hd.io.from_anndata(lowres_only)


def test_several_libraries_keep_only_the_chosen_librarys_spots(visium_adata):
    first, second = visium_adata.copy(), visium_adata.copy()
    second.uns["spatial"] = {"lib2": second.uns["spatial"]["lib1"]}
    both = ad.concat({"lib1": first, "lib2": second}, label="library_id", uns_merge="unique", index_unique="-")
    assert set(both.uns["spatial"]) == {"lib1", "lib2"}
    with pytest.raises(ValueError, match="Pass `library_key=`"):
        hd.io.from_anndata(both, "lib1")
    table = hd.io.from_anndata(both, "lib2", library_key="library_id").tables["table"]
    assert list(table.obs_names) == [f"{name}-lib2" for name in visium_adata.obs_names]
    with pytest.raises(ValueError, match="No spot has `obs\\['cluster'\\] == 'lib1'`"):
        hd.io.from_anndata(both, "lib1", library_key="cluster")
    with pytest.raises(KeyError, match="No `obs\\['batch'\\]` column"):
        hd.io.from_anndata(both, "lib1", library_key="batch")
