"Tests for medvision.intensity: exact percentiles, windows, standardisation, to_rgb, masks untouched."
import numpy as np, pytest, torch
from pathlib import Path
from PIL import Image
from fastai.vision.all import TensorImage, TensorMask, PILImage, PILMask, Pipeline
from medvision.core import MedvisionError
import medvision.intensity as I
from medvision.intensity import (fast_percentile, percentile_window, PercentileWindow, hu_window, window, HUWindow,
                                 CT_WINDOWS, MultiWindow, Standardize, to_rgb, ToRGB)

RNG = np.random.default_rng(7)


def reference_window(x, lo=1, hi=99):
    "The naive float64 formula percentile_window promises to reproduce bit for bit."
    plo, phi = np.percentile(x, (lo, hi))
    return ((np.clip(x, plo, phi) - plo) / (phi - plo) * 255).astype(np.uint8)


def xray(h=420, w=400, top=4095, dtype=np.uint16):
    "Radiograph-like: smooth field + noise + zero collimator border (a big run of ties)."
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    a = top * (.2 + .6 * np.exp(-((yy - .5) ** 2 + (xx - .5) ** 2) / .1)) + RNG.normal(0, 40, (h, w))
    a[:25] = 0
    return np.clip(a, 0, top).astype(dtype)


ARRAYS = {
    'uint16-xray': xray(),                                              # 168k px: exercises the sampled brackets
    'uint8': RNG.integers(0, 256, (400, 400)).astype(np.uint8),
    'int16-ct': RNG.integers(-1024, 3071, (400, 400)).astype(np.int16),
    'int32-wide': RNG.integers(-10**6, 10**6, (400, 400)).astype(np.int32),   # range > 16 bits: no LUT
    'float32-integral': xray().astype(np.float32),                      # DICOM CR after the modality LUT: uint16 keys
    'float32-hu': xray().astype(np.float32) - 1024,                     # integral with negatives (CT HU): offset LUT
    'float32-big': xray().astype(np.float32) * 30,                      # integral beyond 16 bits: formula
    'float32-real': (RNG.normal(size=(400, 400)) * 300).astype(np.float32),
    'float64': RNG.random((400, 400)),
    'small': RNG.integers(0, 9, (7, 5)).astype(np.int64),
}


@pytest.mark.parametrize('name', list(ARRAYS))
@pytest.mark.parametrize('q', [(1, 99), (0, 100), (0.5, 99.5), (2.5, 50, 97.5)])
def test_fast_percentile_equals_numpy(name, q):
    a = ARRAYS[name]
    r, e = fast_percentile(a, q), np.percentile(a, q)
    assert r.dtype == e.dtype and np.array_equal(r, e)


def test_fast_percentile_scalar_and_bracket_miss():
    a = ARRAYS['float32-real']
    assert fast_percentile(a, 99) == np.percentile(a, 99)
    # wrong min/max make the sampled brackets miss: the full-partition fallback is still exact
    assert np.array_equal(fast_percentile(a, (1, 99), mn=np.float32(5), mx=np.float32(6)), np.percentile(a, (1, 99)))


@pytest.mark.parametrize('name', [n for n in ARRAYS if n != 'small'])
def test_percentile_window_equals_reference(name):
    a = ARRAYS[name]
    r = percentile_window(a)
    assert r.dtype == np.uint8 and r.shape == a.shape
    assert np.array_equal(r, reference_window(a))
    assert np.array_equal(percentile_window(a, 5, 95), reference_window(a, 5, 95))


def test_percentile_window_torch_and_pil():
    a = ARRAYS['int16-ct']
    t = percentile_window(TensorImage(torch.from_numpy(a)[None]))
    assert isinstance(t, TensorImage) and t.dtype == torch.uint8
    assert np.array_equal(t[0].numpy(), reference_window(a))
    # the CUDA code path (kthvalue ranks + float64 formula) run on CPU tensors gives the same result
    for x in (a, ARRAYS['float32-real'], ARRAYS['uint8']):
        assert np.array_equal(I._window_torch(torch.from_numpy(x), 1, 99).numpy(), reference_window(x))
    x = ARRAYS['uint16-xray']
    p = percentile_window(Image.fromarray(x))
    assert isinstance(p, Image.Image) and np.array_equal(np.asarray(p), reference_window(x))


@pytest.mark.parametrize('x', [np.full((50, 60), 700, np.int16), np.full((400, 400), 3.5, np.float32),
                               np.zeros((3, 3), np.uint8), np.ones(1, np.uint16)])
def test_constant_image_gives_zeros(x):
    r = percentile_window(x)
    assert r.dtype == np.uint8 and r.shape == x.shape and not r.any()
    assert not I._window_torch(torch.from_numpy(x), 1, 99).any()


def test_tied_percentiles_threshold():
    x = np.r_[np.zeros(990), np.full(10, 7.)]          # p1 == p99 == 0 but not constant
    r = percentile_window(x)
    assert np.array_equal(r, np.r_[np.zeros(990), np.full(10, 255)].astype(np.uint8))


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_nan_inf_raise(bad):
    x = ARRAYS['float32-real'].copy(); x[5, 5] = bad
    with pytest.raises(MedvisionError, match=r'scan\.dcm: image has 1 NaN/Inf'):
        percentile_window(x, path='scan.dcm')
    with pytest.raises(MedvisionError, match='NaN/Inf'): percentile_window(torch.from_numpy(x))
    with pytest.raises(MedvisionError, match='NaN/Inf'): I._window_torch(torch.from_numpy(x), 1, 99)
    with pytest.raises(MedvisionError, match='NaN/Inf'): hu_window(x)
    with pytest.raises(MedvisionError, match='NaN/Inf'): hu_window(torch.from_numpy(x))


def test_bad_inputs_raise():
    with pytest.raises(MedvisionError, match='empty image'): percentile_window(np.zeros((0, 5)))
    with pytest.raises(MedvisionError, match='lo < hi'): percentile_window(ARRAYS['uint8'], 99, 1)
    with pytest.raises(MedvisionError, match='lo < hi'): PercentileWindow(1, 101)
    with pytest.raises(MedvisionError, match='dtype'): percentile_window(np.array(['a', 'b']))
    with pytest.raises(MedvisionError, match='lo < hi'): HUWindow(500, -1500)


def test_percentile_window_transform_batch():
    a, b = ARRAYS['uint16-xray'], ARRAYS['uint16-xray'] // 3
    batch = TensorImage(torch.from_numpy(np.stack([a, b]).astype(np.int32))[:, None])
    r = PercentileWindow()(batch)
    assert isinstance(r, TensorImage) and r.shape == batch.shape and r.dtype == torch.uint8
    assert np.array_equal(r[1, 0].numpy(), reference_window(b.astype(np.int32)))   # per-image percentiles


def test_hu_window_exact_values():
    hu = np.array([-3000, -1500, -1000, -500, 0, 250, 500, 2000], np.float32)
    np.testing.assert_array_equal(hu_window(hu), np.float32([0, 0, .25, .5, .75, .875, 1, 1]))
    np.testing.assert_array_equal(hu_window(hu, scale=False), np.float32([-1500, -1500, -1000, -500, 0, 250, 500, 500]))
    assert hu_window(hu).dtype == np.float32
    t = HUWindow()(TensorImage(torch.from_numpy(hu)))
    assert isinstance(t, TensorImage) and t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), hu_window(hu))
    np.testing.assert_allclose(HUWindow().to_hu(t).numpy(), hu_window(hu, scale=False), atol=1e-3)
    np.testing.assert_array_equal(hu_window(hu.astype(np.int16), -1000, 1000), np.float32([0, 0, 0, .25, .5, .625, .75, 1]))
    with pytest.raises(MedvisionError, match='already windowed'): HUWindow()(PILImage.create(np.zeros((4, 4, 3), np.uint8)))


def test_ct_windows_and_window():
    for k in ('lung', 'mediastinum', 'bone', 'brain', 'soft_tissue', 'liver', 'subdural', 'stroke'): assert k in CT_WINDOWS
    assert CT_WINDOWS['lung'] == (1500, -600) and CT_WINDOWS['brain'] == (80, 40)   # (width, level)
    hu = np.float32([-1350, -600, 150, 1000])
    np.testing.assert_allclose(window(hu, *CT_WINDOWS['lung']), [0, .5, 1, 1], atol=1e-7)
    np.testing.assert_allclose(window(hu, 80, 40), [0, 0, 1, 1])


def test_multiwindow():
    hu = RNG.uniform(-1200, 1500, (16, 12)).astype(np.float32)
    mw = MultiWindow()
    r = mw(hu)
    assert r.shape == (3, 16, 12) and r.dtype == np.float32 and r.min() >= 0 and r.max() <= 1
    for c, name in enumerate(('lung', 'mediastinum', 'bone')): np.testing.assert_array_equal(r[c], window(hu, *CT_WINDOWS[name]))
    assert mw(hu[None]).shape == (3, 16, 12)
    b = mw(TensorImage(torch.from_numpy(hu)[None, None].repeat(2, 1, 1, 1)))
    assert isinstance(b, TensorImage) and b.shape == (2, 3, 16, 12)
    np.testing.assert_allclose(b[1, 2].numpy(), window(hu, *CT_WINDOWS['bone']))
    assert MultiWindow(['brain', (100, 0)])(hu).shape == (2, 16, 12)
    with pytest.raises(MedvisionError, match="unknown CT window 'lungs'"): MultiWindow(['lungs'])
    with pytest.raises(MedvisionError, match='one HU channel'): mw(np.zeros((2, 4, 4), np.float32))


def test_standardize_from_items(tmp_path):
    files = []
    for i in range(6):
        f = tmp_path / f"{i}.npy"; np.save(f, RNG.normal(-500 + 50 * i, 300, (24, 20)).astype(np.float32)); files.append(f)
    hw = HUWindow()
    st = Standardize.from_items(files, reader=np.load, tfms=hw)
    z = np.concatenate([st(hw(np.load(f))).ravel() for f in files])
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    sub = Standardize.from_items(files, reader=np.load, tfms=[hw], n=3, seed=1)
    assert sub.mean != st.mean and 0 < sub.std
    # batches of any shape/device: (B,1,H,W) TensorImage, decodes inverts
    x = TensorImage(torch.from_numpy(np.stack([hw(np.load(f)) for f in files]))[:, None])
    y = st(x)
    assert isinstance(y, TensorImage) and abs(y.mean().item()) < 1e-5
    torch.testing.assert_close(st.decode(y), x, atol=1e-5, rtol=0)
    if torch.cuda.is_available():
        torch.testing.assert_close(st(x.cuda()).cpu(), y, atol=1e-5, rtol=0)


def test_standardize_per_channel_and_errors(tmp_path):
    arrs = [RNG.random((3, 8, 8)) * np.array([1, 10, 100])[:, None, None] for _ in range(4)]
    st = Standardize.from_arrays(arrs, channel_axis=0)
    assert len(st.mean) == 3
    allpx = np.stack(arrs).transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(st.mean, allpx.mean(1)); np.testing.assert_allclose(st.std, allpx.std(1))
    y = st(TensorImage(torch.from_numpy(np.stack(arrs)).float()))
    assert y.shape == (4, 3, 8, 8) and torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert st(arrs[0]).shape == (3, 8, 8)
    with pytest.raises(MedvisionError, match='std > 0'): Standardize(0., 0.)
    with pytest.raises(MedvisionError, match='NaN/Inf'): Standardize.from_arrays([np.float32([0, np.nan])])
    with pytest.raises(MedvisionError, match='empty'): Standardize.from_arrays([])
    with pytest.raises(MedvisionError, match='cannot read'): Standardize.from_items([tmp_path / 'missing.npy'], reader=np.load)


TFMS = [PercentileWindow(), HUWindow(), MultiWindow(), Standardize(0.5, 0.25), ToRGB()]


@pytest.mark.parametrize('tfm', TFMS, ids=lambda t: type(t).__name__)
def test_masks_pass_untouched(tfm):
    img = TensorImage(torch.from_numpy(ARRAYS['int16-ct'][:32, :32].astype(np.float32))[None])
    msk = TensorMask(torch.randint(0, 4, (32, 32)))
    before = msk.clone()
    r_img, r_msk = tfm((img, msk))
    assert r_msk is msk and torch.equal(r_msk, before)
    assert isinstance(r_img, TensorImage)
    if isinstance(tfm, ToRGB): assert r_img.shape == (3, 32, 32)
    else: assert not torch.equal(r_img.float(), img)            # the image did change
    pm = PILMask.create(np.zeros((8, 8), np.uint8))
    assert tfm(pm) is pm


def test_to_rgb_shapes():
    g = RNG.integers(0, 255, (5, 6)).astype(np.uint8)
    assert to_rgb(g).shape == (3, 5, 6) and to_rgb(g[None]).shape == (3, 5, 6)
    assert np.shares_memory(to_rgb(g), g)                       # one channel: a view
    assert np.array_equal(to_rgb(np.stack([g, g + 1])), np.stack([g, g + 1, g]))   # two: the first is repeated
    three = np.stack([g, g + 1, g + 2]); assert to_rgb(three) is three
    assert to_rgb(g[..., None], channel_dim=-1).shape == (5, 6, 3)
    t = TensorImage(torch.from_numpy(g)[None, None].repeat(4, 2, 1, 1))
    r = to_rgb(t); assert isinstance(r, TensorImage) and r.shape == (4, 3, 5, 6) and torch.equal(r[:, 2], t[:, 0])
    assert to_rgb(torch.from_numpy(g)).shape == (3, 5, 6)
    assert to_rgb(Image.fromarray(g)).mode == 'RGB'
    assert isinstance(ToRGB()(PILImage.create(np.stack([g] * 3, -1))), PILImage)
    m = TensorMask(torch.zeros(5, 6)); assert to_rgb(m) is m
    with pytest.raises(MedvisionError, match='1, 2 or 3 channels'): to_rgb(np.zeros((4, 5, 6)))
    with pytest.raises(MedvisionError, match='percentile_window first'): to_rgb(Image.fromarray(ARRAYS['uint16-xray']))


def test_seed000_pipeline():
    x = ARRAYS['uint16-xray']
    out = Pipeline([PercentileWindow(1, 99), ToRGB()])(x)
    assert out.shape == (3,) + x.shape and all(np.array_equal(out[c], reference_window(x)) for c in range(3))


def test_real_dicom_corpus(shared_data):
    "Real CR/CT files: percentile_window of read_dicom's float32 pixels equals the float64 reference."
    from medvision.dicom import read_dicom
    root = shared_data('dicom-corpus')
    checked = 0
    for name in ('RG2_RLE', 'CT1_RLE', 'RG1_UNCR.dcm'):
        fn = next(root.rglob(name), None)
        if fn is None: continue
        a, meta = read_dicom(fn)
        assert np.array_equal(percentile_window(a), reference_window(a)), name
        checked += 1
    if not checked: pytest.skip('none of RG2_RLE, CT1_RLE, RG1_UNCR.dcm in the shared dicom-corpus')


def _dicom_files(roots):
    import pydicom
    for root in roots:
        for fn in sorted(Path(root).rglob('*')):
            if fn.is_file() and fn.suffix.lower() not in ('.txt', '.md', '.json', '.py', '.gz', '.bz2', '.zip'): yield fn


@pytest.mark.parametrize('where', ['pydicom', 'shared'])
def test_dicom_percentile_window_equals_two_step_path(where, request):
    "The stored-integer fast path gives the same bytes as read_dicom + percentile_window on every decodable file."
    from pydicom.data import get_testdata_files
    from medvision.dicom import read_dicom, read_dicom_lut
    if where == 'pydicom': files = [Path(f) for f in get_testdata_files('*') if not f.endswith(('.txt', '.json', '.py'))]
    else:
        root = request.getfixturevalue('shared_data')('dicom-corpus')
        files = list(_dicom_files([root]))
    fast = checked = 0
    for fn in files:
        if fn.stat().st_size > 30e6: continue
        try: x, _ = read_dicom(fn, frames=0)
        except MedvisionError: continue
        except Exception: continue   # not our concern here (the fuzz tests cover the reader's errors)
        if x.size == 0 or not np.isfinite(x).all(): continue
        try: want = percentile_window(x)
        except MedvisionError: continue
        assert np.array_equal(I.dicom_percentile_window(fn), want), fn.name
        checked += 1
        r = read_dicom_lut(fn)
        fast += r is not None and I._window_stored(*r[:3], 1, 99) is not None
    assert checked >= (40 if where == 'pydicom' else 5) and fast >= (15 if where == 'pydicom' else 5), (checked, fast)


@pytest.mark.parametrize('signed', [False, True])
def test_raw_reader_unused_high_bits(tmp_path, signed):
    "12-bit data with garbage in the 4 unused high bits: the direct reader masks / sign-extends exactly like pydicom."
    from medvision.dicom import dicom_from_array, read_dicom, read_dicom_lut, _raw_frame
    rng = np.random.default_rng(3)
    a = rng.integers(-2048 if signed else 0, 2048 if signed else 4096, (3, 40, 30)).astype(np.int16 if signed else np.uint16)
    ds = dicom_from_array(a, modality='CT' if signed else 'CR', bits_stored=12, **({'slope': 1, 'intercept': -1024} if signed else {}))
    raw = np.frombuffer(ds.PixelData, np.uint16).copy()
    raw = (raw & 0x0FFF) | (rng.integers(0, 16, raw.size).astype(np.uint16) << 12)   # garbage high bits
    ds.PixelData = raw.tobytes()
    fn = tmp_path / 'garbage.dcm'; ds.save_as(fn, enforce_file_format=True)
    for frame in range(3):
        assert _raw_frame(fn, frame) is not None
        st, mn, values, _ = read_dicom_lut(fn, frame=frame)
        np.testing.assert_array_equal(values[st.astype(np.int64) - int(mn)], read_dicom(fn, frames=frame)[0])
        assert np.array_equal(I.dicom_percentile_window(fn, frame=frame), percentile_window(read_dicom(fn, frames=frame)[0]))


def test_ct_windows_cannot_be_misread_by_fastai_windowed():
    "fastai's `Tensor.windowed(w, l)` takes (width, level): unpacking a preset into it picks the preset's window."
    from fastai.medical.imaging import windowed  # noqa: F401 (patches Tensor.windowed)
    hu = torch.linspace(-2000, 2000, 81)
    for name, w in CT_WINDOWS.items():
        lo, hi = w.level - w.width / 2, w.level + w.width / 2
        expect = ((hu.clamp(lo, hi) - lo) / (hi - lo)).numpy()
        np.testing.assert_allclose(window(hu.numpy(), *w), expect, atol=1e-6, err_msg=name)
        # fastai rounds width/2 down to a whole HU (`w//2`): the same window within half an HU
        np.testing.assert_allclose(hu.windowed(*w).numpy(), expect, atol=5e-3, err_msg=name)
        swapped = hu.windowed(w.level, w.width).numpy() if w.level > 0 else None   # (level, width): the old mistake
        if swapped is not None and w.level != w.width: assert np.abs(swapped - expect).max() > 0.05, name
        assert (w.width, w.level) == (w[0], w[1]) and w.width > 0, name
