"Tests for medvision.io: read_image per format, read_volume, check_files, list_files."
import shutil, warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medvision.core import MedvisionError
from medvision.dicom import dicom_from_array, read_dicom
from medvision.io import check_files, file_ext, file_role, list_files, FILE_TYPES, is_dicom_file, read_image, read_volume, SUPPORTED_EXTS

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_dicom_with_and_without_extension(tmp_path):
    ref, _ = read_dicom(get_testdata_file('CT_small.dcm'))
    for name in ['a.dcm', 'noext', '1.2.840.113619.2.55', 'b.DICOM']:
        shutil.copy(get_testdata_file('CT_small.dcm'), tmp_path/name)
        x = read_image(tmp_path/name)
        assert x.dtype == np.float32 and x.shape == (128, 128)
        np.testing.assert_array_equal(x, ref)
    assert is_dicom_file(tmp_path/'noext') and not is_dicom_file(get_testdata_file('README.txt'))
    rgb = read_image(get_testdata_file('SC_rgb.dcm') or get_testdata_file('SC_rgb_rle.dcm'))
    assert rgb.dtype == np.uint8 and rgb.shape == (100, 100, 3)
    pal = read_image(get_testdata_file('examples_palette.dcm'))             # 16-bit palette → uint8 RGB
    assert pal.dtype == np.uint8 and pal.shape == (350, 800, 3) and pal.max() > 200
    assert read_image(get_testdata_file('emri_small.dcm') or get_testdata_file('rtdose.dcm')).ndim == 3


def test_pil_modes(tmp_path):
    g = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cases = {'L.png': Image.fromarray(g), 'LA.png': Image.fromarray(g).convert('LA'), 'g.bmp': Image.fromarray(g),
             'g.tif': Image.fromarray(g), 'one.png': Image.fromarray(g > 100)}
    for name, im in cases.items():
        im.save(tmp_path/name)
        x = read_image(tmp_path/name)
        assert x.dtype == np.float32 and x.shape == (3, 4), name
        if name != 'one.png': np.testing.assert_array_equal(x, g, err_msg=name)
    np.testing.assert_array_equal(read_image(tmp_path/'one.png'), (g > 100) * 255.)
    v16 = np.array([[0, 1, 4095], [40000, 65535, 7]], np.uint16)
    Image.fromarray(v16).save(tmp_path/'a16.png')
    np.testing.assert_array_equal(read_image(tmp_path/'a16.png'), v16)      # 16-bit values preserved
    c = np.random.default_rng(0).integers(0, 255, (5, 6, 3), dtype=np.uint8)
    Image.fromarray(c).save(tmp_path/'c.png'); Image.fromarray(c).convert('RGBA').save(tmp_path/'ca.png')
    for n in ['c.png', 'ca.png']:
        x = read_image(tmp_path/n); assert x.dtype == np.uint8; np.testing.assert_array_equal(x, c)
    Image.fromarray(c).save(tmp_path/'c.jpg', quality=95)
    j = read_image(tmp_path/'c.jpg'); assert j.shape == (5, 6, 3) and j.dtype == np.uint8
    gp = Image.fromarray(g).convert('P'); gp.putpalette([v for i in range(256) for v in (i, i, i)])
    gp.save(tmp_path/'grayp.png')
    assert read_image(tmp_path/'grayp.png').shape == (3, 4)                  # gray palette → gray
    Image.fromarray(c).convert('P', palette=Image.Palette.ADAPTIVE).save(tmp_path/'colp.png')
    assert read_image(tmp_path/'colp.png').shape == (5, 6, 3)
    Image.fromarray(np.array([[0.5, 2.0]], np.float32)).save(tmp_path/'f.tif')
    np.testing.assert_array_equal(read_image(tmp_path/'f.tif'), [[0.5, 2.0]])
    pages = [Image.fromarray(g + i) for i in range(3)]
    pages[0].save(tmp_path/'multi.tif', save_all=True, append_images=pages[1:])
    m = read_image(tmp_path/'multi.tif'); assert m.shape == (3, 3, 4) and (m[2] == g + 2).all()


def test_constant_images_are_valid(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path/'black.png')
    np.save(tmp_path/'c.npy', np.full((8, 8), 7., np.float32))
    assert read_image(tmp_path/'black.png').max() == 0 and read_image(tmp_path/'c.npy').min() == 7
    good, bad = check_files([tmp_path/'black.png', tmp_path/'c.npy'])
    assert len(good) == 2 and bad == []


def test_npy_and_nifti(tmp_path):
    a = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    np.save(tmp_path/'a.npy', a)
    x = read_image(tmp_path/'a.npy')
    assert isinstance(x, np.memmap) and not x.flags.writeable
    np.testing.assert_array_equal(x, a)
    np.save(tmp_path/'obj.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MedvisionError, match='obj.npy: holds pickled Python objects'):
        read_image(tmp_path/'obj.npy')
    np.save(tmp_path/'inf.npy', np.array([[1, np.inf]], np.float64))
    with pytest.raises(MedvisionError, match='0 NaN and 1 Inf'):
        read_image(tmp_path/'inf.npy')
    vol = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    img = nib.Nifti1Image(vol, np.diag([0.7, 0.7, 3., 1.])); img.header.set_slope_inter(2., -10.)
    for n in ['v.nii', 'v.nii.gz']:
        nib.save(img, tmp_path/n)
        x = read_image(tmp_path/n)
        assert x.dtype == np.float32 and x.shape == (3, 4, 5)
        np.testing.assert_array_equal(x, vol * 2. - 10)                         # scaling applied
        v, aff = read_volume(tmp_path/n)
        np.testing.assert_array_equal(aff, np.diag([0.7, 0.7, 3., 1.]).astype(np.float32))
    nib.save(nib.Nifti1Image(np.array([[[np.nan]]], np.float32), np.eye(4)), tmp_path/'nan.nii.gz')
    with pytest.raises(MedvisionError, match='nan.nii.gz: array holds 1 NaN'):
        read_image(tmp_path/'nan.nii.gz')
    assert file_ext('a/B.NII.GZ') == '.nii.gz' and '.nii.gz' in SUPPORTED_EXTS


def test_read_volume_dicom_series(tmp_path):
    # 3 slices written in scrambled file order, z = 10, 12.5, 15 mm; slice k holds the value k
    for name, k in [('b.dcm', 2), ('c.dcm', 0), ('a.dcm', 1)]:
        dicom_from_array(np.full((4, 5), k, np.int16), tmp_path/name, slope=1, intercept=0, SeriesInstanceUID='1.2.3',
                         ImagePositionPatient=[-20., -30., 10. + 2.5 * k], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                         PixelSpacing=[0.5, 0.8], InstanceNumber=3 - k)
    v, aff = read_volume(tmp_path)
    assert v.shape == (4, 5, 3) and [v[0, 0, k] for k in range(3)] == [0, 1, 2]
    # voxel (row, col, slice) → RAS mm: rows step 0.5 mm along -A (LPS y), cols 0.8 mm along -R (LPS x), slices 2.5 mm
    np.testing.assert_allclose(aff, [[0, -0.8, 0, 20], [-0.5, 0, 0, 30], [0, 0, 2.5, 10], [0, 0, 0, 1]])
    with pytest.raises(MedvisionError, match='not a volume file'):
        read_volume(get_testdata_file('CT_small.dcm'))


def test_unsupported_missing_empty(tmp_path):
    (tmp_path/'a.csv').write_text('x,y')
    (tmp_path/'z.png').touch()
    for f, why in [(tmp_path/'a.csv', "unsupported file type '.csv'"), (tmp_path/'nope.png', 'file not found'),
                   (tmp_path/'z.png', 'empty file (0 bytes)'), (tmp_path, 'is a folder')]:
        with pytest.raises(MedvisionError, match=None) as e:
            read_image(f)
        assert why in e.value.msg and e.value.path == str(f)


def test_check_files_summary(tmp_path):
    files = []
    for i in range(8):
        f = tmp_path/f'{i:02d}.png'
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(f); files.append(f)
    for i in (1, 3, 4, 5, 6, 7):
        files[i].write_bytes(b'garbage')
    with pytest.raises(MedvisionError) as e:
        check_files(files)
    msg = str(e.value)
    assert '6 of 8 files unreadable: 01.png (cannot open image' in msg and '06.png' in msg and '... and 1 more' in msg
    assert '07.png' not in msg and 'skip_bad=True' in msg
    with pytest.warns(UserWarning, match='6 of 8 files unreadable'):
        good, bad = check_files(files, skip_bad=True, n_workers=0)
    assert good == [files[0], files[2]] and [f for f, _ in bad] == [files[i] for i in (1, 3, 4, 5, 6, 7)]
    assert all('cannot open image' in r for _, r in bad)
    def picky(f):
        if f.name == '00.png': raise RuntimeError('custom reader failed')
        return read_image(f)
    good, bad = check_files(files[:3], reader=picky, skip_bad=True)
    assert good == [files[2]] and bad[0] == (files[0], 'RuntimeError: custom reader failed')
    assert check_files([files[0], files[2]]) == ([files[0], files[2]], [])


def test_list_files(tmp_path):
    (tmp_path/'sub'/'deeper').mkdir(parents=True); (tmp_path/'.git').mkdir(); (tmp_path/'__MACOSX').mkdir()
    for p in ['b.png', 'a.PNG', 'sub/c.nii.gz', 'sub/deeper/d.npy', '.git/x.png', '__MACOSX/._b.png', '._a.png', 'notes.txt']:
        (tmp_path/p).write_bytes(b'x')
    shutil.copy(get_testdata_file('CT_small.dcm'), tmp_path/'sub'/'IM0001')   # extension-less DICOM
    (tmp_path/'sub'/'README').write_text('not dicom')
    got = [f.relative_to(tmp_path).as_posix() for f in list_files(tmp_path)]
    assert got == ['a.PNG', 'b.png', 'sub/IM0001', 'sub/c.nii.gz', 'sub/deeper/d.npy']
    assert [f.name for f in list_files(tmp_path, exts=['png'])] == ['a.PNG', 'b.png']
    assert [f.name for f in list_files(tmp_path, exts='.npy')] == ['d.npy']
    (tmp_path/'empty').mkdir()
    with pytest.raises(MedvisionError, match='empty: no image files'):
        list_files(tmp_path/'empty')
    with pytest.raises(MedvisionError, match='input not found'):
        list_files(tmp_path/'missing')


def test_file_roles_are_one_table(tmp_path):
    "Every extension belongs to one role; `list_files` by role keeps exactly that role's files from folders."
    exts = [e for v in FILE_TYPES.values() for e in v]
    assert len(exts) == len(set(exts))
    for role, es in FILE_TYPES.items():
        for e in es: (tmp_path/f"x{e}").write_bytes(b'x')
    for role, es in FILE_TYPES.items():
        assert sorted(file_ext(f) for f in list_files(tmp_path, roles=role)) == sorted(es)
        assert all(file_role(f) == role for f in list_files(tmp_path, roles=role))
