"Tests for issue 14 end to end: split='all' per layout, CIs in metrics.json and the printed tables, TTA, fold ensembles."
import json, shutil, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

from medvision.core import MedvisionError
from medvision.synth import synth
from medvision.recipes.core import get_recipe, get_task, train, evaluate, predict, load_model_dir
from medvision.report import metrics_text
from medvision.recipes.classification import read_items

warnings.filterwarnings('ignore')


def images(d): return [p for p in Path(d).rglob('*') if p.suffix.lower() in ('.png', '.jpg')]


def n_all(recipe, data):
    "How many items `build_eval_dl(..., 'all')` scores."
    r = get_recipe(recipe)
    dl = get_task(r.task).build_eval_dl(r, data, 'all')
    assert str(dl.split_name).startswith(f"all of {data}")
    return len(dl.dataset)


@pytest.mark.parametrize('layout,recipe,kw,count', [
    ('chestct', 'chestct-tiny', dict(n=6, size=32), lambda d: len(images(d))),
    ('unifesp-png', 'bodypart-tiny', dict(n=12, size=32), lambda d: len(pd.read_csv(d/'train_df.csv'))),
    ('mri-folders', 'mri-tiny', dict(n=3, size=32), lambda d: len(images(d))),
    ('mri-nifti', 'mri-tiny', dict(n=2, size=32), lambda d: len(read_items(get_recipe('mri-tiny'), d))),  # every slice kept
])
def test_split_all_classification_layouts(tmp_path, layout, recipe, kw, count):
    d = synth(layout, tmp_path/layout, **kw)
    assert n_all(recipe, d) == count(d)


def _depth(f):
    import nibabel as nib
    return nib.load(str(f)).shape[-1]


@pytest.mark.parametrize('layout,count', [
    ('covid-npy', lambda d: sum(np.load(d/f, mmap_mode='r').shape[0] for f in ('images_medseg.npy', 'images_radiopedia.npy'))),
    ('medseg-nifti', lambda d: _depth(d/'tr_mask.nii.gz') + sum(_depth(f) for f in (d/'rp_msk').iterdir())),
    ('covid-png', lambda d: len(list((d/'ct').glob('*.png')))),
])
def test_split_all_segmentation_layouts(tmp_path, layout, count):
    d = synth(layout, tmp_path/layout, n=6, size=32)
    assert n_all('covid-tiny', d) == count(d)
    with pytest.raises(MedvisionError, match='unknown split'): get_task('segmentation').build_eval_dl(get_recipe('covid-tiny'), d, 'nope')


@pytest.fixture(scope='module')
def chestct(tmp_path_factory):
    d = tmp_path_factory.mktemp('chestct')
    synth('chestct', d/'ct', n=8, size=48)
    res = train('chestct-tiny', d/'ct', d/'m', epochs=1, size=32, show_progress=False)
    return d, res


def test_train_and_evaluate_all_have_cis(chestct, tmp_path, capsys):
    d, res = chestct
    for k in ('accuracy', 'macro_f1', 'weighted_f1'):            # train's final metrics carry CIs too
        assert set(res['final']['ci'][k]) == {'lo', 'hi', 'unit', 'n_units'}
    n_files = len(images(d/'ct'/'valid'))
    from medvision.cli import main
    main(['evaluate', '--model', str(d/'m'), '--data', str(d/'ct'/'valid'), '--out', str(tmp_path/'ev'),
          '--split', 'all', '--ci-resamples', '300'])
    out = capsys.readouterr().out
    m = json.loads((tmp_path/'ev'/'metrics.json').read_text())
    assert m['split'].startswith(f"all of {d/'ct'/'valid'}") and m['final']['n'] == n_files
    ci = m['final']['ci']['macro_f1']
    assert ci['unit'] == 'image' and ci['n_units'] == n_files and ci['lo'] <= m['final']['macro_f1'] <= ci['hi']
    assert f"{m['final']['macro_f1']:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]" in out
    assert (tmp_path/'ev'/'reliability.png').exists() and 0 <= m['final']['ece'] <= 1
    e0 = evaluate(d/'m', d/'ct'/'valid', split='all', ci_resamples=0)
    assert 'ci' not in e0['final'] or e0['final']['ci'] == {}


def test_ensemble_of_identical_models_is_the_model(chestct, tmp_path):
    d, _ = chestct
    cvd = tmp_path/'cv'
    for k in range(3): shutil.copytree(d/'m', cvd/f"fold_{k}")
    shutil.copy(d/'m'/'recipe.json', cvd/'recipe.json')
    (cvd/'cv.json').write_text(json.dumps({'folds': [f"fold_{k}" for k in range(3)]}))
    one = predict(d/'m', d/'ct'/'valid')
    ens = predict(cvd, d/'ct'/'valid')
    probs = [c for c in one.columns if c.startswith('prob_')]
    np.testing.assert_allclose(ens[probs].values, one[probs].values, atol=1e-6)
    assert list(ens['class']) == list(one['class'])
    e1, e3 = evaluate(d/'m', d/'ct'/'valid', split='all'), evaluate(cvd, d/'ct'/'valid', split='all')
    assert e1['final']['macro_f1'] == e3['final']['macro_f1'] and e1['final']['ci'] == e3['final']['ci']


def test_tta_runs_and_is_recorded(chestct):
    d, _ = chestct
    e = evaluate(d/'m', d/'ct'/'valid', split='all', tta=True, ci_resamples=100)
    assert e['tta'] == ['h'] and 'accuracy' in e['final']['ci']
    from medvision.tta import FlipTTA
    assert isinstance(load_model_dir(d/'m', tta='h,v')[1].model, FlipTTA)
    with pytest.raises(MedvisionError, match='unknown TTA flip'): load_model_dir(d/'m', tta='diagonal')


def test_volume_scores_units_and_table(tmp_path):
    "Per-volume table and CIs from per-slice confusions: volumes are the resampled unit, sums match."
    from types import SimpleNamespace
    from medvision.data.seg_layouts import SegItem
    from medvision.metrics import seg_confusion
    from medvision.recipes.segmentation import volume_scores
    rng = np.random.default_rng(0)
    targ = rng.integers(0, 3, (7, 8, 8)); pred = np.where(rng.random((7, 8, 8)) < .7, targ, 2)
    confs = np.stack([seg_confusion(pred[i:i+1], targ[i:i+1], 3).numpy() for i in range(7)])
    vols = ['a']*3 + ['b']*2 + ['c']*2
    dl = SimpleNamespace(items=[SegItem('x', i, v, 0, 1) for i, v in enumerate(vols)])
    r = volume_scores(dl, confs, ['gg', 'cons', 'bg'], 2, n_ci=200, out=tmp_path)
    assert r['ci']['fg_dice']['unit'] == 'volume' and r['ci']['fg_dice']['n_units'] == 3
    pv = r['per_volume']
    assert list(pv) == ['a', 'b', 'c'] and [pv[v]['n_slices'] for v in pv] == [3, 2, 2]
    assert pv['a']['lesion_px_true'] == int((targ[:3] < 2).sum()) and pv['b']['lesion_px_pred'] == int((pred[3:5] < 2).sum())
    s = r['per_volume_summary']['fg_dice']
    np.testing.assert_allclose(s['mean'], np.mean([pv[v]['fg_dice'] for v in pv]))
    assert 'mean_fg_dice' in r['ci'] and len(pd.read_csv(tmp_path/'per_volume.csv')) == 3
    one = volume_scores(SimpleNamespace(items=None), confs, ['gg', 'cons', 'bg'], 2, n_ci=50)
    assert one['ci']['miou']['unit'] == 'image' and 'per_volume' not in one


@pytest.mark.slow
def test_segmentation_cis_and_per_volume(tmp_path):
    d = synth('covid-png', tmp_path/'png', n=8, size=48)
    train('covid-tiny', d, tmp_path/'m', epochs=1, size=64, bs=4, show_progress=False)
    e = evaluate(tmp_path/'m', d, split='all', out=tmp_path/'ev', tta=True, ci_resamples=200)
    f = e['final']
    assert f['n_images'] == len(list((d/'ct').glob('*.png')))
    for k in ('fg_dice', 'miou'):
        assert f['ci'][k]['unit'] in ('volume', 'image') and f['ci'][k]['lo'] <= f[k] + 1e-9
    unit = f['ci']['miou']['unit']
    assert f[f"per_{unit}_summary"]['lesion_px_true']['n'] == f['ci']['miou']['n_units']
    tab = pd.read_csv(tmp_path/'ev'/'per_volume.csv')
    assert len(tab) == f['ci']['miou']['n_units'] and tab['n_slices'].sum() == f['n_images']
    assert '[' in metrics_text(e)


def test_cv_folds_and_collect(tmp_path):
    from medvision.recipes.evaluation import cv, collect_cv
    d = synth('chestct', tmp_path/'ct', n=6, size=48)
    r = cv('chestct-tiny', d/'train', tmp_path/'cv', folds=2, fold=1, epochs=1, size=32)
    assert r['folds'] == ['fold_1'] and not r['complete']              # one fold of two, as a separate process would
    r = cv('chestct-tiny', d/'train', tmp_path/'cv', folds=2, epochs=1, size=32)   # trains fold 0, skips fold 1
    assert r['complete'] and len(r['per_fold']) == 2 and set(r['mean']) >= {'accuracy', 'macro_f1'}
    assert all('ci' in f and 'macro_f1' in f['ci'] for f in r['per_fold'])
    e = evaluate(tmp_path/'cv', d/'valid', split='all', ci_resamples=100)
    assert 'macro_f1' in e['final']['ci']


def test_calibrate_stores_temperature(chestct, tmp_path):
    from medvision.recipes.evaluation import calibrate
    from medvision.calibration import TemperatureScaled
    d, _ = chestct
    m = tmp_path/'m'; shutil.copytree(d/'m', m)
    t = calibrate(m, d/'ct')
    assert json.loads((m/'temperature.json').read_text())['temperature'] == t['temperature'] > 0
    assert t['nll_after'] <= t['nll_before'] + 1e-9
    assert isinstance(load_model_dir(m)[1].model, TemperatureScaled)
    e0, e1 = evaluate(d/'m', d/'ct'/'valid', split='all', ci_resamples=0), evaluate(m, d/'ct'/'valid', split='all', ci_resamples=0)
    assert e1['final']['accuracy'] == e0['final']['accuracy']      # temperature never changes the predicted class


@pytest.mark.slow
@pytest.mark.parametrize('name,recipe,eval_sub,kw', [
    ('chest-ct', 'chestct-tiny', 'valid', dict(epochs=1, size=32)),
    ('covid-ct-png', 'covid-tiny', '', dict(epochs=1, size=64)),
])
def test_split_all_on_shared_data_prints_cis(shared_data, tmp_path, capsys, name, recipe, eval_sub, kw):
    "The issue's check: `medvision evaluate --split all` on real folders prints every headline metric with its CI."
    from medvision.cli import main
    root = shared_data(name)
    train(recipe, root, tmp_path/'m', show_progress=False, **kw)
    data = root/eval_sub if eval_sub else root
    main(['evaluate', '--model', str(tmp_path/'m'), '--data', str(data), '--split', 'all', '--out', str(tmp_path/'ev'),
          '--ci-resamples', '200'])
    out = capsys.readouterr().out
    m = json.loads((tmp_path/'ev'/'metrics.json').read_text())
    keys = ('accuracy', 'macro_f1', 'weighted_f1') if recipe.startswith('chestct') else ('fg_dice', 'miou')
    for k in keys:
        ci = m['final']['ci'][k]
        assert f"{m['final'][k]:.3f} [{ci['lo']:.3f}, {ci['hi']:.3f}]" in out
    assert m['split'].startswith(f"all of {data}")


def test_uncertainty_study_votes_and_units(tmp_path):
    "UNIFESP: CIs resample studies; slices voted per study; MRI NIfTI: votes per volume, CIs by case."
    from medvision.interpret.classification import ClassPreds
    from medvision.recipes.classification import uncertainty
    classes = ['a', 'b']
    probs = np.array([[.9, .1], [.8, .2], [.3, .7],  [.4, .6], [.45, .55], [.6, .4]])
    targs = np.array([0, 0, 0, 1, 1, 1])
    items = pd.DataFrame({'path': [f"{i}.png" for i in range(6)], 'label': [classes[t] for t in targs],
                          'group': ['s1', 's1', 's1', 's2', 's2', 's2']})
    cp = ClassPreds(probs, targs, classes, items, split_name='valid')
    r = uncertainty(cp, get_recipe('bodypart-tiny'), 300, out=tmp_path)
    assert r['ci']['accuracy']['unit'] == 'study' and r['ci']['accuracy']['n_units'] == 2
    assert r['studies'] == {'n': 2, 'accuracy': 1.0, 'macro_f1': 1.0}          # s1 votes a (2 of 3), s2 votes b
    assert r['ci']['studies.accuracy']['lo'] == 1.0 and (tmp_path/'reliability.png').exists() and 0 <= r['ece'] <= 1
    mri = ClassPreds(probs, targs, classes, items.assign(volume=['v1', 'v1', 'v2', 'v3', 'v3', 'v3']))
    r = uncertainty(mri, get_recipe('mri-tiny'), 300)
    assert r['volumes']['n'] == 3 and r['volumes']['accuracy'] == pytest.approx(2/3)   # v2 (truth a) votes b
    assert r['ci']['volumes.accuracy']['unit'] == 'case' and r['ci']['volumes.accuracy']['n_units'] == 2
    r = uncertainty(ClassPreds(probs, targs, classes, items.assign(group=[str(i) for i in range(6)])), get_recipe('chestct-tiny'), 0)
    assert 'studies' not in r and r['ci'] == {}
