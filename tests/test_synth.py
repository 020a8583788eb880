"Synthetic datasets: files, shapes, dtypes, determinism and faithfulness to the real layouts."
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medvision.core import MedvisionError, SEG_CLASSES, BODY_PARTS, CHESTCT_CLASSES
from medvision import synth as S
from medvision.synth import (SYNTH_LAYOUTS, synth, FAKE_PHI, CHESTCT_FOLDERS, kaggle_onehot, covid_npy_arrays,
                             synth_ct_slice, synth_ct_volume, synth_radiograph, synth_mri_slice, synth_chestct)

BG, LUNG, GGO, CONS = (SEG_CLASSES.index(c) for c in ('background', 'lungs_other', 'ground_glass', 'consolidation'))


def _files(folder):
    return sorted(f for f in Path(folder).rglob('*') if f.is_file())


def _digest(folder):
    h = hashlib.sha256()
    for f in _files(folder):
        h.update(str(f.relative_to(folder)).encode()); h.update(f.read_bytes())
    return h.hexdigest()


def _decode(oh):
    "The documented rule: lesions > lungs-other > background; no channel set = background."
    return np.where(oh.any(-1), np.argmax(oh > 0, -1), BG)


# ---------------------------------------------------------------- pictures

def test_ct_slice_hu_and_classes():
    rng = np.random.default_rng(0)
    sl = [synth_ct_slice(64, rng, p_empty=0) for _ in range(6)]
    hu, m = np.stack([s[0] for s in sl]), np.stack([s[1] for s in sl])
    assert hu.dtype == np.float32 and m.dtype == np.uint8 and hu.shape == (6, 64, 64)
    assert set(np.unique(m)) == {GGO, CONS, LUNG, BG}
    assert abs(np.median(hu[m == LUNG]) + 850) < 30
    assert -700 < np.median(hu[m == GGO]) < -300
    assert -120 < np.median(hu[m == CONS]) < 80
    assert np.median(hu[(m == BG) & (hu > -500)]) > 0         # body and bone
    assert np.median(hu[:, :3, :3]) < -950                    # air
    assert (hu > 600).any()                                   # bone


def test_ct_slice_empty_fraction_and_seed():
    rng = np.random.default_rng(1)
    has = [(synth_ct_slice(32, rng, p_empty=0.5)[1] < LUNG).any() for _ in range(60)]
    assert 0.25 < 1 - np.mean(has) < 0.75
    assert not (synth_ct_slice(32, 3, p_empty=1)[1] < LUNG).any()
    a, b, c = synth_ct_slice(32, 5), synth_ct_slice(32, 5), synth_ct_slice(32, 6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and not np.array_equal(a[0], c[0])


def test_ct_volume_neighbours_are_similar():
    hu, m = synth_ct_volume(12, 48, rng=2)
    assert hu.shape == m.shape == (12, 48, 48)
    near = np.mean([np.corrcoef(hu[i].ravel(), hu[i+1].ravel())[0, 1] for i in range(11)])
    other = synth_ct_volume(12, 48, rng=3)[0]
    far = np.mean([np.corrcoef(hu[i].ravel(), other[i].ravel())[0, 1] for i in range(12)])
    assert near > far


def test_radiograph_classes_and_errors():
    for c in range(len(BODY_PARTS)):
        r = synth_radiograph(c, 40, rng=c)
        assert r.dtype == np.float32 and max(r.shape) == 40 and 0 <= r.min() and r.max() <= 1
    with pytest.raises(MedvisionError, match='body part id 22'): synth_radiograph(22)
    with pytest.raises(MedvisionError, match='unknown MRI sequence'): synth_mri_slice('DWI')
    with pytest.raises(MedvisionError, match='unknown chest-CT class'): synth_chestct('adeno')


def test_radiograph_classes_are_separable():
    "Nearest class mean on held-out images: a trivial classifier already beats chance by far."
    classes = [0, 3, 9, 11, 13, 18, 20]
    img = lambda c, s: synth_radiograph(c, 32, rng=s, aspect=1).ravel()
    means = np.stack([np.mean([img(c, s) for s in range(8)], 0) for c in classes])
    hits = [np.argmin(((means - img(c, 100 + s))**2).sum(1)) == i for i, c in enumerate(classes) for s in range(4)]
    assert np.mean(hits) > 0.6        # chance is 1/7


# ---------------------------------------------------------------- writers

def test_covid_npy(tmp_path):
    out = S.write_covid_npy(tmp_path, n=8, size=48, n_radiopedia=9, n_test=3)
    assert out == tmp_path
    names = {'images_medseg': (8, 48, 48, 1), 'masks_medseg': (8, 48, 48, 4), 'images_radiopedia': (9, 48, 48, 1),
             'masks_radiopedia': (9, 48, 48, 4), 'test_images_medseg': (3, 48, 48, 1)}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f'{k}.npy' for k in names)
    for k, shp in names.items():
        a = np.load(tmp_path/f'{k}.npy', mmap_mode='r')
        assert a.shape == shp and a.dtype == np.float32, k
    ref = covid_npy_arrays(8, 48, 0, 9, 3)
    assert ref['rp_volumes'] == [3, 3, 3]
    for k in ('masks_medseg', 'masks_radiopedia'):
        oh = np.load(tmp_path/f'{k}.npy')
        assert set(np.unique(oh)) == {0., 1.}
        s = oh.sum(-1)
        assert (s == 2).any() and (s == 0).any() and s.max() == 2       # the documented overlaps
        two = s == 2                                                    # ...only lesion + lungs-other
        assert (oh[two][:, LUNG] == 1).all() and (oh[two][:, [GGO, CONS]].sum(1) == 1).all()
        assert np.array_equal(_decode(oh), ref[k])                      # the priority rule recovers the mask
        assert not np.array_equal(np.argmax(oh, -1), ref[k])            # a plain argmax does not
    im = np.load(tmp_path/'images_medseg.npy')
    assert np.array_equal(im[..., 0], ref['images_medseg']) and im.min() < -900


def test_kaggle_onehot_single_slice():
    m = np.full((6, 6), BG, np.uint8); m[1:5, 1:5] = LUNG; m[2:4, 2:4] = GGO
    oh = kaggle_onehot(m)
    assert oh.shape == (6, 6, 4) and np.array_equal(_decode(oh), m)
    assert oh[2, 2, LUNG] == 1 and oh[0, 2].sum() == 0 and oh[0, 0, BG] == 1


def test_covid_png(tmp_path):
    S.write_covid_png(tmp_path, n=12, size=48, n_volumes=3, n_test=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['covid', 'ct', 'lungs', 'test']
    for k in ('ct', 'lungs', 'covid'):
        assert [p.name for p in sorted((tmp_path/k).iterdir())] == [f'{i:04d}.png' for i in range(12)]
    assert [p.name for p in sorted((tmp_path/'test').iterdir())] == ['0000.png', '0001.png']
    ct = np.stack([np.array(Image.open(tmp_path/'ct'/f'{i:04d}.png')) for i in range(12)]).astype(float)
    lu = np.stack([np.array(Image.open(tmp_path/'lungs'/f'{i:04d}.png')) for i in range(12)])
    co = np.stack([np.array(Image.open(tmp_path/'covid'/f'{i:04d}.png')) for i in range(12)])
    assert ct.shape == (12, 48, 48) and Image.open(tmp_path/'ct/0000.png').mode == 'L'
    assert set(np.unique(lu)) == {0, 255} and set(np.unique(co)) <= {0, 255} and (co > 0).any()
    assert ((co > 0) <= (lu > 0)).all()
    # volumes of 4 slices: neighbours inside a volume are closer than neighbours across a volume change
    d = [np.abs(ct[i] - ct[i+1]).mean() for i in range(11)]
    assert max(d[3], d[7]) > np.mean([d[i] for i in (0, 1, 2, 4, 5, 6, 8, 9, 10)])


def test_medseg_nifti(tmp_path):
    import nibabel as nib
    S.write_medseg_nifti(tmp_path, n=10, size=32, n_rp=2, rp_depth=6)
    rel = sorted(str(p.relative_to(tmp_path)) for p in _files(tmp_path))
    assert rel == ['rp_im/1.nii.gz', 'rp_im/2.nii.gz', 'rp_msk/1.nii.gz', 'rp_msk/2.nii.gz',
                   'tr_im.nii.gz', 'tr_mask.nii.gz', 'val_im.nii.gz']
    im, mk = nib.load(tmp_path/'tr_im.nii.gz'), nib.load(tmp_path/'tr_mask.nii.gz')
    assert im.shape == mk.shape == (32, 32, 10) and im.get_data_dtype() == np.float32
    labs = set(np.unique(mk.get_fdata()))
    assert labs <= {0, 1, 2, 3} and {1, 2} <= labs
    a, m = im.get_fdata(), mk.get_fdata()
    assert a[m == 1].mean() < -250 and a[m == 2].mean() > -150
    rp, rm = nib.load(tmp_path/'rp_im/1.nii.gz'), nib.load(tmp_path/'rp_msk/1.nii.gz')
    assert rp.shape == (32, 32, 6) and rp.get_data_dtype() == np.int16 and rm.get_data_dtype() == np.uint8
    assert nib.load(tmp_path/'val_im.nii.gz').shape == (32, 32, 2)
    # effusion (label 3) appears in some patient over a few seeds, as fluid (~15 HU)
    eff = []
    for s in range(4):
        S.write_medseg_nifti(tmp_path/f's{s}', n=10, size=32, seed=s)
        m = nib.load(tmp_path/f's{s}/tr_mask.nii.gz').get_fdata(); a = nib.load(tmp_path/f's{s}/tr_im.nii.gz').get_fdata()
        eff += list(a[m == 3])
    assert len(eff) and -60 < np.median(eff) < 90


def test_dicom_ct(tmp_path):
    import pydicom
    S.write_dicom_ct(tmp_path, n=4, size=32, seed=3)
    fs = sorted((tmp_path/'ct-series').glob('*.dcm'))
    assert [f.name for f in fs] == [f'IM{i:04d}.dcm' for i in range(1, 5)]
    dss = [pydicom.dcmread(f) for f in fs]
    hu = synth_ct_volume(4, 32, np.random.default_rng([3, 4]))[0]
    for k, ds in enumerate(dss):
        assert ds.SOPClassUID == '1.2.840.10008.5.1.4.1.1.2' and ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.Modality == 'CT' and ds.InstanceNumber == k + 1 and ds.PixelRepresentation == 1
        assert ds.pixel_array.dtype == np.int16 and float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
        got = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.abs(got - hu[k]).max() <= 0.5                          # HU after the modality LUT
        assert str(ds.PatientName) == FAKE_PHI['PatientName'] and ds.InstitutionName == FAKE_PHI['InstitutionName']
    assert len({ds.SOPInstanceUID for ds in dss}) == 4
    assert len({ds.StudyInstanceUID for ds in dss}) == len({ds.SeriesInstanceUID for ds in dss}) == 1
    z = [float(ds.ImagePositionPatient[2]) for ds in dss]
    assert np.allclose(np.diff(z), -float(dss[0].SliceThickness))
    raw = fs[0].read_bytes()
    for v in ('PatientName', 'PatientID', 'PatientBirthDate', 'InstitutionName'):
        assert FAKE_PHI[v].encode() in raw                                # greppable fake PHI


def test_unifesp_dicom(tmp_path):
    import pydicom
    S.write_unifesp_dicom(tmp_path, n=30, size=40, p_multi=0.3, n_test=3)
    df = pd.read_csv(tmp_path/'train.csv', dtype=str)
    assert list(df.columns) == ['SOPInstanceUID', 'Target', 'StudyInstanceUID', 'SeriesInstanceUID']
    assert len(df) == 30 and df.SOPInstanceUID.is_unique and df.Target.str.endswith(' ').all()
    labels = df.Target.str.split().map(lambda t: [int(c) for c in t])
    assert (labels.map(len) > 1).any() and (labels.map(len) == 1).any()
    counts = pd.Series([c for l in labels for c in l]).value_counts()
    assert set(counts.index) == set(S.DEFAULT_BODYPARTS) and counts.min() >= 2
    assert counts.idxmax() == 3                                            # Chest dominates, as in the real set
    assert df.StudyInstanceUID.nunique() < len(df)                         # some studies hold several images
    files = {f.name: f for f in (tmp_path/'train').rglob('*')}
    assert sorted(n for n, f in files.items() if f.is_file()) == sorted(df.SOPInstanceUID + '-c.dcm')
    assert len([f for f in (tmp_path/'test').rglob('*-c.dcm')]) == 3
    plan = {r['sop']: r for r in S._unifesp_plan(30, 40, 0, S.DEFAULT_BODYPARTS, 0.3, 3)}
    seen = set()
    for _, row in df.iterrows():
        f = files[row.SOPInstanceUID + '-c.dcm']
        ds = pydicom.dcmread(f)
        assert f.relative_to(tmp_path).parts[2:4] == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
        assert ds.StudyInstanceUID == row.StudyInstanceUID and ds.SOPInstanceUID == row.SOPInstanceUID
        assert ds.Modality in ('CR', 'DX') and str(ds.PatientName) == FAKE_PHI['PatientName']
        px = ds.pixel_array.astype(np.float32)
        assert px.max() <= 2**ds.BitsStored - 1 and ds.BitsAllocated == (8 if ds.BitsStored == 8 else 16)
        disp = (2**ds.BitsStored - 1) - px if ds.PhotometricInterpretation == 'MONOCHROME1' else px
        assert np.corrcoef(disp.ravel(), plan[row.SOPInstanceUID]['img'].ravel())[0, 1] > 0.99   # dense is bright
        seen.add((ds.Modality, ds.PhotometricInterpretation, int(ds.BitsStored)))
    assert {m for m, _, _ in seen} == {'CR', 'DX'} and {p for _, p, _ in seen} == {'MONOCHROME1', 'MONOCHROME2'}
    assert {b for _, _, b in seen} >= {8, 12, 15}


def test_unifesp_classes_option(tmp_path):
    S.write_unifesp_dicom(tmp_path, n=44, size=32, classes=range(22), p_multi=0)
    df = pd.read_csv(tmp_path/'train.csv', dtype=str)
    assert sorted(df.Target.str.strip().astype(int).unique()) == list(range(22))
    with pytest.raises(MedvisionError, match='body part id 30'):
        S.write_unifesp_dicom(tmp_path/'bad', classes=[3, 30])


def test_unifesp_png_matches_dicom(tmp_path):
    S.write_unifesp_dicom(tmp_path/'dcm', n=16, size=40, seed=2)
    S.write_unifesp_png(tmp_path/'png', n=16, size=40, seed=2)
    d = pd.read_csv(tmp_path/'dcm/train.csv', dtype=str).set_index('SOPInstanceUID').sort_index()
    p = pd.read_csv(tmp_path/'png/train_df.csv', dtype=str).set_index('SOPInstanceUID')
    assert list(p.index) == sorted(p.index)                       # sorted by UID like the real train_df.csv
    assert (p.Target == d.Target).all() and (p.StudyInstanceUID == d.StudyInstanceUID).all()
    import pydicom
    dcm = {f.name[:-6]: f for f in (tmp_path/'dcm/train').rglob('*-c.dcm')}
    for uid, r in p.iterrows():
        assert r.image_path == f'./images/train/{uid}-c.png'
        im = Image.open(tmp_path/'png'/r.image_path)
        assert im.mode == 'L' and max(im.size) == 40 and (im.size[1], im.size[0]) == (int(r.Rows), int(r.Columns))
        ds = pydicom.dcmread(dcm[uid]); px = ds.pixel_array.astype(np.float32)
        if ds.PhotometricInterpretation == 'MONOCHROME1': px = -px
        assert r.PhotometricInterpretation == ds.PhotometricInterpretation
        assert np.corrcoef(px.ravel(), np.asarray(im, np.float32).ravel())[0, 1] > 0.95   # the same picture, dense bright
    bp = pd.read_csv(tmp_path/'png/body_parts.csv')
    assert bp.Target.tolist() == list(range(22)) and bp.name.tolist() == BODY_PARTS


def test_chestct(tmp_path):
    S.write_chestct(tmp_path, n=10, size=48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['test', 'train', 'valid']
    assert sorted(p.name for p in (tmp_path/'train').iterdir()) == [
        'adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib', 'large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa', 'normal',
        'squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa']
    assert sorted(p.name for p in (tmp_path/'valid').iterdir()) == sorted(p.name for p in (tmp_path/'train').iterdir())
    assert sorted(p.name for p in (tmp_path/'test').iterdir()) == [
        'adenocarcinoma', 'large.cell.carcinoma', 'normal', 'squamous.cell.carcinoma']
    counts = {p.name.split('_')[0]: len(list(p.iterdir())) for p in (tmp_path/'train').iterdir()}
    assert counts['adenocarcinoma'] > counts['large.cell.carcinoma']
    fs = _files(tmp_path)
    ims = [Image.open(f) for f in fs]
    assert {im.mode for im in ims} == {'RGBA', 'RGB', 'L'}
    assert all(f.suffix == '.jpg' for f in fs if f.suffix != '.png') and all('normal' in f.parts for f in fs if f.suffix == '.jpg')
    assert any(f.suffix == '.jpg' for f in fs) and any(' (2)' in f.name or 'Copy' in f.name for f in fs)
    assert all(im.size[0] == 48 for im in ims) and any(im.size[1] < 40 for im in ims)
    assert len({f.name for f in fs if 'normal' in f.parts and f.parts[-3] == 'train'}) == counts['normal']


def test_chestct_classes_differ():
    "The tumour is where its class says: lung area lost to a mass differs from normal."
    lung = lambda c, s: (synth_chestct(c, 64, rng=s) < -600).sum()
    for c in ('large.cell.carcinoma', 'squamous.cell.carcinoma'):
        assert np.mean([lung(c, s) for s in range(4)]) < np.mean([lung('normal', s) for s in range(4)])


@pytest.mark.parametrize('spanish', [False, True])
def test_mri_folders(tmp_path, spanish):
    S.write_mri_folders(tmp_path, n=4, size=32, spanish=spanish)
    splits = ['entrenamiento', 'test', 'validacion'] if spanish else ['test', 'train', 'valid']
    assert sorted(p.name for p in tmp_path.iterdir()) == splits
    for s in splits:
        assert sorted(p.name for p in (tmp_path/s).iterdir()) == ['FLAIR', 'T1', 'T2']
    tr = 'entrenamiento' if spanish else 'train'
    ims = {c: np.stack([np.array(Image.open(f)) for f in sorted((tmp_path/tr/c).glob('*.png'))]) for c in ('T1', 'T2', 'FLAIR')}
    assert all(v.shape == (4, 32, 32) and v.dtype == np.uint8 for v in ims.values())
    assert len(list((tmp_path/'test/T2').glob('*.png'))) == 2


def test_mri_contrast_by_tissue():
    "CSF is bright only in T2: the mean of the ventricle region ranks T2 first."
    from medvision.phantoms import _brain_case, _brain_labels, _mri_paint, _TISSUES
    lab = _brain_labels(_brain_case(np.random.default_rng(0)), 64, 64, 0.5)
    m = {s: {t: _mri_paint(lab, s, np.random.default_rng(1))[lab == i].mean() for i, t in enumerate(_TISSUES) if (lab == i).any()}
         for s in ('T1', 'T2', 'FLAIR')}
    assert m['T1']['wm'] > m['T1']['gm'] > m['T1']['csf']
    assert m['T2']['csf'] > m['T2']['gm'] > m['T2']['wm']
    assert m['FLAIR']['gm'] > m['FLAIR']['wm'] > m['FLAIR']['csf']


def test_mri_nifti(tmp_path):
    import nibabel as nib
    S.write_mri_nifti(tmp_path, n=3, size=32, depth=14)
    rel = sorted(str(p.relative_to(tmp_path)) for p in _files(tmp_path))
    assert rel == ['CASE-0001/CASE-0001-t1c.nii.gz', 'CASE-0001/CASE-0001-t1n.nii.gz', 'CASE-0001/CASE-0001-t2f.nii.gz',
                   'CASE-0001/CASE-0001-t2w.nii.gz', 'CASE-0002/flair.nii.gz', 'CASE-0002/t1.nii.gz', 'CASE-0002/t1c.nii.gz',
                   'CASE-0002/t2.nii.gz', 'CASE-0003/CASE-0003_fla_bet.nii.gz', 'CASE-0003/CASE-0003_t1_bet.nii.gz',
                   'CASE-0003/CASE-0003_t1c_bet.nii.gz', 'CASE-0003/CASE-0003_t2_bet.nii.gz']
    for f in _files(tmp_path):
        v = nib.load(f); a = np.asanyarray(v.dataobj)
        assert v.shape == (32, 32, 14) and v.get_data_dtype() == np.int16
        nz = [i for i in range(14) if a[..., i].any()]
        assert nz[0] > 0 and nz[-1] < 13 and a.max() > 300
    assert np.asanyarray(nib.load(tmp_path/'CASE-0003/CASE-0003_t2_bet.nii.gz').dataobj).min() < 0
    assert np.asanyarray(nib.load(tmp_path/'CASE-0002/t2.nii.gz').dataobj).min() == 0


# ---------------------------------------------------------------- dispatch and determinism

def test_synth_dispatch(tmp_path):
    assert set(SYNTH_LAYOUTS) == {'covid-npy', 'covid-png', 'medseg-nifti', 'dicom-ct', 'unifesp-dicom', 'unifesp-png',
                            'chestct', 'mri-folders', 'mri-nifti'}
    with pytest.raises(MedvisionError) as e: synth('kaggle', tmp_path)
    assert "unknown layout 'kaggle'" in str(e.value) and all(k in str(e.value) for k in SYNTH_LAYOUTS)
    out = synth('covid-npy', tmp_path/'a', n=5, size=24, seed=1)
    assert out == tmp_path/'a' and np.load(out/'masks_medseg.npy').shape == (5, 24, 24, 4)
    out = synth('mri-nifti', tmp_path/'b', n=1, size=24)
    assert len(_files(out)) == 4


@pytest.mark.parametrize('layout', sorted(SYNTH_LAYOUTS))
def test_deterministic(tmp_path, layout):
    a, b, c = (_digest(synth(layout, tmp_path/f'{i}', n=4, size=32, seed=s)) for i, s in enumerate([7, 7, 8]))
    assert a == b and a != c
    assert _files(tmp_path/'0')


# ---------------------------------------------------------------- faithful to the real data (when present)

def test_layouts_match_real_data(shared_data, tmp_path):
    real = shared_data()
    if (real/'covid-ct-png').exists():
        S.write_covid_png(tmp_path/'cp', n=3, size=32, n_test=1)
        assert {p.name for p in (real/'covid-ct-png').iterdir() if p.is_dir()} == {p.name for p in (tmp_path/'cp').iterdir()}
        assert Image.open(real/'covid-ct-png/ct/0000.png').mode == Image.open(tmp_path/'cp/ct/0000.png').mode == 'L'
    if (real/'chest-ct').exists():
        for split in ('train', 'valid'):
            assert sorted(p.name for p in (real/'chest-ct'/split).iterdir()) == sorted(CHESTCT_FOLDERS[split])
    if (real/'bodypart-unifesp').exists():
        S.write_unifesp_png(tmp_path/'up', n=4, size=32)
        rc = pd.read_csv(real/'bodypart-unifesp/train_df.csv', nrows=5, dtype=str)
        sc = pd.read_csv(tmp_path/'up/train_df.csv', dtype=str)
        assert set(sc.columns) <= set(rc.columns)
        assert rc.image_path[0].startswith('./images/train/') and sc.image_path[0].startswith('./images/train/')
        assert rc.Target.str.endswith(' ').all() and sc.Target.str.endswith(' ').all()
        assert rc.SOPInstanceUID[0].startswith(S.UID_PREFIX)
        assert (pd.read_csv(real/'bodypart-unifesp/body_parts.csv').name.tolist() == BODY_PARTS)
    if (real/'mri-brats').exists():
        real_names = {p.name.replace(p.parent.name, 'CASE') for p in (real/'mri-brats').rglob('*.nii.gz')}
        S.write_mri_nifti(tmp_path/'mb', n=3, size=24)
        syn_names = {p.name.replace(p.parent.name, 'CASE') for p in (tmp_path/'mb').rglob('*.nii.gz')}
        assert real_names == syn_names
    if not any((real/n).exists() for n in ('covid-ct-png', 'chest-ct', 'bodypart-unifesp', 'mri-brats')):
        pytest.skip('none of covid-ct-png, chest-ct, bodypart-unifesp, mri-brats in the shared data')


# ---------------------------------------------------------------- learnable by tiny networks (slow)

def _tiny_cnn(n_in, n_out):
    import torch.nn as nn
    blk = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*blk(n_in, 16), *blk(16, 32), *blk(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_out))


def _fit_classifier(x, y, xv, yv, n_cls, epochs=15):
    import torch
    torch.manual_seed(0)
    net = _tiny_cnn(1, n_cls); opt = torch.optim.AdamW(net.parameters(), 3e-3)
    x, y, xv, yv = map(torch.as_tensor, (x, y, xv, yv))
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(16):
            opt.zero_grad(); torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward(); opt.step()
    net.eval()
    with torch.no_grad(): return (net(xv).argmax(1) == yv).float().mean().item()


def _resized(img, size=48):
    return np.asarray(Image.fromarray(np.uint8(np.clip(img, 0, 1)*255)).resize((size, size)), np.float32)[None]/255


@pytest.mark.slow
def test_tiny_cnn_learns_body_parts():
    classes = list(S.DEFAULT_BODYPARTS)
    rng = np.random.default_rng(0)
    def data(n):
        y = rng.integers(0, len(classes), n)
        return np.stack([_resized(synth_radiograph(classes[c], 48, rng)) for c in y]), y
    acc = _fit_classifier(*data(300), *data(120), len(classes))
    print(f"body-part accuracy {acc:.3f}")
    assert acc > 0.8


@pytest.mark.slow
def test_tiny_cnn_learns_chestct_and_mri():
    rng = np.random.default_rng(1)
    def ct(n):
        y = rng.integers(0, 4, n)
        return np.stack([_resized((np.clip(synth_chestct(CHESTCT_CLASSES[c], 48, rng), -1100, 300) + 1100)/1400) for c in y]), y
    def mri(n):
        y = rng.integers(0, 3, n); seqs = ['FLAIR', 'T1', 'T2']
        return np.stack([_resized(S._pct_u8(synth_mri_slice(seqs[c], 48, rng))/255.) for c in y]), y
    acc_ct = _fit_classifier(*ct(240), *ct(100), 4)
    acc_mri = _fit_classifier(*mri(150), *mri(60), 3, epochs=8)
    print(f"chest-CT accuracy {acc_ct:.3f}, MRI accuracy {acc_mri:.3f}")
    assert acc_ct > 0.7 and acc_mri > 0.9


@pytest.mark.slow
def test_tiny_unet_learns_lesions():
    "A two-level U-Net trained for well under a minute of CPU time segments both lesion classes well above chance."
    import torch, torch.nn as nn, torch.nn.functional as F
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    def data(n):
        s = [synth_ct_slice(48, rng, p_empty=0.1) for _ in range(n)]
        x = np.stack([(np.clip(h, -1500, 500) + 1500)/2000 for h, _ in s])[:, None].astype(np.float32)
        return torch.as_tensor(x), torch.as_tensor(np.stack([m for _, m in s]).astype(np.int64))
    (x, y), (xv, yv) = data(160), data(40)
    cbr = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                     nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())
    class UNet(nn.Module):
        def __init__(s):
            super().__init__(); s.e1, s.e2, s.b = cbr(1, 16), cbr(16, 32), cbr(32, 64)
            s.d2, s.d1, s.out = cbr(96, 32), cbr(48, 16), nn.Conv2d(16, 4, 1)
        def forward(s, x):
            e1 = s.e1(x); e2 = s.e2(F.max_pool2d(e1, 2)); b = s.b(F.max_pool2d(e2, 2))
            d2 = s.d2(torch.cat([F.interpolate(b, scale_factor=2), e2], 1))
            return s.out(s.d1(torch.cat([F.interpolate(d2, scale_factor=2), e1], 1)))
    net = UNet(); opt = torch.optim.AdamW(net.parameters(), 3e-3)
    w = torch.tensor([3., 3., 1., 1.])
    for _ in range(5):
        net.train()
        for idx in torch.randperm(len(x)).split(16):
            opt.zero_grad(); F.cross_entropy(net(x[idx]), y[idx], weight=w).backward(); opt.step()
    net.eval()
    with torch.no_grad(): p = net(xv).argmax(1)
    dice = [(2*((p == c) & (yv == c)).sum() / ((p == c).sum() + (yv == c).sum())).item() for c in (GGO, CONS)]
    print(f"dice ground-glass {dice[0]:.3f}, consolidation {dice[1]:.3f}")
    assert min(dice) > 0.5
