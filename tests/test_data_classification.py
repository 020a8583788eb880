"Classification data: UNIFESP CSV, chest-CT folder names, MRI folders/NIfTI slices, splits, balancing, augmentation."
import warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from PIL import Image
from medvision.core import MedvisionError, BODY_PARTS, CHESTCT_CLASSES, MRI_CLASSES
from medvision.synth import synth
from medvision.data.classification import (parse_target, read_unifesp, read_chestct, chestct_class, classification_dls,
    oversample, sample_weights, split_items, aug_preset, GaussianNoise, OpenImage, split_name)
from medvision.data.mri import read_mri, mri_sequence, vote, vote_volumes, volume_slices

# The folder names of the public "Chest CT-Scan images" dataset (train/valid vs test) and other spellings seen in copies.
REAL_CHESTCT = {
    'adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib': 'adenocarcinoma',
    'large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa': 'large.cell.carcinoma',
    'squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa': 'squamous.cell.carcinoma',
    'normal': 'normal', 'adenocarcinoma': 'adenocarcinoma', 'large.cell.carcinoma': 'large.cell.carcinoma',
    'squamous.cell.carcinoma': 'squamous.cell.carcinoma', 'Normal': 'normal', 'Adenocarcinoma': 'adenocarcinoma',
    'large_cell_carcinoma': 'large.cell.carcinoma', 'squamous_cell_carcinoma': 'squamous.cell.carcinoma'}


@pytest.mark.parametrize('name,cls', REAL_CHESTCT.items())
def test_chestct_folder_names(name, cls):
    assert chestct_class(name) == cls


@pytest.mark.parametrize('name', ['benign', 'covid_19', 'carcinoma', ''])
def test_chestct_unknown_folder_fails(name):
    with pytest.raises(MedvisionError, match='matches none of the chest-CT classes'): chestct_class(name)


def test_chestct_real_folders(shared_data):
    root = shared_data('chest-ct')
    for split in ('train', 'valid'):   # every real folder name maps to a canonical class
        assert sorted(chestct_class(p.name) for p in (root/split).iterdir() if p.is_dir()) == CHESTCT_CLASSES
    df = read_chestct(root)
    assert df.split.value_counts().to_dict() == {'train': 613, 'valid': 72}
    assert sorted(df.label.unique()) == CHESTCT_CLASSES and split_name(df).startswith('official split')


def test_chestct_synth_layout(tmp_path):
    df = read_chestct(synth('chestct', tmp_path/'ct', n=6, size=40))
    assert set(df.split) == {'train', 'valid', 'test'} and sorted(df.label.unique()) == CHESTCT_CLASSES
    # test/ uses the short names, train/ the long ones: both land on the same classes
    assert set(df[df.split == 'test'].label) == set(df[df.split == 'train'].label)
    dls = classification_dls(df, opener='gray', size=32, bs=4, aug='ct-light', resize='pad')
    xb, yb = dls.one_batch()
    assert xb.shape == (4, 1, 32, 32) and dls.vocab == CHESTCT_CLASSES and 'official' in dls.split_name


def test_pad_resize_keeps_aspect(tmp_path):
    a = np.full((20, 40), 200, np.uint8)          # wide image
    for s in ('train', 'valid'):
        for c in ('normal', 'adenocarcinoma'):
            (tmp_path/s/c).mkdir(parents=True); Image.fromarray(a).save(tmp_path/s/c/'0.png')
    dls = classification_dls(read_chestct(tmp_path), opener='gray', size=32, bs=2, aug='none', resize='pad', normalize=False)
    x = dls.valid.one_batch()[0][0, 0]
    assert x[16].min() > 0.7 and x[0].max() < 0.05 and x[-1].max() < 0.05   # image in the middle rows, zero padding above/below


@pytest.mark.parametrize('t,ids', [('0 ', [0]), ('3 15 ', [3, 15]), ('21', [21]), (7, [7]), ('13 20 ', [13, 20])])
def test_parse_target(t, ids):
    assert parse_target(t) == ids


def test_unifesp_multilabel_rows(tmp_path):
    root = synth('unifesp-png', tmp_path/'u', n=30, size=32, p_multi=0.6)
    raw = pd.read_csv(root/'train_df.csv', dtype=str)
    multi = raw[raw.Target.str.strip().str.contains(' ')]
    assert len(multi)
    df = read_unifesp(root)
    for r in multi.itertuples():
        row = df[df.SOPInstanceUID == r.SOPInstanceUID].iloc[0]
        names = [BODY_PARTS[int(i)] for i in r.Target.split()]
        assert row['labels'].split(';') == names and row['label'] == names[0]
    dls = classification_dls(df, size=32, bs=4, multi_label=True, aug='none')
    assert dls.one_batch()[1].shape == (4, 22) and dls.multi_label


def test_unifesp_dicom_grouped_split(tmp_path):
    root = synth('unifesp-dicom', tmp_path/'u', n=30, size=48)
    df = read_unifesp(root)
    assert all(Path(p).suffix == '.dcm' and Path(p).exists() for p in df.path)
    tr, va = set(df.group[df.split == 'train']), set(df.group[df.split == 'valid'])
    assert tr and va and not tr & va and 'StudyInstanceUID' in split_name(df)
    dls = classification_dls(df, size=32, bs=4, balance='oversample')
    xb, _ = dls.one_batch()
    assert xb.shape == (4, 3, 32, 32)


def test_unifesp_real(shared_data):
    root = shared_data('bodypart-unifesp')
    df = read_unifesp(root, check=False)
    assert len(df) == 1397 and (df.labels.str.contains(';')).sum() > 0
    assert not set(df.group[df.split == 'train']) & set(df.group[df.split == 'valid'])
    assert set(df.label) <= set(BODY_PARTS)


def _bad_csv(tmp_path, rows):
    root = synth('unifesp-png', tmp_path/'u', n=6, size=16)
    good = pd.read_csv(root/'train_df.csv', dtype=str)[['SOPInstanceUID', 'Target']]
    df = pd.concat([good, pd.DataFrame(rows, columns=['SOPInstanceUID', 'Target'])], ignore_index=True)
    df.to_csv(root/'bad.csv', index=False)
    return root, good


@pytest.mark.parametrize('row,msg', [(('1.2.3.404', '3 '), "no file 1.2.3.404-c.dcm/.png"),
                                     (('DUP', '40 '), "outside 0..21"), (('DUP', 'chest'), "is not an integer"),
                                     (('DUP', ''), "empty Target")])
def test_bad_csv_rows(tmp_path, row, msg):
    root, good = _bad_csv(tmp_path, [])
    uid = good.SOPInstanceUID[0] if row[0] == 'DUP' else row[0]
    pd.concat([good.iloc[1:], pd.DataFrame([(uid, row[1])], columns=['SOPInstanceUID', 'Target'])]).to_csv(root/'bad.csv', index=False)
    with pytest.raises(MedvisionError, match='bad.csv') as e: read_unifesp(root/'bad.csv', images=root)
    assert msg in str(e.value) and uid in str(e.value) and 'skip_bad=True' in str(e.value)


def test_bad_csv_duplicates_and_skip(tmp_path):
    root, good = _bad_csv(tmp_path, [])
    bad = pd.concat([good, good.iloc[:1], pd.DataFrame([('9.9.9', '3 ')], columns=['SOPInstanceUID', 'Target'])])
    bad.to_csv(root/'bad.csv', index=False)
    with pytest.raises(MedvisionError, match='duplicated SOPInstanceUID'): read_unifesp(root/'bad.csv', images=root)
    with pytest.warns(UserWarning, match='skipped 2 bad'):
        df = read_unifesp(root/'bad.csv', images=root, skip_bad=True, valid_pct=0.34)
    assert len(df) == len(good) and len(df.attrs['skipped']) == 2


def test_unifesp_missing_columns(tmp_path):
    (tmp_path/'train.csv').write_text('id,label\n1,2\n')
    with pytest.raises(MedvisionError, match=r"lacks column\(s\) \['SOPInstanceUID', 'Target'\]"): read_unifesp(tmp_path)


def test_unreadable_image_named(tmp_path):
    root = synth('unifesp-png', tmp_path/'u', n=6, size=16)
    victim = sorted((root/'images'/'train').glob('*.png'))[0]
    victim.write_bytes(b'not a png')
    with pytest.raises(MedvisionError, match=victim.name[:20]): read_unifesp(root)
    with pytest.warns(UserWarning): df = read_unifesp(root, skip_bad=True, valid_pct=0.34)
    assert str(victim) not in set(df.path)


def _table(labels, splits):
    n = len(labels)
    return pd.DataFrame(dict(path=[f'{i}.png' for i in range(n)], label=labels, labels=labels, group=range(n), split=splits))


def test_oversampling_only_touches_training():
    df = _table(list('aaaaaaabbc') + list('aab'), ['train']*10 + ['valid']*3)
    o = oversample(df, seed=0)
    assert o[o.split == 'train'].label.value_counts().to_dict() == {'a': 7, 'b': 7, 'c': 7}
    pd.testing.assert_frame_equal(o[o.split == 'valid'].reset_index(drop=True), df[df.split == 'valid'].reset_index(drop=True))
    assert set(o[o.split == 'train'].path) == set(df[df.split == 'train'].path)   # only duplicates of training rows


def test_oversampling_in_dataloaders(tmp_path):
    root = synth('unifesp-png', tmp_path/'u', n=30, size=24)
    df = read_unifesp(root)
    dls = classification_dls(df, size=16, bs=4, aug='none', balance='oversample')
    tr = df[df.split == 'train']
    assert len(dls.valid_ds) == (df.split == 'valid').sum()
    counts = pd.Series([dls.vocab[int(y)] for _, y in dls.train_ds]).value_counts()
    assert counts.nunique() == 1 and counts.iloc[0] == tr.label.value_counts().max()
    assert list(dls.valid.items.path) == list(df[df.split == 'valid'].path)
    dls.show_batch(max_n=4)   # show_batch after oversampling
    import matplotlib.pyplot as plt; plt.close('all')


def test_weighted_sampler(tmp_path):
    from fastai.callback.data import WeightedDL
    df = read_unifesp(synth('unifesp-png', tmp_path/'u', n=30, size=24))
    dls = classification_dls(df, size=16, bs=4, aug='none', balance='weighted')
    assert isinstance(dls.train, WeightedDL) and dls.train.shuffle and not dls.valid.shuffle
    assert list(dls.valid.items.path) == list(df[df.split == 'valid'].path)   # validation: every row once, in order
    w = sample_weights(df); tr = df[df.split == 'train']
    assert len(w) == len(tr) and np.allclose(w * tr.label.map(tr.label.value_counts()).values, 1)


def test_split_is_seeded_and_grouped():
    df = _table(['a', 'b'] * 30, ['train'] * 60).assign(group=[f's{i//3}' for i in range(60)])
    a, b, c = split_items(df, 0.2, seed=0), split_items(df, 0.2, seed=0), split_items(df, 0.2, seed=1)
    assert a.split.tolist() == b.split.tolist() and a.split.tolist() != c.split.tolist()
    for s in (a, c): assert not set(s.group[s.split == 'train']) & set(s.group[s.split == 'valid'])


def test_aug_presets():
    names = lambda ts: [type(t).__name__ for t in ts]
    item, batch = aug_preset('radiograph', 224)
    assert names(item) == ['Resize', 'RandomResizedCrop'] and item[1].min_scale == 0.6 and item[1].size == (224, 224)
    # fastai merges aug_transforms' affine parts (dihedral flip, rotate, zoom + the warp) and lighting parts into one each
    assert names(batch) == ['Dihedral', 'Brightness', 'Normalize']
    assert len(batch[0].aff_fs) == 3 and len(batch[0].coord_fs) == 1 and len(batch[1].fs) == 2
    assert names(aug_preset('mri-light', 64, n_channels=1)[1]) == ['Flip', 'Shear', 'Zoom', 'GaussianNoise', 'Normalize']
    b3 = aug_preset('ct-light', 64)[1]
    assert names(b3) == ['Flip', 'Rotate', 'Brightness', 'Contrast', 'Normalize']
    with pytest.raises(MedvisionError, match='radiograph'): aug_preset('heavy', 64)


def test_gaussian_noise_leaves_labels():
    from fastai.vision.all import TensorImage, TensorCategory, TensorMask
    g, x = GaussianNoise(0.1), TensorImage(torch.full((4, 3, 16, 16), 0.5))
    n = g(x, split_idx=0)
    assert abs(float((n - x).std()) - 0.1) < 0.02 and float(n.min()) >= 0 and float(n.max()) <= 1
    assert torch.equal(g(x, split_idx=1), x)
    y, m = TensorCategory([1, 2]), TensorMask(torch.ones(2, 16, 16))
    assert torch.equal(g(y, split_idx=0), y) and torch.equal(g(m, split_idx=0), m)


def test_open_image_modes(tmp_path):
    root = synth('unifesp-dicom', tmp_path/'u', n=8, size=40)
    f = next(root.rglob('*.dcm'))
    im = OpenImage('xray')(f)
    a = np.asarray(im)
    assert a.ndim == 3 and a.shape[-1] == 3 and a.dtype == np.uint8 and a.max() == 255 and a.min() == 0
    assert np.asarray(OpenImage('gray')(f)).ndim == 2
    (tmp_path/'x.dcm').write_bytes(b'junk')
    with pytest.raises(MedvisionError, match='x.dcm'): OpenImage('xray')(tmp_path/'x.dcm')


# ---------- MRI ----------

REAL_MRI = {'BraTS-GLI-00001-000-t1n.nii.gz': 'T1', 'BraTS-GLI-00001-000-t1c.nii.gz': 'T1C',
            'BraTS-GLI-00001-000-t2w.nii.gz': 'T2', 'BraTS-GLI-00001-000-t2f.nii.gz': 'FLAIR',
            'flair.nii.gz': 'FLAIR', 't1.nii.gz': 'T1', 't2.nii.gz': 'T2', 't1c.nii.gz': 'T1C',
            'TCGA-DU-7294_t1_bet.nii.gz': 'T1', 'TCGA-DU-7294_t1c_bet.nii.gz': 'T1C', 'TCGA-DU-7294_t2_bet.nii.gz': 'T2',
            'TCGA-DU-7294_fla_bet.nii.gz': 'FLAIR', 'T1': 'T1', 'flair': 'FLAIR', 'T2': 'T2'}


@pytest.mark.parametrize('name,seq', REAL_MRI.items())
def test_mri_sequence_names(name, seq):
    assert mri_sequence(name) == seq


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_mri_split_by_case(tmp_path, seed):
    root = synth('mri-nifti', tmp_path/'m', n=5, size=24)
    df = read_mri(root, cache=tmp_path/'cache', seed=seed)
    assert sorted(df.label.unique()) == MRI_CLASSES                     # t1c excluded by default
    tr, va = set(df.group[df.split == 'train']), set(df.group[df.split == 'valid'])
    assert tr and va and not tr & va and 'grouped by case' in split_name(df)
    for _, g in df.groupby('volume'): assert g.split.nunique() == 1    # a volume never straddles the split
    assert (df.groupby('volume').size() < 24).all()                     # near-empty slices skipped


def test_mri_t1c_optional(tmp_path):
    root = synth('mri-nifti', tmp_path/'m', n=3, size=24)
    assert read_mri(root, include_t1c=True, cache=tmp_path/'c').label.nunique() == 4


def test_mri_folders_spanish(tmp_path):
    root = synth('mri-folders', tmp_path/'m', n=4, size=24, spanish=True)
    df = read_mri(root)
    assert df.split.value_counts().to_dict() == {'train': 12, 'valid': 6, 'test': 6}
    assert 'entrenamiento' in split_name(df) and sorted(df.label.unique()) == MRI_CLASSES
    (root/'entrenamiento'/'PD').mkdir(); Image.fromarray(np.zeros((8, 8), np.uint8)).save(root/'entrenamiento'/'PD'/'0.png')
    with pytest.raises(MedvisionError, match="'PD' names no MRI sequence"): read_mri(root)


def test_mri_volume_slices_scaling():
    v = np.zeros((20, 20, 10), np.float32); v[5:15, 5:15, 3:7] = np.arange(4) * 100 + 50
    s = volume_slices(v)
    assert [i for i, _ in s] == [3, 4, 5, 6] and s[0][1].max() < s[-1][1].max()   # one scaling per volume


def test_vote():
    p = np.array([[.1, .8, .1], [.2, .7, .1], [.6, .3, .1], [.9, .05, .05]])
    assert vote(p[:3], MRI_CLASSES)[0] == 'T1' and list(vote(p[:3], MRI_CLASSES)[1]) == [1, 2, 0]
    vv = vote_volumes(pd.DataFrame(dict(volume=['a', 'a', 'a', 'b'], label=['T1'] * 3 + ['FLAIR'])), p, MRI_CLASSES)
    assert vv['class'].tolist() == ['T1', 'FLAIR'] and vv.n_slices.tolist() == [3, 1]


def test_mri_real(shared_data, tmp_path):
    root = shared_data('mri-brats')
    df = read_mri(root)   # default cache: cut once, reused by later runs
    assert sorted(df.label.unique()) == MRI_CLASSES and df.group.nunique() == 3
    assert not set(df.group[df.split == 'train']) & set(df.group[df.split == 'valid'])
    assert df.groupby('volume').size().between(60, 155).all()


def test_colour_dicom_is_decoded_once(tmp_path, monkeypatch):
    "Issue 11: `OpenImage` used to decode a colour DICOM up to three times (percentile path, then again as colour)."
    import medvision.dicom as md
    from medvision.data.classification import OpenImage
    from medvision.dicom import dicom_from_array
    rgb = (np.arange(40*30*3) % 256).astype(np.uint8).reshape(40, 30, 3)
    f = dicom_from_array(rgb, tmp_path/'c.dcm', modality='XC') and tmp_path/'c.dcm'
    calls = []
    real = md._pixels   # every pixel decode of `read_dicom` goes through it
    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(md, '_pixels', counting)
    x = OpenImage('xray').array(f)
    assert x.shape == (40, 30, 3) and np.array_equal(x, rgb)
    assert len(calls) <= 1, f"decoded {len(calls)} times"


def test_gray_images_show_bright_as_bright(tmp_path):
    "A one-channel CT/MRI in `show_batch` is drawn black = low intensity (fastai's `Greys` would invert it)."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = []
    for i in range(8):
        a = np.zeros((64, 64), np.uint8); a[16:48, 16:48] = 220   # bright square on a black background
        Image.fromarray(a).save(tmp_path/f"{i}.png")
        rows.append((str(tmp_path/f"{i}.png"), 'ab'[i % 2], 'valid' if i > 5 else 'train'))
    dls = classification_dls(pd.DataFrame(rows, columns=['path', 'label', 'split']), opener='gray', size=32, bs=4, aug='none')
    dls.show_batch(max_n=1, figsize=(2, 2))
    im = plt.gcf().axes[0].images[0]
    rgb = im.to_rgba(im.get_array())[..., :3].mean(-1)   # the colours drawn for each pixel
    plt.close('all')
    assert rgb[16, 16] > 0.7 and rgb[1, 1] < 0.1, (rgb[16, 16], rgb[1, 1])
