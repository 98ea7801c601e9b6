import pickle

import dask.array as da
import numpy as np
import pytest
import spatialdata
from PIL import Image
from spatialdata import SpatialData

import histodecon as hd
from histodecon._pyramid import halve, halvings
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
    with pytest.raises(IndexError, match="out of bounds"):
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


def _textured(height, width, seed=0):
    """Smooth tissue-like colour plus pixel noise, so any change of filter or alignment shows in the patches."""
    noise = np.random.default_rng(seed).integers(-30, 31, (3, height, width))
    return np.clip(_smooth_image(height, width).astype(int) + noise, 0, 255).astype(np.uint8)


def _single_level(sdata, name="S_image"):
    """The slide with its image as one level: as an image stored without a pyramid."""
    levels = _patches.image_levels(sdata.images[name])
    flat = spatialdata.models.Image2DModel.parse(
        levels[0].data,
        dims=("c", "y", "x"),
        transformations=spatialdata.transformations.get_transformation(sdata.images[name], get_all=True),
    )
    return SpatialData(
        images={name: flat}, shapes=dict(sdata.shapes), tables={k: t.copy() for k, t in sdata.tables.items()}
    )


def _reference_patch(image, x, y, size, scale, halvings):
    """Independent reference: ``halvings`` times 2 x 2 block means (float, rounded half up), then PIL's bilinear."""
    c, h, w = image.shape
    level = image
    for _ in range(halvings):
        c, lh, lw = level.shape
        blocks = level[:, : lh // 2 * 2, : lw // 2 * 2].reshape(c, lh // 2, 2, lw // 2, 2)
        level = np.floor(blocks.mean(axis=(2, 4)) + 0.5).astype(np.uint8)
    step = 2**halvings
    half, f = size * scale / 2, (h / (h // step), w / (w // step))
    box = ((x - half) / f[1], (y - half) / f[0], (x + half) / f[1], (y + half) / f[0])
    hwc = Image.fromarray(np.ascontiguousarray(np.moveaxis(level, 0, -1)))
    return np.asarray(hwc.resize((size, size), Image.Resampling.BILINEAR, box=box))


def test_halve_is_the_rounded_mean_of_2x2_blocks():
    image = np.random.default_rng(5).integers(0, 256, (3, 37, 52), dtype=np.uint8)
    blocks = image[:, :36].reshape(3, 18, 2, 26, 2).astype(float)
    np.testing.assert_array_equal(halve(image), np.floor(blocks.mean(axis=(2, 4)) + 0.5))
    lazy = halvings(da.from_array(image, chunks=(3, 9, 13)), 2)  # odd chunks: rechunked before halving
    np.testing.assert_array_equal(lazy[1].compute(), halve(halve(image)))


def test_levels_read_the_same_patches_stored_in_memory_lazy_or_not_stored(slide_from_image, tmp_path):
    """The pyramid built in memory, built lazily and not stored at all give bit-identical patches.

    A 4600 px image gets one halving; 2.7 full-resolution px per output px reads that level,
    halved once more on the fly (4 px and more would be two halvings: level 1 halved once).
    """
    image = _textured(1500, 4600)
    centres = np.array([[1210.3, 700.7], [2555.5, 333.0], [4590.0, 900.0], [3.0, 1490.0]])
    built = slide_from_image(image, centres, sample="S", mpp=0.25, spot_diameter_px=200)
    assert len(_patches.image_levels(built.images["S_image"])) == 2
    lazy = slide_from_image(
        da.from_array(image, chunks=(3, 701, 900)), centres, sample="S", mpp=0.25, spot_diameter_px=200
    )
    flat = _single_level(built)
    built.write(tmp_path / "built.zarr")
    written = spatialdata.read_zarr(tmp_path / "built.zarr")
    for mpp, n_halvings in [(0.25 * 2.7, 1), (0.25 * 5.0, 2)]:
        read = [hd.pp.spot_patches(sdata, size=40, mpp=mpp) for sdata in (built, lazy, flat, written)]
        assert [p._levels[0].halvings for p in read] == ([0, 0, 1, 0] if n_halvings == 1 else [1, 1, 2, 1])
        got = [p[:] for p in read]
        for other in got[1:]:
            np.testing.assert_array_equal(got[0], other)
        for k, (x, y) in enumerate(centres[:2]):  # PIL's fixed-point weights depend on the box's offset: 1 grey level
            diff = np.abs(got[0][k].astype(int) - _reference_patch(image, x, y, 40, mpp / 0.25, n_halvings))
            assert diff.max() <= 1 and (diff == 0).mean() > 0.99
        assert read[2].padded.tolist() == [False, False, True, True]
        assert (got[2][2, :, -5:] == 255).all()  # past the right border: white, as read from a stored level


def test_a_chunk_read_again_after_eviction_gives_the_same_patches(monkeypatch, slide_from_image):
    """The bounded cache of computed level chunks: reads through a one-chunk cache equal a read that keeps all."""
    computed = []

    def block(x):
        computed.append(x.shape)
        return x

    image = _textured(1200, 4400, seed=1)
    rng = np.random.default_rng(2)
    centres = np.column_stack([rng.uniform(100, 4300, 30), rng.uniform(100, 1100, 30)])
    source = da.from_array(image, chunks=(3, 512, 512)).map_blocks(block, dtype=np.uint8)
    lazy = slide_from_image(source, centres, sample="S", mpp=0.5, spot_diameter_px=100)
    everything = hd.pp.spot_patches(lazy, size=32, mpp=1.5)[:]  # level 1, halved on reading
    chunk = 3 * 600 * 1024  # one chunk of level 1 (600 x 2200 px, 1024 px chunks)
    monkeypatch.setattr(_patches, "CACHE_BYTES", chunk)
    tight = hd.pp.spot_patches(lazy, size=32, mpp=1.5)
    assert tight._levels[0].data.shape == (3, 600, 2200) and tight._levels[0].halvings == 0
    computed.clear()
    order = rng.permutation(len(centres))
    np.testing.assert_array_equal(np.stack([tight[i] for i in order]), everything[order])
    # kept, each level-1 chunk would be computed once, from level-0 blocks no other chunk uses
    assert len(computed) > np.prod(source.numblocks)  # evicted chunks were computed again
    assert tight._cache._bytes <= 2 * chunk  # the one-chunk budget, or the chunks under one patch


def test_embeddings_do_not_depend_on_a_stored_pyramid(slide_from_image):
    """The weights-free encoder at its default field: same embedding with or without the stored levels."""
    image = _textured(2400, 4400, seed=3)
    rng = np.random.default_rng(4)
    centres = np.column_stack([rng.uniform(300, 4100, 24), rng.uniform(300, 2100, 24)])
    built = slide_from_image(image, centres, sample="S", mpp=0.73, spot_diameter_px=137)
    flat = _single_level(built)
    for sdata in (built, flat):
        hd.tl.embed(sdata, models=["handcrafted"], device="cpu")
    record = built.tables["table"].uns["histodecon"]["embeddings"]["handcrafted"]
    assert record["patch_mpp"]["S"] == pytest.approx(2.24 * 137 * 0.73 / 112)  # the default field: 2 full px / px
    np.testing.assert_array_equal(
        built.tables["table"].obsm["X_handcrafted"], flat.tables["table"].obsm["X_handcrafted"]
    )
