"Volume readers, geometry, label-map writers (NIfTI, DICOM-SEG) and the lesion-burden table on synthetic volumes."
import shutil
from pathlib import Path
import numpy as np, nibabel as nib, pytest
from medvision.core import MedvisionError, SEG_CLASSES, orient_array
from medvision.volumes import (Volume, load_volume, read_npy_volume, axcodes_affine, find_volumes, write_label_nifti,
                               write_dicom_seg, volume_table)

VOXEL_ML = 0.7*0.7*2.5/1000


@pytest.fixture
def vols(ct_vols):
    "The conftest's synthetic patient: `{name: (source, mask file)}`."
    return ct_vols


def test_geometry(vols):
    "Known orientation, spacing and a non-identity affine; all four files hold the same patient in the same places."
    got = {k: load_volume(src) for k,(src,_) in vols.items()}
    assert {k: v.orientation for k,v in got.items()} == {'nii': 'LAS', 'nii-flipped': 'LPI', 'dcm': 'PLS', 'dcm-flipped': 'ARS'}
    for k,v in got.items():
        assert sorted(np.round(v.spacing, 4)) == [0.7, 0.7, 2.5]
        assert not np.allclose(v.affine, np.eye(4)) and np.abs(v.affine[:3, 3]).min() > 50   # offset origin
        assert np.allclose(v.affine, nib.load(vols[k][1]).affine, atol=1e-4)                 # truth mask: same geometry
        assert v.kind == ('dicom' if k.startswith('dcm') else 'nifti') and v.array.dtype == np.float32
    ref = orient_array(got['nii'].array, got['nii'].affine, 'PLS')
    for k,v in got.items():
        a,aff = orient_array(v.array, v.affine, 'PLS')
        assert np.array_equal(a, ref[0]), k                     # HU in real units (int16 - 1024 + rescale for DICOM)
        assert np.allclose(aff, ref[1], atol=1e-3), k            # and in the same places
    assert got['dcm'].array.min() == -1000 and len(got['dcm'].sop_uids) == 12
    assert 'Volume(dicom series_0: (32, 32, 12), 0.7x0.7x2.5 mm, PLS)' == repr(got['dcm'])


def test_npy_volume(tmp_path):
    a = np.random.default_rng(0).normal(size=(5, 8, 9)).astype(np.float32)
    np.save(tmp_path/'s.npy', a)
    v = read_npy_volume(tmp_path/'s.npy', spacing=(0.5, 0.6, 3.))
    assert v.shape == (8, 9, 5) and np.array_equal(v.array[..., 2], a[2]) and v.kind == 'npy'
    assert v.orientation == 'PLS' and np.allclose(v.spacing, (0.5, 0.6, 3.)) and np.isclose(v.voxel_ml, 0.9/1000)
    assert np.allclose(axcodes_affine('LAS', (1, 2, 3))[:3, :3], np.diag([-1, 2, 3]))
    with pytest.warns(UserWarning, match='no spacing'): load_volume(tmp_path/'s.npy')


def _copy_series(vols, dst):
    shutil.copytree(vols['dcm'][0], dst)
    return sorted(dst.glob('*.dcm'))


def test_shuffled_slice_order(vols, tmp_path):
    "File names and InstanceNumber in random order: slices are still sorted by position along the normal."
    import pydicom
    fs = sorted(vols['dcm'][0].glob('*.dcm')); d = tmp_path/'shuffled'; d.mkdir()
    for f,n in zip(fs, np.random.default_rng(1).permutation(len(fs))):
        ds = pydicom.dcmread(f); ds.InstanceNumber = int(n) + 1; ds.save_as(d/f'{n:02d}')   # no extension either
    v, ref = load_volume(d), load_volume(vols['dcm'][0])
    assert np.array_equal(v.array, ref.array) and np.allclose(v.affine, ref.affine) and v.sop_uids == ref.sop_uids


def test_missing_slice(vols, tmp_path):
    fs = _copy_series(vols, tmp_path/'gap'); fs[5].unlink()
    with pytest.raises(MedvisionError) as e: load_volume(tmp_path/'gap')
    msg = str(e.value)
    assert str(tmp_path/'gap') in msg and '1 missing slice(s) between IM0005.dcm' in msg and 'IM0007.dcm' in msg
    assert 'spacing is 2.50 mm' in msg


def test_duplicate_slice(vols, tmp_path):
    fs = _copy_series(vols, tmp_path/'dup'); shutil.copy(fs[3], tmp_path/'dup'/'again.dcm')
    with pytest.raises(MedvisionError, match=r'duplicate slices: .* both at'): load_volume(tmp_path/'dup')


def test_mixed_series(vols, tmp_path):
    _copy_series(vols, tmp_path/'mixed'); shutil.copy(sorted(vols['dcm-flipped'][0].glob('*.dcm'))[0], tmp_path/'mixed'/'other.dcm')
    with pytest.raises(MedvisionError) as e: load_volume(tmp_path/'mixed')
    msg = str(e.value)
    assert str(tmp_path/'mixed') in msg and 'mixed series: 2 SeriesInstanceUIDs' in msg and 'own folder' in msg


def test_uneven_spacing(vols, tmp_path):
    import pydicom
    fs = _copy_series(vols, tmp_path/'uneven')
    ds = pydicom.dcmread(fs[4]); ds.ImagePositionPatient[2] += 1.0; ds.save_as(fs[4])
    with pytest.raises(MedvisionError, match='uneven slice spacing'): load_volume(tmp_path/'uneven')


def test_find_volumes(vols, tmp_path):
    (tmp_path/'a.png').write_bytes(b'x')
    v,rest = find_volumes([vols['nii'][0], vols['dcm'][0].parent, tmp_path/'a.png'])
    assert set(v) == {vols['nii'][0], vols['dcm'][0], vols['dcm'][1]} and rest == [tmp_path/'a.png']
    with pytest.raises(MedvisionError, match='not found'): find_volumes(tmp_path/'nope')


@pytest.mark.parametrize('key', ['nii', 'nii-flipped', 'dcm', 'dcm-flipped'])
def test_label_nifti_opens_aligned(vols, key, tmp_path):
    v = load_volume(vols[key][0]); truth = np.asarray(nib.load(vols[key][1]).dataobj)
    img = nib.load(write_label_nifti(truth, v, tmp_path/'labels.nii.gz'))
    assert np.array_equal(np.asarray(img.dataobj), truth) and img.get_data_dtype() == np.uint8
    if key.startswith('nii'):
        assert np.array_equal(img.affine, v.affine)              # the source's affine, bit for bit
        assert img.header['sform_code'] == v.header['sform_code'] and img.header.get_xyzt_units() == v.header.get_xyzt_units()
    else: assert np.allclose(img.affine, v.affine, atol=1e-4) and img.header['sform_code'] == 1
    with pytest.raises(MedvisionError, match='does not match'): write_label_nifti(truth[:-1], v, tmp_path/'x.nii.gz')


@pytest.mark.parametrize('key', ['dcm', 'dcm-flipped'])
def test_dicom_seg_readback(vols, key, tmp_path):
    import highdicom as hd
    from medvision import __version__
    v = load_volume(vols[key][0]); truth = np.asarray(nib.load(vols[key][1]).dataobj)
    seg = hd.seg.segread(write_dicom_seg(truth, v, tmp_path/'seg.dcm', SEG_CLASSES, recipe='covid-tiny'))
    assert seg.number_of_segments == 3
    assert [s.SegmentLabel for s in seg.SegmentSequence] == SEG_CLASSES[:3]
    assert seg.NumberOfFrames == sum(int((truth[..., k] == c).any()) for k in range(12) for c in range(3))
    refs = [u[2] for u in seg.get_source_image_uids()]
    assert sorted(refs) == sorted(v.sop_uids) and len(refs) == 12
    assert seg.SegmentSequence[0].SegmentAlgorithmName == f'medvision {__version__} covid-tiny'
    assert seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == 'Lung'
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=v.sop_uids, combine_segments=True)  # (slices, H, W)
    want = np.moveaxis(np.where(truth < 3, truth + 1, 0), -1, 0)
    assert np.array_equal(back, want)                            # every voxel back on its source slice
    with pytest.raises(MedvisionError, match='DICOM series'): write_dicom_seg(truth, load_volume(vols['nii'][0]), tmp_path/'x.dcm', SEG_CLASSES)


def test_volume_table_ml(vols):
    v = load_volume(vols['nii'][0]); truth = np.asarray(nib.load(vols['nii'][1]).dataobj)
    t = volume_table(truth, v, SEG_CLASSES, name='p1').set_index('class')
    n = {c: int((truth == i).sum()) for i,c in enumerate(SEG_CLASSES)}
    assert list(t.index) == ['ground_glass', 'consolidation', 'lungs_other', 'lesion'] and (t['volume'] == 'p1').all()
    assert n['ground_glass'] > 0 and n['consolidation'] > 0
    les, lung = n['ground_glass'] + n['consolidation'], n['ground_glass'] + n['consolidation'] + n['lungs_other']
    assert np.isclose(t.loc['lesion', 'ml'], les*VOXEL_ML) and np.isclose(t.loc['ground_glass', 'ml'], n['ground_glass']*VOXEL_ML)
    assert np.isclose(t.loc['lesion', 'pct_of_lung'], 100*les/lung)
    # slices along head-feet (axis 2 of the LAS file) holding any lesion
    assert t.loc['lesion', 'slices_with_lesion'] == int((truth < 2).any((0, 1)).sum()) and v.slice_axis == 2


def test_non_image_dicom_is_skipped(vols, tmp_path):
    "A DICOMDIR-like object without pixels (no Rows) in the series folder is not a slice."
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    _copy_series(vols, tmp_path/'s')
    ds = Dataset(); ds.file_meta = FileMetaDataset(); ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = '1.2.840.10008.1.3.10'; ds.file_meta.MediaStorageSOPInstanceUID = '1.2.3'
    ds.SOPClassUID = '1.2.840.10008.1.3.10'; ds.SOPInstanceUID = '1.2.3'
    pydicom.dcmwrite(tmp_path/'s'/'DICOMDIR', ds, enforce_file_format=True)
    assert load_volume(tmp_path/'s').shape == (32, 32, 12)
