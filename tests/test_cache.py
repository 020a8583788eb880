"The derived-file cache is private and checked: 0700 folders, entries named by key only, tampered entries rebuilt."
import os, stat

import pytest
from pathlib import Path

import numpy as np
from PIL import Image

from medvision.core import cache_dir, cache_key, cache_seal, cache_valid
from medvision.recipes.core import train
from medvision.synth import synth
from test_cli import mv, ok


def test_cache_dir_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv('MEDVISION_CACHE', str(tmp_path/'c'))
    (tmp_path/'c').mkdir(mode=0o755)
    d = cache_dir('a', 'b')
    for p in (tmp_path/'c', tmp_path/'c'/'a', d): assert stat.S_IMODE(p.stat().st_mode) == 0o700, p


def test_a_truncated_or_changed_entry_is_not_valid(tmp_path):
    src = tmp_path/'v.nii'; src.write_bytes(b'x' * 10)
    e = tmp_path/cache_key(src, axis=2); e.mkdir()
    (e/'a.bin').write_bytes(b'1234')
    assert not cache_valid(e)                      # no manifest: never read
    cache_seal(e, [e/'a.bin'])
    assert cache_valid(e) and stat.S_IMODE((e/'a.bin').stat().st_mode) == 0o600
    (e/'a.bin').write_bytes(b'12')                 # truncated
    assert not cache_valid(e)
    assert cache_key(src, axis=2) != cache_key(src, axis=1)


def test_predict_through_the_command_keeps_the_cache_private_and_checked(tmp_path):
    data = synth('mri-nifti', tmp_path/'mri', n=4, size=32)
    train('mri-tiny', data, tmp_path/'m', size=32, epochs=1, show_progress=False)
    vol = sorted(data.rglob('*flair*.nii.gz'))[0]
    named = tmp_path/'Jane_Doe_FLAIR.nii.gz'; named.write_bytes(vol.read_bytes())   # a patient name in the file name
    cache = tmp_path/'cache'
    env = {'MEDVISION_CACHE': str(cache)}
    first = ok(mv('predict', '--model', tmp_path/'m', named, '--csv', tmp_path/'a.csv', env=env))
    entries = [p for p in cache.rglob('*')]
    assert entries and all('Jane' not in p.name and 'FLAIR' not in p.name for p in entries)
    for p in [cache, *entries]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, (p, oct(mode))   # nothing readable or writable by others
    pngs = sorted(cache.rglob('*.png'))
    for f in pngs: Image.fromarray(np.zeros((32, 32), np.uint8)).save(f)      # someone overwrites the cached slices
    again = ok(mv('predict', '--model', tmp_path/'m', named, '--csv', tmp_path/'b.csv', env=env))
    assert (tmp_path/'a.csv').read_text() == (tmp_path/'b.csv').read_text()   # the tampered entry was rebuilt
    assert all(np.asarray(Image.open(f)).any() for f in sorted(cache.rglob('*.png')))


def test_one_file_identity_for_every_cache(tmp_path):
    "A cache entry's key and the image cache's file list share one notion of staleness; a missing source names itself."
    from medvision.core import MedvisionError, file_identity
    from medvision.data.cache import source_ids
    src = tmp_path/'v.nii'; src.write_bytes(b'x' * 10)
    assert source_ids([src]) == [file_identity(src)] and file_identity(src)[1] == 10
    before = cache_key(src, axis=2)
    os.utime(src, ns=(0, 0))
    assert cache_key(src, axis=2) != before and source_ids([src])[0][2] == 0
    with pytest.raises(MedvisionError, match='cannot read'): cache_key(tmp_path/'missing.nii')
