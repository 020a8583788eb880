"Classification recipes: every recipe trains on its synthetic layout; evaluate/predict from the model folder."
import json
from pathlib import Path
import numpy as np, pandas as pd, pytest
from medvision.core import MedvisionError, MRI_CLASSES, CHESTCT_CLASSES
from medvision.synth import synth
from medvision.recipes.core import get_recipe, list_recipes, train, evaluate, predict
import medvision.recipes.classification as rc

MAIN = ['bodypart-densenet121', 'chestct-cnn', 'chestct-resnet50', 'chestct-inception3', 'mri-cnn']
LAYOUT = {'unifesp': ('unifesp-dicom', dict(n=24, size=48)), 'chestct': ('chestct', dict(n=6, size=48)),
          'mri': ('mri-nifti', dict(n=3, size=32))}
FAST = dict(epochs=1, freeze_epochs=1, pretrained=False, bs=8, lr=1e-3, show_progress=False)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp('cls')
    return {k: synth(lay, d/k, **kw) for k, (lay, kw) in LAYOUT.items()}


def test_recipes_registered():
    df = list_recipes('classification')
    assert set(MAIN) <= set(df.name) and df.reproduces.str.len().gt(20).all()
    for n in MAIN:
        r = get_recipe(n)
        assert r.task == 'classification' and r.layout in rc.CLS_LAYOUTS and r.reproduces and 'seed 00' in r.reproduces
    r = get_recipe('bodypart-densenet121')
    assert (r.schedule, r.sampler, r.augs, r.size, r.arch) == ('fine_tune', 'oversample', 'radiograph', 224, 'densenet121')
    assert get_recipe('mri-cnn').augs == 'mri-light' and get_recipe('chestct-cnn').augs == 'ct-light'
    assert get_recipe('chestct-cnn').extra['resize'] == 'pad'


@pytest.mark.parametrize('name', MAIN)
def test_recipe_trains_on_synthetic_layout(name, data, tmp_path):
    r = get_recipe(name)
    size = 80 if r.arch == 'inception_v3' else 32
    res = train(name, data[r.layout], tmp_path/'m', size=size, **FAST)
    assert {'model.pth', 'recipe.json', 'metrics.json', 'report.txt', 'confusion.png'} <= {p.name for p in (tmp_path/'m').iterdir()}
    m = json.loads((tmp_path/'m'/'metrics.json').read_text())
    assert m['split'] and m['final']['split'] == m['split'] and 0 <= m['final']['macro_f1'] <= 1
    assert m['epochs_run'] == (2 if r.schedule == 'fine_tune' else 1)
    assert (tmp_path/'m'/'report.txt').read_text().startswith('split: ')


def test_multilabel_recipe(data, tmp_path):
    res = train('bodypart-multilabel-densenet121', data['unifesp'], tmp_path/'m', size=32, **FAST)
    f = res['final']
    assert 0 < f['threshold'] < 1 and {'exact_match', 'macro_f1'} <= set(f)
    p = predict(tmp_path/'m', data['unifesp']/'train')
    assert 'classes' in p.columns and len(p) == 24


def test_evaluate_and_predict_from_model_folder(data, tmp_path):
    ct = data['chestct']
    train('chestct-tiny', ct, tmp_path/'m', size=32, epochs=1, show_progress=False)
    ev = evaluate(tmp_path/'m', ct, split='test', out=tmp_path/'ev')
    assert ev['split'].startswith('test') and ev['final']['n'] == sum(f.is_file() for f in (ct/'test').rglob('*'))
    assert (tmp_path/'ev'/'confusion.png').exists() and (tmp_path/'ev'/'metrics.json').exists()
    (ct/'test'/'notes.csv').write_text('a,b\n')                     # not an image: ignored
    bad = ct/'test'/'normal'/'broken.png'; bad.write_bytes(b'nope')  # unreadable: a row with the error
    try:
        p = predict(tmp_path/'m', ct/'test', out=tmp_path/'pred')
    finally: bad.unlink(); (ct/'test'/'notes.csv').unlink()
    assert list(p.columns[:2]) == ['path', 'class'] and (tmp_path/'pred'/'predictions.csv').exists()
    assert p.loc[p.path == str(bad), 'error'].notna().all() and not p.path.str.endswith('.csv').any()
    ok = p[p.path != str(bad)]
    assert ok['class'].isin(CHESTCT_CLASSES).all() and np.allclose(ok.filter(like='prob_').sum(1), 1, atol=1e-5)


def test_predict_matches_training_pipeline(data, tmp_path):
    "Prediction from the folder alone gives the same probabilities as the learner on its own validation set."
    from medvision.recipes.core import load_model_dir
    from medvision.interpret.classification import get_preds
    train('chestct-tiny', data['chestct'], tmp_path/'m', size=32, epochs=1, show_progress=False)
    recipe, learn = load_model_dir(tmp_path/'m', data=data['chestct'])
    cp = get_preds(learn)
    p = predict(tmp_path/'m', cp.paths)
    assert np.allclose(p.filter(like='prob_').values, cp.probs, atol=1e-4)


def test_mri_volume_vote_and_split(data, tmp_path):
    res = train('mri-tiny', data['mri'], tmp_path/'m', size=32, epochs=1, show_progress=False)
    assert 'grouped by case' in res['split'] and res['final']['volumes']['n'] == 3   # one valid case, 3 sequences
    vols = sorted(data['mri'].rglob('*.nii.gz'))
    p = predict(tmp_path/'m', vols)
    assert len(p) == len(vols) and (p.n_slices > 0).all() and p['class'].isin(MRI_CLASSES).all()
    votes = p.filter(like='votes_').sum(1)
    assert (votes == p.n_slices).all()


def test_mri_folders_layout(tmp_path):
    root = synth('mri-folders', tmp_path/'mf', n=4, size=32, spanish=True)
    res = train('mri-tiny', root, tmp_path/'m', size=32, epochs=1, show_progress=False)
    assert 'entrenamiento' in res['split']


def test_recipe_channel_mismatch(data):
    r = get_recipe('chestct-cnn').replace(n_in=3, extra={'opener': 'gray'})
    with pytest.raises(MedvisionError, match="gives 1 channel"): rc.build_dls(r, data['chestct'])


def test_bad_layout_name(data):
    with pytest.raises(MedvisionError, match='unknown classification layout'):
        rc.build_dls(get_recipe('chestct-cnn').replace(layout='covid-npy'), data['chestct'])


# The synthetic chest-CT classes differ partly by the side of the mass, which seed 003's horizontal flip erases:
# the learning check runs that recipe without augmentation (the fast test above covers the augmented pipeline).
@pytest.mark.slow
@pytest.mark.parametrize('name,layout,kw,over,min_f1', [
    ('bodypart-tiny', 'unifesp-dicom', dict(n=96, size=64), dict(epochs=8), 0.6),
    ('chestct-tiny', 'chestct', dict(n=40, size=64, n_valid=8), dict(epochs=15, augs='none'), 0.6),
    ('mri-tiny', 'mri-nifti', dict(n=4, size=48), dict(epochs=8), 0.7)])
def test_recipe_learns(name, layout, kw, over, min_f1, tmp_path):
    root = synth(layout, tmp_path/'d', seed=1, **kw)
    res = train(name, root, tmp_path/'m', show_progress=False, **over)
    assert res['final']['macro_f1'] >= min_f1, res['final']
