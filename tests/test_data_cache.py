"""The persistent preprocessed-image cache: keyed by every file and setting, resumable, never read when damaged."""
import os
import numpy as np
import pytest
from PIL import Image
from fastcore.test import test_eq as eq
from medvision.core import MedvisionError
from medvision.data.cache import ImageCache, fit_longest, cache_info, cache_clear
from medvision.data.classification import OpenImage, image_cache, classification_dls
from medvision.dicom import dicom_from_array


@pytest.fixture
def dcms(tmp_path):
    "Eight 16-bit grayscale DICOMs (MONOCHROME2 and MONOCHROME1) of 120 x 90 px."
    rng = np.random.default_rng(0)
    fns = []
    for i in range(8):
        a = (rng.random((120, 90)) * 4000 + 100 * i).astype(np.uint16)
        fns.append(tmp_path/f'{i}.dcm')
        dicom_from_array(a, fns[-1], modality='DX', photometric='MONOCHROME1' if i % 2 else 'MONOCHROME2')
    return fns


def _cache(fns, op=None, size=48, root=None):
    op = op or OpenImage('xray')
    return ImageCache(fns, op.array, size, op.n_channels, dict(opener=repr(op), window=op.window), root=root)


def test_cache_holds_the_opener_output_shrunk(dcms, tmp_path):
    op = OpenImage('xray')
    c = _cache(dcms, op, root=tmp_path/'c').open(num_workers=2, progress=False)
    for f in dcms: eq(c[f], fit_longest(op.array(f), 48))
    eq(c[dcms[0]].shape, (48, 36, 3))
    with pytest.raises(MedvisionError, match='not in this image cache'): c[tmp_path/'other.dcm']


@pytest.mark.parametrize('change', [dict(size=64), dict(op=OpenImage('gray')), dict(op=OpenImage('xray', lo=2)),
                                    dict(op=OpenImage('xray', hi=98)), dict(op=OpenImage('xray', window=False))])
def test_every_setting_is_in_the_key(dcms, tmp_path, change):
    base = _cache(dcms, root=tmp_path/'c')
    other = _cache(dcms, root=tmp_path/'c', **change)
    assert other.key != base.key and other.entry != base.entry


def test_a_changed_file_builds_a_new_entry(dcms, tmp_path):
    c = _cache(dcms, root=tmp_path/'c').open(progress=False)
    old = c[dcms[2]].copy()
    dicom_from_array(np.full((120, 90), 7, np.uint16) + np.arange(90, dtype=np.uint16), dcms[2], modality='DX')
    os.utime(dcms[2], ns=(1, 1))   # even an unchanged size and an old mtime differ from the recorded identity
    c2 = _cache(dcms, root=tmp_path/'c').open(progress=False)
    assert c2.key != c.key
    eq(c2[dcms[2]], fit_longest(OpenImage('xray').array(dcms[2]), 48))
    assert not np.array_equal(c2[dcms[2]], old)


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'manifest'])
def test_a_damaged_entry_is_rebuilt_not_read(dcms, tmp_path, damage):
    c = _cache(dcms, root=tmp_path/'c').open(progress=False)
    pix = c.entry/'pixels.npy'
    if damage == 'truncate':
        with open(pix, 'r+b') as f: f.truncate(pix.stat().st_size // 2)
    elif damage == 'flip':
        b = bytearray(pix.read_bytes()); b[-5] ^= 0xFF; pix.write_bytes(bytes(b))
    else: (c.entry/'manifest.json').write_text('{"pixels.npy": "0"}')
    calls = []
    def read(fn): calls.append(fn); return OpenImage('xray').array(fn)
    c2 = ImageCache(dcms, read, 48, 3, c.params | {}, root=tmp_path/'c')
    c2.params, c2.key, c2.entry = c.params, c.key, c.entry   # the same entry as before
    c2.open(num_workers=1, progress=False)
    eq(len(calls), len(dcms))   # every image decoded again
    for f in dcms: eq(c2[f], c[f] if damage == 'manifest' else fit_longest(OpenImage('xray').array(f), 48))


def test_an_interrupted_build_resumes(dcms, tmp_path):
    op = OpenImage('xray')
    n = []
    def failing(fn):
        if len(n) == 5: raise MedvisionError('simulated interruption', fn)
        n.append(fn); return op.array(fn)
    c = ImageCache(dcms, failing, 48, 3, {'opener': 'x'}, root=tmp_path/'c')
    with pytest.raises(MedvisionError, match='simulated'): c.build(num_workers=1, progress=False, chunk=2)
    assert not (c.entry/'manifest.json').exists()     # not sealed: never read as complete
    eq(int(np.load(c.entry/'done.npy').sum()), 4)   # two whole chunks were saved
    again = []
    def counting(fn): again.append(fn); return op.array(fn)
    c2 = ImageCache(dcms, counting, 48, 3, {'opener': 'x'}, root=tmp_path/'c').open(num_workers=1, progress=False)
    eq(sorted(map(str, again)), sorted(map(str, dcms[4:])))   # only the missing ones
    for f in dcms: eq(c2[f], fit_longest(op.array(f), 48))


def test_classification_dls_with_cache(dcms, tmp_path, monkeypatch):
    import pandas as pd
    monkeypatch.setenv('MEDVISION_CACHE', str(tmp_path/'mvcache'))
    df = pd.DataFrame(dict(path=[str(f) for f in dcms], label=['a', 'b'] * 4,
                           split=['train'] * 6 + ['valid'] * 2))
    kw = dict(size=32, bs=2, aug='none', resize='squish', num_workers=0)
    plain = classification_dls(df, **kw)
    cached = classification_dls(df, cache=True, cache_size=64, **kw)
    x0, x1 = plain.valid.one_batch()[0], cached.valid.one_batch()[0]
    eq(x0.shape, x1.shape)
    # the same images, resized from a 64-px copy instead of the original (noise images: the hardest case)
    r = np.corrcoef(x0.flatten().numpy(), x1.flatten().numpy())[0, 1]
    assert r > 0.9 and (x0 - x1).abs().mean() < 0.1, (r, (x0 - x1).abs().mean())
    info = cache_info(tmp_path/'mvcache')
    eq(list(info['kind']), ['images'])
    assert info['sealed'].all() and info['mb'].iloc[0] > 0
    assert cache_clear('images', tmp_path/'mvcache') > 0 and len(cache_info(tmp_path/'mvcache')) == 0


def test_cli_cache_info_and_clear(tmp_path, monkeypatch, capsys):
    from medvision.cli import main
    monkeypatch.setenv('MEDVISION_CACHE', str(tmp_path/'mv'))
    (tmp_path/'mv'/'images'/'abc').mkdir(parents=True)
    (tmp_path/'mv'/'images'/'abc'/'pixels.npy').write_bytes(b'x' * 2**20)
    assert main(['cache', 'info']) == 0
    out = capsys.readouterr().out
    assert 'images' in out and '1.0 MB in 1 entries' in out
    assert main(['cache', 'clear', '--kind', 'images']) == 0
    assert 'freed 1.0 MB' in capsys.readouterr().out
    assert not (tmp_path/'mv'/'images').exists()
