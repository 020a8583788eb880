"Tests for medvision.data.seg_layouts and medvision.data.segmentation: layouts, masks, splits, augmentation, 2.5D, sampling."
import os, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image

from medvision.core import MedvisionError, SEG_CLASSES, LESION_CLASSES
from medvision.data.seg_layouts import (SegItem, onehot_to_index, NpySlices, infer_boundaries, slice_thumb, volume_items,
                                        detect_layout, open_source, CovidNpy, CovidPng, PngMasks, MedsegNifti,
                                        COVID_PNG_BOUNDARIES)
from medvision.data.segmentation import (seg_split, split_first_medseg, split_grouped, split_blocks, ReadSlice, ReadMask,
                                         ResizeSeg, TensorCT, seg_augs, lesion_weights, seg_dataloaders)


# ---------------------------------------------------------------- helpers
def write_npy(d, n_med=30, rp=(6, 9, 5), size=32, seed=0):
    "Kaggle covid-npy layout with known shapes; even slices have a ground-glass square; volumes differ strongly."
    rng = np.random.default_rng(seed)
    d = Path(d); d.mkdir(parents=True, exist_ok=True)
    def make(n, k):
        ims = np.full((n, size, size, 1), -1000, np.float32) + rng.normal(0, 20, (n, size, size, 1)).astype(np.float32)
        ms = np.zeros((n, size, size, 4), np.float32); ms[..., 3] = 1
        pat = rng.normal(0, 300, (size, size)).astype(np.float32)  # per-volume anatomy: neighbours correlate, volumes don't
        for i in range(n):
            ims[i, ..., 0] += pat
            ims[i, 4:28, 4:28] = -800; ms[i, 4:28, 4:28] = [0, 0, 1, 0]
            if i % 2 == 0: ims[i, 8:14, 8:14] = 0; ms[i, 8:14, 8:14] = [1, 0, 0, 0]
        return ims, ms
    a, b = make(n_med, 0)
    np.save(d/'images_medseg.npy', a); np.save(d/'masks_medseg.npy', b)
    vols = [make(n, k+1) for k, n in enumerate(rp)]
    np.save(d/'images_radiopedia.npy', np.concatenate([v[0] for v in vols]))
    np.save(d/'masks_radiopedia.npy', np.concatenate([v[1] for v in vols]))
    np.save(d/'test_images_medseg.npy', a[:3])
    return d


def write_covid_png(d, n=12, size=32):
    d = Path(d)
    for s in ['ct', 'lungs', 'covid']: (d/s).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((size, size), 30, np.uint8); img[4:28, 4:28] = 120; img[8:12, 8:12] = 255
        lung = np.zeros((size, size), np.uint8); lung[4:28, 4:28] = 255
        les = np.zeros((size, size), np.uint8); les[8:12, 8:12] = 255
        for s, a in [('ct', img), ('lungs', lung), ('covid', les)]: Image.fromarray(a).save(d/s/f"{i:04d}.png")
    return d


@pytest.fixture
def npy(tmp_path): return write_npy(tmp_path/'covid')


# ---------------------------------------------------------------- masks
def test_onehot_priority_rule():
    m = np.zeros((2, 3, 4), np.float32)
    m[0, 0] = [1, 0, 1, 1]   # ground-glass + lungs + background -> ground-glass
    m[0, 1] = [0, 1, 1, 0]   # consolidation + lungs -> consolidation
    m[0, 2] = [0, 0, 1, 1]   # lungs + background -> lungs_other
    m[1, 0] = [0, 0, 0, 0]   # nothing set -> background (argmax would give 0 = ground-glass)
    m[1, 1] = [1, 1, 0, 0]   # both lesions -> ground-glass (first in class order)
    m[1, 2] = [0, 0, 0, 0.4] # below threshold -> background
    idx = onehot_to_index(m)
    assert idx.dtype == np.uint8
    assert idx.tolist() == [[0, 1, 2], [3, 0, 3]]


def test_npy_source_reads_slices_and_index_masks(npy):
    src = open_source(npy)
    assert isinstance(src, CovidNpy) and detect_layout(npy) == 'covid-npy'
    assert len(src) == 30 + 20
    assert src.rp_boundaries == [6, 15]                      # inferred from the image discontinuities
    it = src.items[0]
    assert src.read_image(it).shape == (32, 32) and src.read_image(it).dtype == np.float32
    m = src.read_mask(it)
    assert (m[10, 10], m[5, 5], m[0, 0]) == (0, 2, 3)
    assert len(src.test_items) == 3


def test_nan_in_training_slices_names_file_and_slice(npy):
    "Issue 17: a NaN/Inf pixel in training data stops with the file and the slice, not a nameless windowing error."
    a = np.load(npy/'images_medseg.npy'); a[3, 5, 5, 0] = np.nan; a[4, 1, 1, 0] = np.inf
    np.save(npy/'images_medseg.npy', a)
    src = open_source(npy)
    bad = [it for it in src.items if it.src == 'medseg' and it.idx in (3, 4)]
    for it in bad:
        with pytest.raises(MedvisionError, match=rf'images_medseg.npy: slice {it.idx}: 1 NaN/Inf pixel'): src.read_image(it)
    assert src.read_image(src.items[0]).shape == (32, 32)


def test_npy_slices_reads_without_mapping(tmp_path):
    a = np.random.default_rng(0).normal(size=(16, 64, 64)).astype(np.float32)
    np.save(tmp_path/'a.npy', a)
    s = NpySlices(tmp_path/'a.npy')
    for i in [0, 7, 15, -1]: np.testing.assert_array_equal(s[i], a[i])
    with pytest.raises(IndexError): s[16]
    # a fortran-ordered file falls back to the memmap and still reads right
    np.save(tmp_path/'f.npy', np.asfortranarray(a))
    np.testing.assert_array_equal(NpySlices(tmp_path/'f.npy')[3], a[3])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason="reads /proc/self/status")
def test_npy_slices_keep_rss_flat(tmp_path):
    "Reading every slice must not grow the resident set by the file size (a memmap would)."
    def rss(): return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) * 1024
    a = np.ones((64, 512, 512), np.float32)  # 64 MB
    np.save(tmp_path/'big.npy', a); del a
    s = NpySlices(tmp_path/'big.npy')
    before = rss()
    tot = sum(float(s[i][0, 0]) for i in range(len(s)))
    assert tot == 64
    assert rss() - before < 16e6
    m = NpySlices(tmp_path/'big.npy', mmap=True)
    before = rss()
    for i in range(len(m)): m._a[i].sum()           # touching the memmap's pages ...
    assert rss() - before > 32e6                     # ... makes them resident: why the default is positioned reads


def test_npy_errors(tmp_path):
    d = write_npy(tmp_path/'c', n_med=4, rp=(3,))
    np.save(d/'masks_medseg.npy', np.zeros((3, 32, 32, 4), np.float32))
    with pytest.raises(MedvisionError, match="4 images but 3 masks"): open_source(d)
    np.save(d/'masks_medseg.npy', np.zeros((4, 32, 32, 3), np.float32))
    with pytest.raises(MedvisionError, match="3 channels, expected 4"): open_source(d)
    (d/'masks_medseg.npy').write_bytes(b'garbage')
    with pytest.raises(MedvisionError, match="masks_medseg.npy: not a readable .npy"): open_source(d)


# ---------------------------------------------------------------- layouts
def test_detect_layout_all_and_errors(tmp_path, npy):
    png = write_covid_png(tmp_path/'png')
    (tmp_path/'gen'/'images').mkdir(parents=True); (tmp_path/'gen'/'masks').mkdir()
    (tmp_path/'nii').mkdir(); (tmp_path/'nii'/'tr_im.nii.gz').write_bytes(b'')
    assert detect_layout(npy) == 'covid-npy'
    assert detect_layout(png) == 'covid-png'
    assert detect_layout(tmp_path/'gen') == 'png-masks'
    assert detect_layout(tmp_path/'nii') == 'medseg-nifti'
    (tmp_path/'other').mkdir(); (tmp_path/'other'/'x.csv').write_text('a')
    with pytest.raises(MedvisionError) as e: detect_layout(tmp_path/'other')
    msg = str(e.value)
    assert 'x.csv' in msg and all(k in msg for k in ['covid-npy', 'medseg-nifti', 'covid-png', 'png-masks'])
    with pytest.raises(MedvisionError, match='not found'): detect_layout(tmp_path/'nope')
    with pytest.raises(MedvisionError, match="unknown layout 'dicom'"): open_source(npy, layout='dicom')


def test_covid_png_classes_and_mismatch(tmp_path):
    d = write_covid_png(tmp_path/'png', n=6)
    src = open_source(d, boundaries=[3])
    assert src.classes == LESION_CLASSES and src.window == (0., 255.) and src.units == '8-bit'
    m = src.read_mask(src.items[0])
    assert (m[9, 9], m[20, 20], m[1, 1]) == (0, 1, 2)
    (d/'lungs'/'0002.png').unlink(); (d/'covid'/'0004.png').unlink()
    with pytest.raises(MedvisionError) as e: open_source(d)
    assert '1 missing in lungs/: 0002' in str(e.value) and '1 missing in covid/: 0004' in str(e.value)


def test_png_masks_unknown_label_names_file(tmp_path):
    d = tmp_path/'gen'
    (d/'images').mkdir(parents=True); (d/'masks').mkdir()
    for i, mx in enumerate([2, 255]):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(d/'images'/f"a{i}.png")
        mk = np.zeros((8, 8), np.uint8); mk[0, 0] = mx
        Image.fromarray(mk).save(d/'masks'/f"a{i}.png")
    src = open_source(d, codes=['lesion', 'lung', 'background'])
    assert src.read_mask(src.items[0])[0, 0] == 2
    with pytest.raises(MedvisionError) as e: src.read_mask(src.items[1])
    assert 'a1.png' in str(e.value) and '[255]' in str(e.value) and 'codes' in str(e.value)
    (d/'codes.txt').write_text('bg\nlesion\n')
    assert open_source(d).classes == ['bg', 'lesion']
    (d/'masks'/'a0.png').rename(d/'masks'/'b0.png')
    with pytest.raises(MedvisionError, match='missing in masks/: a0'): open_source(d)


def test_png_palette_index_masks_keep_their_indices(tmp_path):
    "A VOC-style palette mask stores class ids as palette indices; greyscale conversion would turn them into luminance."
    d = tmp_path/'pal'
    (d/'images').mkdir(parents=True); (d/'masks').mkdir()
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(d/'images'/'a.png')
    ids = np.zeros((8, 8), np.uint8); ids[:4] = 1; ids[:2] = 2
    m = Image.fromarray(ids, mode='P'); m.putpalette([0, 0, 0, 128, 0, 0, 1, 0, 0] + [0, 0, 0]*253)  # id 2 is dark: L would be 0
    m.save(d/'masks'/'a.png')
    src = open_source(d, codes=['lesion', 'lung', 'background'])
    assert np.array_equal(src.read_mask(src.items[0]), ids)


def test_medseg_nifti_mapping(tmp_path):
    nib = pytest.importorskip('nibabel')
    d = tmp_path/'ms'; (d/'rp_im').mkdir(parents=True); (d/'rp_msk').mkdir()
    im = np.full((16, 16, 3), -900, np.float32); mk = np.zeros((16, 16, 3), np.uint8)
    mk[0, 0], mk[1, 1], mk[2, 2] = 1, 2, 3                    # GGO, consolidation, effusion
    lung = np.zeros((16, 16, 3), np.uint8); lung[:8, :8] = 1
    save = lambda a, f: nib.save(nib.Nifti1Image(a, np.eye(4)), str(f))
    save(im, d/'tr_im.nii.gz'); save(mk, d/'tr_mask.nii.gz'); save(lung, d/'tr_lungmasks_updated.nii.gz')
    save(im[..., :2], d/'val_im.nii.gz')
    save(np.full((16, 16, 5), -500, np.float32), d/'rp_im'/'1.nii.gz'); save(np.zeros((16, 16, 5), np.uint8), d/'rp_msk'/'1.nii.gz')
    assert detect_layout(d) == 'medseg-nifti'
    with pytest.warns(UserWarning, match="no lung masks for rp1"):
        src = open_source(d, cache_dir=tmp_path/'cache')
    assert isinstance(src, MedsegNifti) and len(src) == 3 + 5 and len(src.test_items) == 2
    m = src.read_mask(src.items[0])
    assert (m[0, 0], m[1, 1], m[2, 2], m[5, 5], m[12, 12]) == (0, 1, 3, 2, 3)  # effusion → background; lungs → lungs_other
    assert {i.vol for i in src.items if i.src == 'rp1'} == {'rp1-v0'}
    with pytest.warns(UserWarning): src2 = open_source(d, cache_dir=tmp_path/'cache', effusion='lungs_other')
    assert src2.read_mask(src2.items[0])[2, 2] == 2
    assert src.read_image(src.items[3]).mean() == -500
    with pytest.raises(MedvisionError, match="effusion="): open_source(d, effusion='fluid')


# ---------------------------------------------------------------- boundaries & splits
def test_infer_boundaries_and_volume_items():
    rng = np.random.default_rng(3)
    base = [rng.normal(size=(64, 64)) for _ in range(4)]
    sl = [b + 0.01*j*rng.normal(size=(64, 64)) for b, n in zip(base, [10, 4, 7, 9]) for j in range(n)]
    assert infer_boundaries([slice_thumb(s) for s in sl]) == [10, 14, 21]
    it = volume_items('x', 30, [10, 14, 21])
    assert [(i.start, i.stop) for i in it if i.idx in (9, 10, 29)] == [(0, 10), (10, 14), (21, 30)]


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_splits_never_mix_volumes(npy, seed):
    src = open_source(npy)
    vol = lambda ix: {src.items[i].vol for i in ix}
    for split in ['grouped', 'blocks', 'first-medseg']:
        tr, va, name = seg_split(src.items, split, valid_pct=0.3, seed=seed)
        assert name == split and tr and va
        assert not vol(tr) & vol(va)
        assert sorted(tr + va) == list(range(len(src)))
    tr, va, _ = seg_split(src.items, 'first-medseg')
    assert [src.items[i].idx for i in va] == list(range(24)) and all(src.items[i].src == 'medseg' for i in va)
    assert all(src.items[i].src == 'radiopedia' or src.items[i].idx >= 24 for i in tr)
    assert seg_split(src.items, 'seed001') == (tr, va, 'first-medseg')   # the earlier name still works


def test_split_errors_and_blocks_tail(tmp_path):
    src = open_source(write_covid_png(tmp_path/'p', n=20), boundaries=[])
    with pytest.raises(MedvisionError, match="'first-medseg' split needs MedSeg"): seg_split(src.items, 'first-medseg')
    tr, va, name = seg_split(src.items, 'blocks', valid_pct=0.25, gap=2)   # one volume: a tail block with a gap
    assert va == list(range(15, 20)) and tr == list(range(0, 13))
    tr, va, name = seg_split(src.items, ([0, 1], [5]))
    assert name == 'custom'
    with pytest.raises(MedvisionError, match='both must be non-empty'): seg_split(src.items, ([], [1]))


def test_covid_png_shared_boundaries_and_blocks(shared_data):
    p = shared_data('covid-ct-png')
    src = open_source(p)
    assert len(src) == 970 and src.boundaries == list(COVID_PNG_BOUNDARIES)
    tr, va, name = seg_split(src.items, src.default_split)
    assert name == 'blocks' and va == list(range(789, 970))
    assert not {src.items[i].vol for i in tr} & {src.items[i].vol for i in va}
    # the documented list agrees with what the images say
    sub = list(range(100, 420))
    assert [b + 100 for b in infer_boundaries(src.thumbs([src.items[i] for i in sub]))] == [159, 279, 397]


# ---------------------------------------------------------------- 2.5D & sampler
def test_context_never_crosses_volumes(npy):
    src = open_source(npy)
    rs = ReadSlice(src, context=2)
    items = src.items
    for it in items:
        x = rs(it).numpy()
        assert x.shape[0] == 5
        for c, off in enumerate(range(-2, 3)):
            j = min(max(it.idx + off, it.start), it.stop - 1)
            np.testing.assert_array_equal(x[c], src.read_image(it._replace(idx=j)))
    # at a boundary: last slice of radiopedia volume 0 (idx 5) vs first of volume 1 (idx 6)
    last = next(i for i in items if i.src == 'radiopedia' and i.idx == 5)
    x = rs(last).numpy()
    np.testing.assert_array_equal(x[3], x[2]); np.testing.assert_array_equal(x[4], x[2])
    first_next = src.read_image(next(i for i in items if i.src == 'radiopedia' and i.idx == 6))
    assert not any(np.array_equal(x[c], first_next) for c in range(5))
    # MedSeg slices are separate patients: no neighbours at all
    x = rs(items[3]).numpy()
    assert all(np.array_equal(x[c], x[2]) for c in range(5))


def test_lesion_weights_and_weighted_dl(npy):
    src = open_source(npy)
    w = lesion_weights(src, src.items, 3.)
    flags = np.array([(it.idx if it.src == 'medseg' else it.idx - it.start) % 2 == 0 for it in src.items])  # even slices of each volume have a lesion
    assert (w == np.where(flags, 3., 1.)).all()
    dls = seg_dataloaders(npy, size=16, bs=8, lesion_weight=3., augs=False, device='cpu')
    from fastai.callback.data import WeightedDL
    assert isinstance(dls.train, WeightedDL) and dls.lesion_weight == 3.
    tw = lesion_weights(src, dls.train_items, 3.)
    np.testing.assert_allclose(dls.train.wgts, tw/tw.sum())
    np.random.seed(0)
    draws = np.concatenate([dls.train.get_idxs() for _ in range(200)])
    les = np.array([tw[i] == 3 for i in draws]).mean()
    expect = (tw == 3).sum()*3/((tw == 3).sum()*3 + (tw == 1).sum())
    assert abs(les - expect) < 0.02 and les > 0.6


# ---------------------------------------------------------------- augmentation keeps masks aligned
def _shapes_batch(n=6, size=48):
    "Images with a bright off-centre square (class 0), a mid disc (class 1) on a dark background (class 2)."
    from fastai.vision.all import TensorImage, TensorMask
    x = torch.full((n, 1, size, size), 0.1); y = torch.full((n, size, size), 2, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    for i in range(n):
        r0, c0 = 5 + i, 8 + 2*i
        x[i, 0, r0:r0+10, c0:c0+6] = 0.9; y[i, r0:r0+10, c0:c0+6] = 0
        disc = (yy - 34)**2 + (xx - 30 + i)**2 < 36
        x[i, 0][disc] = 0.5; y[i][disc] = 1
    return TensorImage(x), TensorMask(y)


def _agreement(x, y):
    "Share of pixels whose class by intensity (midpoints between class means) equals the mask, per sample (worst)."
    worst = 1.
    for xi, yi in zip(x[:, 0], y):
        means = [xi[yi == c].mean() for c in range(3)]
        if any(torch.isnan(m) for m in means): return 0.
        if not means[0] > means[1] > means[2]: return 0.
        t01, t12 = (means[0] + means[1]) / 2, (means[1] + means[2]) / 2
        pred = torch.where(xi > t01, 0, torch.where(xi > t12, 1, 2))
        worst = min(worst, float((pred == yi).float().mean()))
    return worst


def _each_aug():
    from fastai.vision.all import Dihedral, Flip, Rotate, Zoom, Warp, Brightness, Contrast, RandomResizedCropGPU, PadMode
    pm = dict(pad_mode=PadMode.Reflection)
    return {'flip': Flip(p=1., **pm), 'dihedral': Dihedral(p=1., **pm), 'rotate': Rotate(max_deg=180, p=1., **pm),
            'zoom_in': Zoom(min_zoom=1.2, max_zoom=1.5, p=1., **pm), 'zoom_out': Zoom(min_zoom=0.6, max_zoom=0.8, p=1., **pm),
            'warp': Warp(magnitude=0.3, p=1., **pm), 'brightness': Brightness(max_lighting=0.4, p=1.),
            'contrast': Contrast(max_lighting=0.4, p=1.), 'rrc': RandomResizedCropGPU(48, min_scale=0.35)}


@pytest.mark.parametrize('name', list(_each_aug()))
def test_each_augmentation_keeps_mask_aligned(name):
    from fastai.vision.all import Pipeline
    torch.manual_seed(0); import random; random.seed(0)
    x, y = _shapes_batch()
    assert _agreement(x, y) == 1.
    tfm = _each_aug()[name]
    xa, ya = Pipeline([tfm], split_idx=0)((x, y))
    assert xa.shape == x.shape and ya.shape == y.shape and ya.dtype == torch.long
    assert set(ya.unique().tolist()) <= {0, 1, 2}                  # nearest sampling: no new labels
    if name not in ('brightness', 'contrast'): assert not torch.equal(ya, y)   # it did move things
    else: assert torch.equal(ya, y)                                # lighting leaves masks alone
    assert _agreement(xa, ya) > 0.93


def test_misalignment_is_detected():
    "The alignment check can fail: moving the image alone breaks agreement."
    from fastai.vision.all import TensorImage
    x, y = _shapes_batch()
    assert _agreement(TensorImage(torch.rot90(x, 1, (2, 3))), y) < 0.9


def test_full_pipeline_keeps_mask_aligned(tmp_path):
    "Through seg_dataloaders with the default augmentations (8-bit PNG source: bright square = lesion)."
    from fastai.vision.all import TensorImage
    d = tmp_path/'p'
    for s in ['ct', 'lungs', 'covid']: (d/s).mkdir(parents=True)
    for i in range(16):
        img = np.full((40, 40), 25, np.uint8); lung = np.zeros((40, 40), np.uint8); les = np.zeros((40, 40), np.uint8)
        img[6:34, 10:30] = 128; lung[6:34, 10:30] = 255
        img[8+i % 5:16+i % 5, 12:18] = 250; les[8+i % 5:16+i % 5, 12:18] = 255
        for s, a in [('ct', img), ('lungs', lung), ('covid', les)]: Image.fromarray(a).save(d/s/f"{i:04d}.png")
    dls = seg_dataloaders(d, size=40, bs=8, device='cpu', source_kw=dict(boundaries=[]), num_workers=0)
    torch.manual_seed(1)
    for _ in range(3):
        x, y = dls.train.one_batch()
        assert isinstance(x, TensorCT)
        assert _agreement(x, y) > 0.9
    xv, yv = dls.valid.one_batch()
    assert _agreement(xv, yv) == 1.


def test_resize_seg():
    from fastai.vision.all import TensorImage, TensorMask
    x, y = _shapes_batch(1, 48)
    r = ResizeSeg(24)
    xr, yr = r(TensorImage(x[0])), r(TensorMask(y[0]))
    assert xr.shape == (1, 24, 24) and yr.shape == (24, 24) and yr.dtype == torch.long
    assert set(yr.unique().tolist()) <= {0, 1, 2}
    assert _agreement(xr[None], yr[None]) > 0.9


# ---------------------------------------------------------------- dataloaders
def test_dataloaders_npy_hu_and_stats(npy):
    dls = seg_dataloaders(npy, size=24, bs=4, augs=False, device='cpu')
    assert dls.split_name == 'first-medseg' and dls.layout == 'covid-npy' and dls.classes == SEG_CLASSES and dls.n_fg == 2
    assert dls.window == (-1500., 500.) and dls.n_in == 1 and dls.size == 24
    x, y = dls.valid.one_batch()
    assert x.shape == (4, 1, 24, 24) and y.shape == (4, 24, 24)
    mean, std = dls.stats
    # undo Standardize: values are in [0,1] after the HU window
    raw = x*std + mean
    assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4
    # -800 HU lungs map to (−800+1500)/2000 = 0.35
    np.testing.assert_allclose(float(raw[0, 0, 12, 4]), 0.35, atol=0.03)


def test_dataloaders_png_is_8bit_not_hu(tmp_path):
    d = write_covid_png(tmp_path/'p', n=10)
    dls = seg_dataloaders(d, size=32, bs=2, augs=False, device='cpu', source_kw=dict(boundaries=[8]))
    assert dls.window == (0., 255.) and dls.classes == LESION_CLASSES and dls.split_name == 'blocks'
    x, y = dls.valid.one_batch()
    mean, std = dls.stats
    raw = x*std + mean
    np.testing.assert_allclose(float(raw[0, 0, 9, 9]), 1.0, atol=1e-4)        # 255 → 1.0 (a HU window would give 0.88)
    np.testing.assert_allclose(float(raw[0, 0, 0, 0]), 30/255, atol=1e-4)
    assert int(y[0, 9, 9]) == 0 and int(y[0, 0, 0]) == 2


def test_show_batch_runs(npy):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    dls = seg_dataloaders(npy, size=24, bs=4, device='cpu')
    dls.show_batch(max_n=4)
    assert sum(bool(ax.images) for ax in plt.gcf().axes) >= 4   # axes that really show an image
    plt.close('all')


def test_png_cache(tmp_path):
    d = write_covid_png(tmp_path/'p', n=4)
    src = open_source(d, boundaries=[])
    assert src._cache is not None                       # tiny set: cached automatically
    it = src.items[1]
    a, m = src.read_image(it), src.read_mask(it)
    (d/'ct'/'0001.png').unlink(); (d/'covid'/'0001.png').unlink()
    np.testing.assert_array_equal(src.read_image(it), a)   # served from the cache
    m2 = src.read_mask(it); m2[:] = 9                       # callers get copies: the cache stays intact
    np.testing.assert_array_equal(src.read_mask(it), m)
    d2 = write_covid_png(tmp_path/'q', n=4)
    nc = open_source(d2, boundaries=[], cache=False)
    assert nc._cache is None
    assert open_source(d2, boundaries=[], cache_mb=0.001)._cache is None   # over budget: no cache
    (d2/'ct'/'0001.png').unlink()
    with pytest.raises(MedvisionError, match='0001.png: unreadable image'): nc.read_image(nc.items[1])


def _all_batches(dls, seed):
    from fastai.torch_core import set_seed
    set_seed(seed)
    return [(x.clone(), y.clone()) for dl in (dls.train, dls.valid) for x, y in dl]


def test_item_cache_gives_identical_batches(npy):
    kw = dict(size=24, bs=4, lesion_weight=3., source_kw=dict(rp_boundaries=[6, 15]), device='cpu')
    cached, plain = seg_dataloaders(npy, **kw), seg_dataloaders(npy, cache_mb=0, **kw)
    assert not hasattr(plain.train, 'item_cache') and cached.train.item_cache is cached.valid.item_cache
    _all_batches(cached, 0)                                 # fills the cache
    c = cached.train.item_cache
    assert c.n > 0 and c.used == c.n * (24 * 24 * 4 + 24 * 24)  # float32 image + uint8 mask per item
    for (a, b), (p, q) in zip(_all_batches(cached, 1), _all_batches(plain, 1)):
        assert torch.equal(a, p) and torch.equal(b, q) and b.dtype == torch.int64 and type(b) is type(q)
    assert not hasattr(seg_dataloaders(npy, num_workers=1, **kw).train, 'item_cache')  # workers: each would refill its own
    assert not hasattr(cached.train.new(), 'item_cache')      # test_dl / prediction loaders never inherit it
