"""Fuzz corpus for the readers: truncated and bit-flipped DICOMs, missing pixel data, wrong Rows/Columns, unsupported
transfer syntaxes, empty files, text files named .dcm, broken PNG/JPEG/NIfTI/.npy, NaN/Inf arrays. Every file must give
`MedvisionError` naming the file, or decode to an array of the shape its header declares; never another exception."""
import gzip, io, shutil, warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medvision.core import MedvisionError
from medvision.dicom import anonymize, dicom_from_array, read_dicom
from medvision.io import check_files, read_image

pytestmark = pytest.mark.filterwarnings("ignore")

BASES = ['CT_small.dcm', 'MR_small_RLE.dcm', 'MR_small_jpeg_ls_lossless.dcm', 'SC_rgb_jpeg_dcmtk.dcm', 'rtdose.dcm',
         'JPEG2000.dcm']


def _declared_shape(m):
    colour = m['SamplesPerPixel'] == 3 or m['PhotometricInterpretation'] == 'PALETTE COLOR'
    nf = m['NumberOfFrames'] or 1
    return ((nf,) if nf > 1 else ()) + (m['Rows'], m['Columns']) + ((3,) if colour else ())


def _outcome(f, reader=read_dicom):
    "'ok' if `f` decodes to the declared shape, 'error' for a MedvisionError naming `f`; anything else fails."
    try:
        out = reader(f)
    except MedvisionError as e:
        assert e.path == str(f) and e.msg, (f, str(e))
        return 'error'
    if reader is read_dicom:
        x, m = out
        assert x.dtype == np.float32 and x.shape == _declared_shape(m) and np.isfinite(x).all(), (f, x.shape)
    return 'ok'


def _pixel_offset(raw):
    i = raw.rfind(b'\xe0\x7f\x10\x00')
    return i if i > 0 else len(raw) // 2


def _variants(raw, rng, n_trunc=25, n_flip=70):
    "Seeded truncations and bit flips of `raw` (half of the flips aimed at the header, where they matter)."
    px = _pixel_offset(raw)
    cuts = sorted({0, 1, 127, 128, 131, 132, 140, px - 1, px + 4, px + 12, len(raw) - 1} |
                  set(rng.integers(1, len(raw), n_trunc).tolist()))
    for c in cuts:
        if 0 < c < len(raw): yield f'trunc{c}', raw[:c]
    for k in range(n_flip):
        b = bytearray(raw)
        hi = min(px + 16, len(raw)) if k % 2 == 0 else len(raw)
        for _ in range(int(rng.integers(1, 5))):
            pos = int(rng.integers(132, hi)); b[pos] ^= 1 << int(rng.integers(0, 8))
        yield f'flip{k}', bytes(b)


@pytest.mark.parametrize('base', BASES)
def test_truncated_and_bitflipped_dicoms(tmp_path, base):
    raw = Path(get_testdata_file(base)).read_bytes()
    rng = np.random.default_rng(sum(map(ord, base)))
    counts = {'ok': 0, 'error': 0}
    for name, data in _variants(raw, rng):
        f = tmp_path/f'{name}.dcm'
        f.write_bytes(data)
        counts[_outcome(f)] += 1
        if name.startswith('trunc') and len(data) < _pixel_offset(raw):
            with pytest.raises(MedvisionError):  # a file cut before its pixels can never decode
                read_dicom(f)
    print(base, counts)
    assert counts['error'] >= 25 and sum(counts.values()) >= 80


def _ct(tmp_path, name='ct.dcm', **kw):
    f = tmp_path/name
    shutil.copy(get_testdata_file('CT_small.dcm'), f)
    ds = pydicom.dcmread(f)
    for k, v in kw.items():
        if v is None: del ds[k]
        elif k == 'TransferSyntaxUID': ds.file_meta.TransferSyntaxUID = v
        else: setattr(ds, k, v)
    ds.save_as(f)
    return f


@pytest.mark.parametrize('kw,why', [
    (dict(PixelData=None), 'no pixel data in a CT Image Storage (CT) object'),
    (dict(Rows=256), 'needs 65536: truncated file or wrong Rows/Columns'),
    (dict(Rows=64), 'needs only 16384: wrong Rows/Columns/NumberOfFrames'),
    (dict(Columns=129), 'truncated file or wrong Rows/Columns'),
    (dict(Columns=0), 'invalid image size'),
    (dict(NumberOfFrames=3), 'truncated file or wrong Rows/Columns'),
    (dict(BitsAllocated=None), 'required Image Pixel element(s) missing: BitsAllocated'),
    (dict(BitsAllocated=13), 'invalid BitsAllocated=13'),
    (dict(BitsStored=17), 'BitsStored ≤ BitsAllocated'),
    (dict(PhotometricInterpretation='NONSENSE'), 'cannot decode the pixel data'),
    (dict(TransferSyntaxUID='1.2.3.4.5.6'), 'unknown transfer syntax UID 1.2.3.4.5.6'),
])
def test_bad_headers(tmp_path, kw, why):
    f = _ct(tmp_path, **kw)
    with pytest.raises(MedvisionError) as e:
        read_dicom(f)
    assert why in e.value.msg and e.value.path == str(f)


@pytest.mark.parametrize('uid,why', [('1.2.840.10008.1.2.4.100', 'video (MPEG'), ('1.2.840.10008.1.2.4.102', 'video (MPEG'),
                                     ('1.2.840.10008.1.2.4.94', 'JPIP')])
def test_unsupported_compressed_syntaxes(tmp_path, uid, why):
    f = tmp_path/'c.dcm'
    ds = pydicom.dcmread(get_testdata_file('MR_small_RLE.dcm'))
    ds.file_meta.TransferSyntaxUID = uid
    ds.save_as(f)
    with pytest.raises(MedvisionError, match='is not supported') as e:
        read_dicom(f)
    assert why in e.value.msg


def test_compressed_with_wrong_header(tmp_path):
    src = get_testdata_file('MR_small_RLE.dcm')
    for i, kw in enumerate([dict(Rows=128), dict(Columns=32), dict(NumberOfFrames=1000000)]):
        f = tmp_path/f'{i}.dcm'
        ds = pydicom.dcmread(src)
        for k, v in kw.items(): setattr(ds, k, v)
        ds.save_as(f)
        with pytest.raises(MedvisionError) as e:
            read_dicom(f)
        assert e.value.path == str(f)
    assert 'above the limit of' in e.value.msg   # a million declared frames: refused before decoding


def _junk_corpus(d):
    "Broken non-DICOM and DICOM-ish files; each must give MedvisionError (name → expected reason)."
    rng = np.random.default_rng(0)
    out = {}
    for ext in ['.dcm', '.png', '.jpg', '.npy', '.nii.gz', '.nii', '.tif', '']:
        (d/f'empty{ext or "_noext"}').touch(); out[f'empty{ext or "_noext"}'] = 'empty file'
    (d/'text.dcm').write_text('patient list\nDoe^John,123\n'); out['text.dcm'] = 'not a DICOM file'
    (d/'random.dcm').write_bytes(rng.bytes(3000)); out['random.dcm'] = 'not a DICOM file'
    (d/'dicm_garbage.dcm').write_bytes(b'\0' * 128 + b'DICM' + rng.bytes(500)); out['dicm_garbage.dcm'] = ''
    (d/'dicm_only.dcm').write_bytes(b'\0' * 128 + b'DICM'); out['dicm_only.dcm'] = ''
    (d/'random.png').write_bytes(rng.bytes(500)); out['random.png'] = 'cannot open image'
    buf = io.BytesIO(); Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, 'PNG')
    (d/'trunc.png').write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2]); out['trunc.png'] = 'cannot open image'
    buf = io.BytesIO(); Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, 'JPEG')
    (d/'trunc.jpg').write_bytes(buf.getvalue()[:len(buf.getvalue()) // 3]); out['trunc.jpg'] = 'cannot open image'
    (d/'png_named.jpg').write_text('<html>404 not found</html>'); out['png_named.jpg'] = 'cannot open image'
    np.save(d/'nan.npy', np.array([[1., np.nan], [0., 2.]], np.float32)); out['nan.npy'] = 'NaN'
    np.save(d/'inf.npy', np.array([[-np.inf, 1.]], np.float64)); out['inf.npy'] = 'Inf'
    np.save(d/'ok.npy', np.ones((8, 8), np.float32))
    (d/'trunc.npy').write_bytes((d/'ok.npy').read_bytes()[:100]); out['trunc.npy'] = '.npy'
    (d/'garbage.npy').write_bytes(b'\x93NUMPY' + rng.bytes(100)); out['garbage.npy'] = '.npy'
    np.save(d/'vector.npy', np.ones(5)); out['vector.npy'] = 'not an image'
    np.save(d/'strings.npy', np.array([['a', 'b']])); out['strings.npy'] = 'unsupported array dtype'
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), d/'ok.nii.gz')
    (d/'trunc.nii.gz').write_bytes((d/'ok.nii.gz').read_bytes()[:60]); out['trunc.nii.gz'] = 'cannot read NIfTI'
    (d/'garbage.nii').write_bytes(rng.bytes(400)); out['garbage.nii'] = 'cannot read NIfTI'
    (d/'notgz.nii.gz').write_bytes(b'plain text'); out['notgz.nii.gz'] = 'cannot read NIfTI'
    nib.save(nib.Nifti1Image(np.full((2, 2, 2), np.inf, np.float32), np.eye(4)), d/'inf.nii.gz'); out['inf.nii.gz'] = 'Inf'
    (d/'x.xyz').write_text('?'); out['x.xyz'] = 'unsupported file type'
    return out


def test_junk_files_give_clear_errors(tmp_path):
    corpus = _junk_corpus(tmp_path)
    for name, why in corpus.items():
        f = tmp_path/name
        with pytest.raises(MedvisionError) as e:
            read_image(f)
        assert e.value.path == str(f) and why in e.value.msg, (name, e.value.msg)
    # the same corpus through the up-front check: one summary, every bad file reported with its reason
    files = [tmp_path/n for n in corpus] + [tmp_path/'ok.npy', tmp_path/'ok.nii.gz']
    with pytest.raises(MedvisionError, match=f'{len(corpus)} of {len(files)} files unreadable'):
        check_files(files)
    good, bad = check_files(files, skip_bad=True)
    assert good == [tmp_path/'ok.npy', tmp_path/'ok.nii.gz'] and len(bad) == len(corpus)


def test_fuzzed_folder_through_check_files_and_anonymize(tmp_path):
    raw = Path(get_testdata_file('CT_small.dcm')).read_bytes()
    src = tmp_path/'in'; src.mkdir()
    for name, data in _variants(raw, np.random.default_rng(7), n_trunc=10, n_flip=30):
        (src/f'{name}.dcm').write_bytes(data)
    files = sorted(src.iterdir())
    good, bad = check_files(files, skip_bad=True, n_workers=2)
    assert len(good) + len(bad) == len(files) and len(bad) >= 10
    assert all(_outcome(f, read_image) == 'ok' for f in good)
    uid_map = anonymize(src, tmp_path/'out', salt='x')            # never crashes: unreadable files are skipped
    written = uid_map.written
    assert 0 < len(written) < len(files) and uid_map
