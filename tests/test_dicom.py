"Tests for medvision.dicom: pydicom's test files, synthetic DICOMs with known values, real files, metadata, anonymize."
import os, warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medvision.core import MedvisionError
from medvision.dicom import (PHI_TAGS, META_KEYS, anonymize, check_pixels, dicom_from_array, dicom_meta_df, open_dicom,
                             read_dicom)

pytestmark = pytest.mark.filterwarnings("ignore")


def _expected_shape(ds):
    "The array shape the header promises: (F,)? + (Rows, Columns) + (3,)? for colour/palette."
    nf = int(ds.get('NumberOfFrames') or 1)
    colour = int(ds.get('SamplesPerPixel') or 1) == 3 or str(ds.PhotometricInterpretation) == 'PALETTE COLOR'
    return ((nf,) if nf > 1 else ()) + (int(ds.Rows), int(ds.Columns)) + ((3,) if colour else ())


def _pydicom_can_decode(f):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            pydicom.dcmread(f).pixel_array
        return True
    except Exception:
        return False


def test_every_pydicom_test_file_decodes_or_gives_a_clear_error():
    files = [f for f in sorted(get_testdata_files()) if os.path.isfile(f)]
    decoded, clear, lost = [], [], []
    for f in files:
        try:
            x, meta = read_dicom(f)
        except MedvisionError as e:
            assert e.path == str(f) and len(e.msg) > 15, (f, str(e))
            clear.append(f)
            if _pydicom_can_decode(f): lost.append((f, e.msg))
            continue
        # anything else propagates and fails the test
        ds = pydicom.dcmread(f, force=True)
        assert x.dtype == np.float32, f
        assert x.shape == _expected_shape(ds), (f, x.shape)
        assert meta['shape'] == x.shape and np.isfinite(x).all(), f
        decoded.append(f)
    print(f"pydicom test files: {len(files)}, decoded {len(decoded)}, clear errors {len(clear)}")
    assert len(decoded) + len(clear) == len(files)
    assert len(decoded) >= 85 and len(clear) >= 30, (len(decoded), len(clear))
    assert not lost, f"pydicom decodes these but medvision refuses them: {lost}"


@pytest.mark.parametrize('name,why', [
    ('rtplan.dcm', 'no pixel data: this is a RT Plan Storage (RTPLAN)'),
    ('waveform_ecg.dcm', '12-lead ECG Waveform Storage (ECG)'),
    ('reportsi.dcm', 'Basic Text SR Storage (SR)'),
    ('DICOMDIR', 'Media Storage Directory'),
    ('rtstruct.dcm', 'RT Structure Set Storage (RTSTRUCT)'),   # no preamble: still recognised as DICOM
    ('MR_truncated.dcm', 'truncated file'),
    ('README.txt', 'not a DICOM file'),
    ('JPEG-lossy.dcm', 'cannot decode the compressed pixel data (JPEG Extended'),
    ('badVR.dcm', 'invalid NumberOfFrames'),
    ('meta_missing_tsyntax.dcm', 'required Image Pixel element(s) missing: Rows, Columns'),
])
def test_known_bad_files_name_the_cause(name, why):
    f = get_testdata_file(name)
    with pytest.raises(MedvisionError, match=None) as e:
        read_dicom(f)
    assert why in e.value.msg and str(e.value).startswith(str(f))


@pytest.mark.parametrize('name', ['MR_small_bigendian.dcm', 'MR_small_expb.dcm', 'MR_small_implicit.dcm', 'MR_small_RLE.dcm',
                                  'MR_small_jpeg_ls_lossless.dcm', 'MR_small_jp2klossless.dcm', 'MR_small_padded.dcm'])
def test_lossless_transfer_syntaxes_give_identical_pixels(name):
    ref, _ = read_dicom(get_testdata_file('MR_small.dcm'))
    x, meta = read_dicom(get_testdata_file(name))
    np.testing.assert_array_equal(x, ref)


def test_deflated_big_endian_and_jpeg_match_pydicom():
    for name in ['image_dfl.dcm', 'liver_expb_1frame.dcm', 'JPGExtended.dcm', 'JPEGLSNearLossless_16.dcm', '693_J2KI.dcm']:
        f = get_testdata_file(name)
        ds = pydicom.dcmread(f)
        x, meta = read_dicom(f)
        ref = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        np.testing.assert_allclose(x, ref, rtol=1e-6, atol=1e-3, err_msg=name)


def test_colour_palette_and_multiframe():
    x, m = read_dicom(get_testdata_file('SC_ybr_full_422_uncompressed.dcm'))
    assert x.shape == (100, 100, 3) and m['units'] == 'RGB'
    jpeg, _ = read_dicom(get_testdata_file('SC_rgb_dcmtk_+eb+cy+np.dcm'))  # same image, JPEG YBR_FULL_422
    assert np.abs(jpeg - x).mean() < 5
    np.testing.assert_allclose(x[5, 5], [255, 0, 0], atol=3)              # red band
    pal, m = read_dicom(get_testdata_file('examples_palette.dcm'))
    ds = pydicom.dcmread(get_testdata_file('examples_palette.dcm'))
    np.testing.assert_array_equal(pal, pydicom.pixels.apply_color_lut(ds.pixel_array, ds).astype(np.float32))
    assert pal.shape == (350, 800, 3) and m['range'] == (0., 65535.)
    v, m = read_dicom(get_testdata_file('examples_ybr_color.dcm'))
    assert v.shape == (30, 240, 320, 3) and m['NumberOfFrames'] == 30
    dose, m = read_dicom(get_testdata_file('rtdose.dcm'))
    ds = pydicom.dcmread(get_testdata_file('rtdose.dcm'))
    assert dose.shape == (15, 10, 10)
    np.testing.assert_allclose(dose, ds.pixel_array * float(ds.DoseGridScaling), rtol=1e-6)  # scaled to dose units
    one, _ = read_dicom(get_testdata_file('rtdose.dcm'), frames=3)
    some, _ = read_dicom(get_testdata_file('rtdose.dcm'), frames=[0, 14])
    np.testing.assert_array_equal(one, dose[3]); np.testing.assert_array_equal(some, dose[[0, 14]])
    with pytest.raises(MedvisionError, match='frame index 15 out of range: the file has 15 frame'):
        read_dicom(get_testdata_file('rtdose.dcm'), frames=15)


def test_ct_hounsfield_units_are_exact(tmp_path):
    stored = np.array([[-2000, -1], [0, 1000], [1024, 2047]], np.int16)
    dicom_from_array(stored, tmp_path/'ct.dcm', slope=2.5, intercept=-1024)
    x, m = read_dicom(tmp_path/'ct.dcm')
    np.testing.assert_array_equal(x, stored.astype(np.float64) * 2.5 - 1024)
    assert (m['units'], m['PixelRepresentation'], m['RescaleSlope'], m['RescaleIntercept']) == ('HU', 1, 2.5, -1024.)


@pytest.mark.parametrize('dtype,bits', [(np.uint8, 8), (np.uint16, 12), (np.uint16, 16), (np.int16, 12), (np.int16, 16)])
def test_bit_depths_and_monochrome1_inversion(tmp_path, dtype, bits):
    info = np.iinfo(dtype)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if info.min < 0 else (0, (1 << bits) - 1)
    stored = np.array([[lo, lo + 1, 0], [hi // 2, hi - 1, hi]], dtype)
    dicom_from_array(stored, tmp_path/'m2.dcm', modality='OT', bits_stored=bits)
    dicom_from_array(stored, tmp_path/'m1.dcm', modality='CR', photometric='MONOCHROME1', bits_stored=bits)
    m2, meta2 = read_dicom(tmp_path/'m2.dcm')
    m1, meta1 = read_dicom(tmp_path/'m1.dcm')
    np.testing.assert_array_equal(m2, stored.astype(np.float32))
    np.testing.assert_array_equal(m1, (lo + hi) - stored.astype(np.float32))   # relative to the stored range
    assert meta1['inverted'] and not meta2['inverted'] and meta1['range'] == (lo, hi)
    assert m1[0, 0] == hi and m1[1, 2] == lo                                      # smallest stored value is now brightest


def test_monochrome1_with_rescale_and_window(tmp_path):
    stored = np.array([[0, 100], [200, 1023]], np.uint16)
    dicom_from_array(stored, tmp_path/'a.dcm', modality='DX', photometric='MONOCHROME1', bits_stored=10, slope=2, intercept=10,
                     WindowCenter=500, WindowWidth=1000)
    x, m = read_dicom(tmp_path/'a.dcm')
    np.testing.assert_array_equal(x, (10 + 2056) - (stored * 2. + 10))  # range 10..2056 after the modality LUT
    w, mw = read_dicom(tmp_path/'a.dcm', voi=True)
    assert mw['voi'] and mw['range'] == (10., 2056.)
    assert w[0, 0] > w[0, 1] > w[1, 0] > w[1, 1]                       # still dense = bright after the window


def test_enhanced_multiframe_per_frame_rescale(tmp_path):
    stored = np.stack([np.full((4, 4), 10, np.int16), np.full((4, 4), 10, np.int16)])
    ds = dicom_from_array(stored, modality='CT')
    items = []
    for slope, icpt in [(1., -1000.), (2., 0.)]:
        pvt, fg = Dataset(), Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, icpt, 'HU'
        fg.PixelValueTransformationSequence = [pvt]
        items.append(fg)
    ds.PerFrameFunctionalGroupsSequence = items
    ds.save_as(tmp_path/'e.dcm', enforce_file_format=True)
    x, _ = read_dicom(tmp_path/'e.dcm')
    assert x.shape == (2, 4, 4) and (x[0] == -990).all() and (x[1] == 20).all()


@pytest.mark.parametrize('rows,cols,frames,rle', [(20000, 20000, 1, True), (60000, 60000, 1, True), (512, 512, 4096, True),
                                                   (20000, 20000, 1, False)])
def test_memory_bombs_are_refused_before_decoding(tmp_path, monkeypatch, rows, cols, frames, rle):
    "Issue 17.8: a tiny file declaring a huge image is refused from its header (RSS stays flat), compressed or not."
    import resource
    from pydicom.uid import RLELossless
    ds = dicom_from_array(np.zeros((64, 64), np.uint16))
    if rle: ds.compress(RLELossless)
    ds.Rows, ds.Columns = rows, cols
    if frames > 1: ds.NumberOfFrames = frames
    ds.save_as(tmp_path/'bomb.dcm')
    assert (tmp_path/'bomb.dcm').stat().st_size < 40_000
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MedvisionError, match=r'bomb.dcm: declares .* above the limit .*MEDVISION_MAX_PIXELS'):
        read_dicom(tmp_path/'bomb.dcm')
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 50_000  # KiB: nothing was decoded


def test_pixel_limit_from_the_environment(tmp_path, monkeypatch):
    f = tmp_path/'ok.dcm'; dicom_from_array(np.zeros((64, 64), np.uint16), f)
    assert read_dicom(f)[0].shape == (64, 64)
    monkeypatch.setenv('MEDVISION_MAX_PIXELS', '1000')
    with pytest.raises(MedvisionError, match='above the limit of 1,000'): read_dicom(f)
    monkeypatch.setenv('MEDVISION_MAX_PIXELS', 'lots')
    with pytest.raises(MedvisionError, match='MEDVISION_MAX_PIXELS'): read_dicom(f)


def test_missing_decoder_names_the_package(monkeypatch):
    from pydicom.pixels.decoders.base import Decoder
    monkeypatch.setattr(Decoder, 'is_available', property(lambda self: self.is_native))
    with pytest.raises(MedvisionError, match=r'pip install pylibjpeg pylibjpeg-openjpeg'):
        read_dicom(get_testdata_file('MR_small_jp2klossless.dcm'))
    with pytest.raises(MedvisionError, match=r'pip install pylibjpeg pylibjpeg-libjpeg'):
        read_dicom(get_testdata_file('MR_small_jpeg_ls_lossless.dcm'))


def test_meta_has_no_phi_and_mv_pixels_matches():
    f = get_testdata_file('CT_small.dcm')
    ds = open_dicom(f)
    x, meta = read_dicom(f)
    np.testing.assert_array_equal(ds.mv_pixels(), x)
    phi = {k for k, a in PHI_TAGS.items() if a != 'U'}
    assert not set(meta) & phi and not set(META_KEYS) & phi
    assert str(ds.PatientName) not in map(str, meta.values())
    assert meta['TransferSyntaxUID'] == pydicom.uid.ExplicitVRLittleEndian and meta['PixelSpacing'] == (0.661468, 0.661468)
    assert check_pixels(ds) == pydicom.uid.ExplicitVRLittleEndian


def test_real_corpus_reads_correctly(shared_data):
    root = shared_data('dicom-corpus')
    cr, m = read_dicom(root/'pydicom-data'/'RG1_UNCR.dcm')
    assert m['PhotometricInterpretation'] == 'MONOCHROME1' and m['inverted']
    H, W = cr.shape
    reg = lambda y0, y1, x0, x1: cr[int(y0*H):int(y1*H), int(x0*W):int(x1*W)].mean()
    lungs = (reg(.15, .35, .2, .35) + reg(.15, .35, .65, .8)) / 2
    spine = reg(.15, .6, .44, .54)
    assert lungs < spine - 0.1 * (m['range'][1] - m['range'][0]), (lungs, spine)  # lungs dark, mediastinum/spine bright
    ct, m = read_dicom(root/'pydicom-wheel-test_files'/'CT_small.dcm')
    assert m['units'] == 'HU' and -1100 < ct.min() < -500 and 300 < ct.max() < 3100
    ct1, m = read_dicom(root/'dicom-test-files'/'data'/'WG04'/'RLE'/'CT1_RLE')            # RLE, no extension
    p1, p99 = np.percentile(ct1, [1, 99])
    assert m['units'] == 'HU' and p1 < -500 and -200 < np.median(ct1[200:300, 200:300]) < 200 and p99 > 0
    mr, m = read_dicom(root/'pydicom-data'/'emri_small.dcm')
    assert mr.shape == (10, 64, 64) and m['NumberOfFrames'] == 10
    np.testing.assert_array_equal(read_dicom(root/'pydicom-data'/'emri_small.dcm', frames=4)[0], mr[4])
    rg3, m = read_dicom(root/'dicom-test-files'/'data'/'WG04'/'RLE'/'RG3_RLE')
    assert m['inverted'] and rg3.shape == (1760, 1760)
    unc, _ = read_dicom(root/'pydicom-data'/'693_UNCR.dcm')
    j2k, _ = read_dicom(get_testdata_file('693_J2KI.dcm'))                             # same slice, lossy JPEG 2000
    assert np.corrcoef(unc.ravel(), j2k.ravel())[0, 1] > 0.99


def test_dicom_meta_df(tmp_path):
    files = [get_testdata_file(n) for n in ['CT_small.dcm', 'MR_small.dcm', 'rtplan.dcm']] + [tmp_path/'empty.dcm', tmp_path/'x.dcm']
    (tmp_path/'empty.dcm').touch(); (tmp_path/'x.dcm').write_text('hello')
    df = dicom_meta_df(files)
    assert len(df) == 5 and df.fname.tolist() == [str(f) for f in files]
    assert df.error.iloc[:3].isna().all() and df.error.iloc[3].startswith('empty file') and 'not a DICOM' in df.error.iloc[4]
    assert df.Modality.tolist()[:3] == ['CT', 'MR', 'RTPLAN'] and df.Rows.iloc[0] == 128
    assert not set(df.columns) & {k for k, a in PHI_TAGS.items() if a != 'U'}
    assert 'SOPClassUID' in df and df.columns[0] == 'fname' and df.columns[-1] == 'error'
    assert 'SOPInstanceUID' not in df and 'StudyDate' not in df          # instance UIDs and dates: only with phi=True
    full = dicom_meta_df(files, phi=True, n_workers=0)
    assert full.PatientName.iloc[0] == 'CompressedSamples^CT1' and full.PatientID.iloc[0] == '1CT1' and 'SOPInstanceUID' in full
    assert df.drop(columns='error').equals(dicom_meta_df(files, n_workers=2).drop(columns='error'))


# ---------------------------------------------------------------------------------------------------------- anonymize
_VALUES = {'PN': 'Secret^Person', 'DA': '20200102', 'TM': '131415', 'DT': '20200102131415', 'AS': '045Y', 'CS': 'SECRET',
           'US': 7, 'SS': 7, 'UL': 7, 'SL': 7, 'FL': 1.5, 'FD': 1.5, 'DS': '1.5', 'IS': '7', 'AE': 'SECRETAE',
           'UR': 'http://secret.example', 'OB': b'SECRETBY', 'OW': b'SECRETBY', 'UN': b'SECRETBY'}


def _phi_dataset(i, study, frame_ref):
    "A CT slice carrying a fake value in every PHI_TAGS attribute, a private block and PHI nested in a sequence."
    ds = dicom_from_array(np.arange(16, dtype=np.int16).reshape(4, 4) + i, slope=1, intercept=-1024)
    planted = {}
    for kw, act in PHI_TAGS.items():
        if tag_for_keyword(kw) is None: continue                       # newer than pydicom's dictionary
        if kw in ('SOPInstanceUID', 'StudyInstanceUID', 'SeriesInstanceUID') or tag_for_keyword(kw) >> 16 in (0, 2): continue
        vr = dictionary_VR(tag_for_keyword(kw)).split(' or ')[0]
        if vr == 'SQ':
            item = Dataset(); item.PatientName = 'Nested^Secret'; item.ReferencedSOPInstanceUID = study
            val = [item]
        elif vr == 'UI': val = generate_uid()
        else: val = _VALUES.get(vr, f'SECRET{kw[:6]}' if vr in ('SH', 'LO') else f'SECRET {kw}')
        setattr(ds, kw, val); planted[kw] = val
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame_ref
    ds.PatientID, ds.InstanceNumber = 'MRN-0042', i + 1
    block = ds.private_block(0x0011, 'ACME', create=True); block.add_new(0x01, 'LO', 'SECRET PRIVATE')
    ref = Dataset(); ref.PatientName = 'Deep^Secret'; ref.ReferencedSOPInstanceUID = study
    ds.ReferencedSeriesSequence = [ref]                    # not in the table: cleaned recursively
    return ds, planted


def _all_elements(ds):
    for el in ds:
        yield el
        if el.VR == 'SQ':
            for item in el.value: yield from _all_elements(item)


def test_anonymize_series_ps315(tmp_path):
    src, study, frame_ref = tmp_path/'in'/'patient'/'series', generate_uid(), generate_uid()
    src.mkdir(parents=True)
    originals = []
    for i in range(3):
        ds, planted = _phi_dataset(i, study, frame_ref)
        ds.save_as(src/f'{i}.dcm', enforce_file_format=True)
        originals.append((open_dicom(src/f'{i}.dcm'), planted))
    (src/'notes.txt').write_text('Secret^Person was here')
    with pytest.warns(UserWarning, match='skipped 1 file'):
        uid_map = anonymize(tmp_path/'in', tmp_path/'out', salt='s3cret')
    written = sorted(uid_map.written, key=lambda f: open_dicom(f).InstanceNumber)
    outs = [open_dicom(f) for f in written]
    assert len(written) == 3 and not list((tmp_path/'out').rglob('notes.txt'))
    assert all('patient' not in str(f.relative_to(tmp_path)) and 'series' not in str(f.relative_to(tmp_path)) for f in written)
    for (orig, planted), out in zip(originals, outs):
        for kw, val in planted.items():                      # no listed tag keeps its original value
            if kw in out:
                assert out[kw].value != orig[kw].value or out[kw].value in ('', None, []), kw
        for kw in ('StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID', 'FrameOfReferenceUID'):
            assert out[kw].value == uid_map[orig[kw].value] and out[kw].value.startswith('2.25.')
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.SOPClassUID == orig.SOPClassUID and out.file_meta.TransferSyntaxUID == orig.file_meta.TransferSyntaxUID
        assert out.PixelData == orig.PixelData                # byte-identical pixels
        assert out.PatientIdentityRemoved == 'YES' and 'PS3.15' in out.DeidentificationMethod
        assert out.DeidentificationMethodCodeSequence[0].CodeValue == '113100'
        assert not any(el.tag.is_private for el in _all_elements(out))
        assert all('Secret' not in str(el.value) for el in _all_elements(out) if el.VR == 'PN')
        assert out.ReferencedSeriesSequence[0].ReferencedSOPInstanceUID == uid_map[study]
    for i in range(3):
        raw = written[i].read_bytes()
        for secret in (b'SECRET', b'Secret', b'20200102', b'MRN-0042', study.encode(), frame_ref.encode()):
            assert secret not in raw, (i, secret)
    assert len({o.StudyInstanceUID for o in outs}) == 1 and len({o.SOPInstanceUID for o in outs}) == 3
    assert len({o.PatientID for o in outs}) == 1 and outs[0].PatientID.startswith('ANON-')
    np.testing.assert_array_equal(read_dicom(written[1])[0],
                                  read_dicom(src/'1.dcm')[0])
    # consistency across calls: the returned map, or the same salt, give the same UIDs; another salt does not
    again = anonymize(src/'0.dcm', tmp_path/'again.dcm', uid_map=dict(uid_map))
    assert open_dicom(tmp_path/'again.dcm').StudyInstanceUID == uid_map[study]
    same = anonymize(src/'0.dcm', tmp_path/'same.dcm', salt='s3cret')
    other = anonymize(src/'0.dcm', tmp_path/'other.dcm', salt='another')
    assert same[study] == uid_map[study] != other[study]


def test_anonymize_bad_single_file_and_keep(tmp_path):
    (tmp_path/'x.dcm').write_text('not dicom')
    with pytest.raises(MedvisionError, match='x.dcm: not a DICOM file'):
        anonymize(tmp_path/'x.dcm', tmp_path/'y.dcm')
    dicom_from_array(np.zeros((2, 2), np.uint8), tmp_path/'a.dcm', modality='OT', SeriesDescription='T2 FLAIR', PatientName='A^B',
                     BurnedInAnnotation='NO')
    (tmp_path/'o').mkdir()
    r = anonymize(tmp_path/'a.dcm', tmp_path/'o', keep=('SeriesDescription',))
    out = open_dicom(r.written[0])
    assert r.written[0].name == f"{out.SOPInstanceUID}.dcm"
    assert out.SeriesDescription == 'T2 FLAIR' and str(out.PatientName) == ''
