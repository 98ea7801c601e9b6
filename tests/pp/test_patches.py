import pickle

import dask.array as da
import numpy as np
import pytest
import spatialdata
from PIL import Image
from spatialdata import SpatialData

import histodecon as hd
from histodecon.pp import _patches


def _coded_image(height, width):
    """An RGB image whose pixels encode their own coordinates, so any misplaced read shows."""
    y, x = np.mgrid[:height, :width]
    return np.stack([x % 251, y % 241, (x // 251 + 7 * (y // 241)) % 256]).astype(np.uint8)


def _crop(image_cyx, x, y, size):
    """Reference native crop: columns x0 .. x0 + size - 1 with x0 = round(x - size / 2), white outside."""
    hwc = np.moveaxis(image_cyx, 0, -1)
    x0, y0 = int(np.floor(x - size / 2 + 0.5)), int(np.floor(y - size / 2 + 0.5))
    out = np.full((size, size, 3), 255, np.uint8)
    ya, yb = max(y0, 0), min(y0 + size, hwc.shape[0])
    xa, xb = max(x0, 0), min(x0 + size, hwc.shape[1])
    if yb > ya and xb > xa:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = hwc[ya:yb, xa:xb]
    return out


@pytest.fixture(scope="module")
def slide(slide_from_image):
    image = _coded_image(700, 900)
    rng = np.random.default_rng(0)
    centres = np.vstack(
        [
            np.column_stack([rng.uniform(40, 860, 40), rng.uniform(40, 660, 40)]),
            [[5.0, 5.0], [899.6, 350.2], [450.0, 699.0]],
        ]
    )
    return image, centres, slide_from_image(image, centres, sample="S", mpp=0.5, spot_diameter_px=60)


def test_native_patches_equal_direct_crops(slide):
    image, centres, sdata = slide
    patches = hd.pp.spot_patches(sdata, size=64)
    got = patches[:]
    assert got.shape == (len(centres), 64, 64, 3) and got.dtype == np.uint8
    for k, (x, y) in enumerate(centres):
        np.testing.assert_array_equal(got[k], _crop(image, x, y, 64))
    # the last three spots sit on the border: white fill and the padded flag
    assert patches.padded.tolist() == [False] * 40 + [True] * 3
    assert (got[-3, :20, :20] == 255).all()
    np.testing.assert_array_equal(patches.mpp, 0.5)
    assert list(patches.obs_names) == list(sdata.tables["table"].obs_names)


def test_indexing_and_batches_agree(slide):
    _, centres, sdata = slide
    patches = hd.pp.spot_patches(sdata, size=32)
    everything = patches[:]
    assert len(patches) == len(centres)
    assert patches[3].shape == (32, 32, 3)
    np.testing.assert_array_equal(patches[3], everything[3])
    np.testing.assert_array_equal(patches[-1], everything[-1])
    np.testing.assert_array_equal(patches[[5, 2, 5]], everything[[5, 2, 5]])
    np.testing.assert_array_equal(patches[2:9:3], everything[2:9:3])
    mask = np.arange(len(patches)) % 4 == 0
    np.testing.assert_array_equal(patches[mask], everything[mask])
    seen = []
    for index, batch in patches.batches(16):
        np.testing.assert_array_equal(batch, everything[index])
        seen.extend(index)
    assert seen == list(range(len(patches)))
    with pytest.raises(IndexError):
        patches[len(patches)]
    with pytest.raises(ValueError, match="batch_size"):
        next(patches.batches(0))


def test_resampling_at_native_mpp_and_integer_origin_is_the_crop(slide, slide_from_image):
    image, _, _ = slide
    centres = np.array([[100.0, 200.0], [432.0, 310.0]])
    sdata = slide_from_image(image, centres, sample="S", mpp=0.5, spot_diameter_px=60)
    got = hd.pp.spot_patches(sdata, size=48, mpp=0.5)[:]
    for k, (x, y) in enumerate(centres):
        np.testing.assert_array_equal(got[k], _crop(image, x, y, 48))


def _smooth_image(height, width):
    y, x = np.mgrid[:height, :width].astype(np.float64)
    r = 127 + 100 * np.sin(x / 40.0) * np.cos(y / 55.0)
    g = (x % 1024) / 4
    b = 255 * y / height
    return np.stack([r, g, b]).round().astype(np.uint8)


def test_resampling_uses_the_pyramid_and_matches_full_resolution_reference(slide_from_image):
    image = _smooth_image(600, 4200)  # longer side > 4096: stored as a two-level pyramid
    centres = np.array([[1200.3, 300.7], [2500.0, 250.0], [4180.0, 300.0]])
    sdata = slide_from_image(image, centres, sample="S", mpp=0.25, spot_diameter_px=200)
    patches = hd.pp.spot_patches(sdata, size=50, mpp=0.5)  # 2 full-res px per output px
    assert patches._levels[0].factor_yx[1] == pytest.approx(2.0, rel=1e-3)
    got = patches[:]
    full = Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
    for k, (x, y) in enumerate(centres[:2]):
        ref = np.asarray(full.resize((50, 50), Image.Resampling.BILINEAR, box=(x - 50, y - 50, x + 50, y + 50)))
        assert np.abs(got[k].astype(int) - ref.astype(int)).max() <= 4
    assert patches.padded.tolist() == [False, False, True]
    # green rises by 1/4 per full-resolution column; output columns are 2 full-resolution px apart
    assert int(got[1, 25, -1, 1]) - int(got[1, 25, 0, 1]) == pytest.approx(49 * 2 / 4, abs=1)
    np.testing.assert_array_equal(patches.mpp, 0.5)


def test_several_samples_read_their_own_image(slide_from_image):
    one, two = _coded_image(300, 300), 255 - _coded_image(300, 300)
    centres = np.array([[150.0, 150.0], [80.0, 100.0]])
    slides = [
        slide_from_image(img, centres, sample=name, mpp=m, spot_diameter_px=50, spot_ids=[f"{name}_a", f"{name}_b"])
        for img, name, m in [(one, "A", 0.5), (two, "B", 1.0)]
    ]
    sdata = spatialdata.concatenate(slides, concatenate_tables=True)  # drops the uns cache: geometry from elements
    sdata.tables["table"] = sdata.tables["table"][[2, 0, 3, 1]].copy()  # interleave the samples
    patches = hd.pp.spot_patches(sdata, size=40)
    got = patches[:]
    for k, (img, (x, y)) in enumerate([(two, centres[0]), (one, centres[0]), (two, centres[1]), (one, centres[1])]):
        np.testing.assert_array_equal(got[k], _crop(img, x, y, 40))
    np.testing.assert_array_equal(patches.mpp, [1.0, 0.5, 1.0, 0.5])
    assert patches.sample_mpp == {"B": 1.0, "A": 0.5}
    # one um/px per sample: B at its native 1 um/px is the crop; A (0.5 um/px) is read over a field twice as wide
    per_sample = hd.pp.spot_patches(sdata, size=40, mpp={"A": 1.0, "B": 1.0})
    np.testing.assert_array_equal(per_sample.mpp, 1.0)
    np.testing.assert_array_equal(per_sample[[0, 2]], got[[0, 2]])
    red_span = [int(p[20, -1, 0]) - int(p[20, 0, 0]) for p in (got[1], per_sample[1])]  # red = full-res column
    assert red_span == [39, pytest.approx(78, abs=2)]
    with pytest.raises(KeyError, match=r"no micrometres per pixel for samples \['B'\]"):
        hd.pp.spot_patches(sdata, size=40, mpp={"A": 1.0})
    with pytest.raises(ValueError, match="`mpp` must be a positive number"):
        hd.pp.spot_patches(sdata, size=40, mpp={"A": 1.0, "B": 0})


def test_reads_only_the_chunks_under_the_patches_and_bounds_the_cache(monkeypatch, slide_from_image):
    computed = []

    def block(x):
        computed.append(x.size)
        return x

    chunk = 3 * 1024 * 1024
    source = da.from_array(_coded_image(3072, 3072), chunks=(3, 1024, 1024))
    image = source.map_blocks(block, dtype=np.uint8)
    sdata = slide_from_image(image, np.array([[300.0, 300.0], [1800.0, 1500.0]]), sample="S", mpp=1, spot_diameter_px=9)
    monkeypatch.setattr(_patches, "CACHE_BYTES", chunk)
    patches = hd.pp.spot_patches(sdata, size=100)
    computed.clear()
    both = patches[:]
    assert computed == [chunk, chunk]  # 2 of the 9 chunks of the image
    np.testing.assert_array_equal(patches[1], both[1])  # cached: nothing read
    assert computed == [chunk, chunk]
    np.testing.assert_array_equal(patches[0], both[0])  # evicted by the 1-chunk cache: read again
    assert computed == [chunk] * 3
    assert patches._cache._bytes == chunk


def test_pickles_for_worker_processes(slide):
    _, _, sdata = slide
    patches = hd.pp.spot_patches(sdata, size=16)
    clone = pickle.loads(pickle.dumps(patches))
    np.testing.assert_array_equal(clone[:5], patches[:5])


@pytest.mark.filterwarnings("ignore:The table is annotating")
def test_bad_input(slide, slide_from_image):
    image, centres, sdata = slide
    with pytest.raises(TypeError, match="SpatialData"):
        hd.pp.spot_patches(sdata.tables["table"])
    with pytest.raises(ValueError, match="size"):
        hd.pp.spot_patches(sdata, size=0)
    with pytest.raises(ValueError, match="mpp"):
        hd.pp.spot_patches(sdata, mpp=-1.0)
    with pytest.raises(KeyError, match="table"):
        hd.pp.spot_patches(sdata, table_key="nope")
    no_image = SpatialData(shapes=dict(sdata.shapes), tables={"table": sdata.tables["table"]})
    with pytest.raises(ValueError, match=r"No image shares coordinate system 'S' with the spots 'S_spots'.*image_key="):
        hd.pp.spot_patches(no_image)
    no_shapes = SpatialData(images=dict(sdata.images), tables={"table": sdata.tables["table"]})
    with pytest.raises(ValueError, match=r"annotates shapes 'S_spots' for sample 'S', which the SpatialData lacks"):
        hd.pp.spot_patches(no_shapes)
    wide = slide_from_image(image.astype(np.uint16), centres, sample="S", mpp=0.5, spot_diameter_px=60)
    with pytest.raises(ValueError, match="uint8"):
        hd.pp.spot_patches(wide)


def test_a_slide_cropped_by_bounding_box_query_reads_the_same_patches(make_slide):
    """The crop moves the image by a translation; spots keep their coordinates and their patches."""
    sdata = make_slide(seed=0, n_spots=120, sample="s0")
    crop = spatialdata.bounding_box_query(
        sdata,
        axes=("x", "y"),
        min_coordinate=[600, 500],
        max_coordinate=[4000, 4000],
        target_coordinate_system="s0",
        filter_table=True,
    )
    table = crop.tables["table"]
    xy = table.obsm["spatial"]
    inside = table.obs_names[((xy - [600, 500]).min(axis=1) > 200) & ((xy - 4000).max(axis=1) < -200)]
    assert len(inside) > 10
    crop.tables["table"] = table[table.obs_names.isin(inside)].copy()
    original = hd.pp.spot_patches(sdata, size=64, mpp=None)
    cropped = hd.pp.spot_patches(crop, size=64, mpp=None)
    rows = original.obs_names.get_indexer(cropped.obs_names)
    np.testing.assert_array_equal(cropped[np.arange(len(rows))], original[rows])

    adata = hd.get.abundances(crop, "abund")  # scanpy's convention: centres in pixels of the image it carries
    np.testing.assert_allclose(adata.obsm["spatial"], crop.tables["table"].obsm["spatial"] - [600, 500])
