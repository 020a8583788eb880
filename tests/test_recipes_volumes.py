"Volume prediction: exact geometry with an HU-band oracle (normal and flipped storage), slabs, 2.5D, TTA, LCC, files, CLI."
from pathlib import Path
import numpy as np, nibabel as nib, pytest, torch
from medvision.core import MedvisionError, SEG_CLASSES, orient_array
from medvision.volumes import load_volume, volume_table
from medvision.recipes.volumes import HUBands, predict_volume, keep_largest, check_formats, predict_volume_files

INFO = {'window': [-1500, 500], 'stats': [0.3, 0.2], 'size': 32, 'context': 1, 'units': 'HU', 'n_fg': 2}


class HalfOracle(HUBands):
    "HU bands, but lesions only in the left half of the slice it is given: wrong orientation → wrong side."
    def forward(self, x):
        out = super().forward(x); w = x.shape[-1]//2
        out[:, self.other, :, w:] += 20*(out[:, 0, :, w:] > 0)
        return out


class MeanOracle(HUBands):
    "HU bands on the mean of the 2.5D input stack: depends on the neighbouring slices."
    def hu(self, x): return super().hu(x.mean(1, keepdim=True))


@pytest.fixture(scope='module')
def vols(ct_vols):
    "The conftest's synthetic patient with each mask as an array: `{name: (source, mask)}`."
    return {k: (src, np.asarray(nib.load(m).dataobj)) for k,(src,m) in ct_vols.items()}


def _right_half(vol):
    "Bool map (in `vol`'s voxel order) of the patient-right half: the left image half in the model orientation."
    r,caff = orient_array(np.ones(vol.shape, bool), vol.affine, 'PLS')
    r = r.copy(); r[:, 16:] = False
    return orient_array(r, caff, vol.orientation)[0]


@pytest.mark.parametrize('key', ['nii', 'nii-flipped', 'dcm', 'dcm-flipped'])
def test_oracle_exact_any_storage(vols, key):
    "Every ground-glass voxel of the synthetic lesion, on the patient's right only, whatever the storage orientation."
    src,gt = vols[key]; v = load_volume(src)
    lab = predict_volume(HalfOracle(INFO), v, INFO, SEG_CLASSES, slab=5)
    assert lab.shape == gt.shape and lab.dtype == np.uint8
    assert np.array_equal(lab == 0, (gt == 0) & _right_half(v))
    assert (gt == 0).sum() > 20 and ((gt == 0) & ~_right_half(v)).sum() > 0   # the check has lesions on both sides
    assert np.array_equal(lab[gt == 2], np.full((gt == 2).sum(), 2))


def test_without_reorientation_the_flipped_volume_is_wrong(vols):
    "The same call in the file's own orientation puts lesions on the wrong side: reorientation is what makes it right."
    src,gt = vols['nii-flipped']; v = load_volume(src)
    lab = predict_volume(HalfOracle(INFO), v, INFO, SEG_CLASSES, orientation=v.orientation)
    assert not np.array_equal(lab == 0, (gt == 0) & _right_half(v))


def test_slabs_context_tta(vols):
    "Slab size does not change a 2.5D result; flip TTA of a symmetric model changes nothing; mL = hand count."
    src,gt = vols['dcm-flipped']; v = load_volume(src)
    a = predict_volume(MeanOracle(INFO), v, INFO, SEG_CLASSES, slab=2)
    b = predict_volume(MeanOracle(INFO), v, INFO, SEG_CLASSES, slab=100)
    c = predict_volume(MeanOracle({**INFO, 'context': 0}), v, {**INFO, 'context': 0}, SEG_CLASSES, slab=100)
    assert np.array_equal(a, b) and not np.array_equal(a, c)      # neighbours used, and the same across slab borders
    lab = predict_volume(HUBands(INFO), v, INFO, SEG_CLASSES, tta=True)
    assert np.array_equal(lab == 0, gt == 0)
    t = volume_table(lab, v, SEG_CLASSES).set_index('class')
    assert np.isclose(t.loc['ground_glass', 'ml'], (gt == 0).sum()*0.7*0.7*2.5/1000)


def test_keep_largest():
    lab = np.full((20, 20, 4), 3, np.uint8); lab[2:8, 2:8] = 2; lab[2:8, 12:18] = 2; lab[4, 4] = 0; lab[17, 17, 1] = 0
    k = keep_largest(lab, SEG_CLASSES)
    assert k[17, 17, 1] == 3 and k[4, 4, 0] == 0 and (k != lab).sum() == 1
    assert keep_largest(lab, ['a', 'b']) is lab


def test_check_formats():
    assert check_formats('nifti, PNG') == ('nifti', 'png')
    with pytest.raises(MedvisionError, match="unknown output format"): check_formats('nifti,stl')


# ---- model folder + CLI ------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    "An untrained covid-tiny model folder (the files, not the masks, are checked through it)."
    from medvision.recipes.core import get_recipe, get_task, ModelDls, write_json
    from medvision.callbacks import save_weights
    d = tmp_path_factory.mktemp('model')
    r = get_recipe('covid-tiny').replace(size=32)
    meta = {'format': 'medvision-model-1', 'recipe': r.to_dict(), 'classes': SEG_CLASSES,
            'data_info': {**INFO, 'context': 0, 'layout': 'covid-npy'}}
    write_json(meta, d/'recipe.json')
    torch.manual_seed(0); save_weights(get_task('segmentation').build_model(r, ModelDls(meta)), d/'model.pth')
    return d


def mv(capsys, *args):
    "Run the `medvision` command line in-process: `(exit status, stdout, stderr)`."
    from medvision.cli import main
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_predict_volumes(vols, model_dir, tmp_path, capsys):
    import highdicom as hd
    rc,out,err = mv(capsys, 'predict', '--model', model_dir, vols['dcm-flipped'][0], vols['nii'][0], '--out', tmp_path/'o',
                    '--format', 'nifti,dicom-seg,png', '--lcc')
    assert rc == 0, err
    assert '2 volume(s) predicted' in out
    o = tmp_path/'o'
    assert {f.name for f in o.iterdir()} == {'series_0_labels.nii.gz', 'series_0_seg.dcm', 'series_0_png',
                                             'vol_0_labels.nii.gz', 'vol_0_png', 'volumes.csv'}
    assert len(list((o/'vol_0_png').glob('slice_*.png'))) == 12
    nsrc = nib.load(vols['nii'][0]); nlab = nib.load(o/'vol_0_labels.nii.gz')
    assert np.array_equal(nlab.affine, nsrc.affine) and nlab.shape == nsrc.shape
    dv = load_volume(vols['dcm-flipped'][0]); dlab = nib.load(o/'series_0_labels.nii.gz')
    assert np.allclose(dlab.affine, dv.affine, atol=1e-4)
    seg = hd.seg.segread(o/'series_0_seg.dcm')
    lab = np.asarray(dlab.dataobj)
    assert seg.number_of_segments == 3 and sorted(u[2] for u in seg.get_source_image_uids()) == sorted(dv.sop_uids)
    assert seg.NumberOfFrames == sum(int((lab[..., k] == c).any()) for k in range(12) for c in range(3))
    import pandas as pd
    t = pd.read_csv(o/'volumes.csv')
    assert list(t.columns) == ['volume', 'class', 'voxels', 'ml', 'pct_of_lung', 'slices_with_lesion'] and len(t) == 8
    row = t[(t['class'] == 'lesion') & (t.volume == str(vols['nii'][0]))].iloc[0]
    assert row.voxels == int((np.asarray(nlab.dataobj) < 2).sum()) and np.isclose(row.ml, row.voxels*0.7*0.7*2.5/1000, atol=1e-4)


def test_cli_volume_errors(vols, model_dir, tmp_path, capsys):
    import shutil
    shutil.copytree(vols['dcm'][0], tmp_path/'mixed')
    shutil.copy(sorted(vols['dcm-flipped'][0].glob('*.dcm'))[0], tmp_path/'mixed'/'x.dcm')
    rc,out,err = mv(capsys, 'predict', '--model', model_dir, tmp_path/'mixed', '--out', tmp_path/'o')
    lines = [l for l in err.splitlines() if l.startswith('medvision: error:')]
    assert rc == 1 and len(lines) == 1 and 'mixed series' in lines[0] and str(tmp_path/'mixed') in lines[0]
    assert 'Traceback' not in err
    rc,out,err = mv(capsys, 'predict', '--model', model_dir, vols['nii'][0], '--out', tmp_path/'o', '--format', 'stl')
    assert rc == 1 and 'unknown output format' in err
    rc,out,err = mv(capsys, 'synth', 'covid-npy', '--out', tmp_path/'s', '--flipped')
    assert rc == 1 and '--flipped applies to the volume layouts' in err
