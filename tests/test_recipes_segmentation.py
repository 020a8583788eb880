"Tests for medvision.recipes.segmentation: recipes, the task adapter, tiny end-to-end training, and (slow) learning."
import json
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medvision.core import MedvisionError, SEG_CLASSES, LESION_CLASSES
from medvision.recipes.core import get_recipe, list_recipes, train, evaluate, predict, get_task
from medvision.recipes import segmentation as seg
from medvision.synth import write_covid_npy, write_covid_png, covid_npy_arrays


def _npy(tmp_path, n=12, n_rp=24, size=64, seed=0):
    d = write_covid_npy(tmp_path/'covid', n=n, size=size, n_radiopedia=n_rp, seed=seed)
    rp = np.cumsum(covid_npy_arrays(n, size, seed, n_rp)['rp_volumes'])[:-1].tolist()
    return d, rp


def test_recipes_registered_and_printable():
    names = set(list_recipes('segmentation')['name'])
    assert {'covid-unetpp-b2', 'covid-unetpp-b3', 'covid-tiny'} <= names
    b2, b3 = get_recipe('covid-unetpp-b2'), get_recipe('covid-unetpp-b3')
    assert (b2.arch, b2.size, b2.patience, b2.loss) == ('unetpp-effb2', 512, 7, {'ce': 1.0, 'dice': 0.0, 'focal': 0.0})
    assert (b3.arch, b3.size, b3.epochs, b3.sampler) == ('unetpp-effb3', 384, 60, 'lesion')
    assert b3.loss == {'ce': 0.25, 'dice': 0.5, 'focal': 0.25} and b3.extra['lesion_weight'] == 3.0
    assert 'seed 004' in repr(b3)
    assert get_task('segmentation') is seg


def test_adapter_pieces(tmp_path):
    d, rp = _npy(tmp_path)
    r = get_recipe('covid-tiny').replace(extra={'source_kw': {'rp_boundaries': rp}, 'lesion_weight': 3.0})
    dls = seg.build_dls(r, d)
    assert dls.size == 64 and dls.split_name == 'first-medseg' and dls.lesion_weight == 3.0
    m = seg.build_model(r, dls)
    x, y = dls.one_batch()
    assert m(x).shape == (x.shape[0], 4, 64, 64)
    loss = seg.build_loss(r, dls)
    with torch.no_grad(): assert float(loss(m(x), y)) > 0
    names = [mt.name for mt in seg.build_metrics(r, dls)]
    assert names == ['fg_dice', 'miou', 'dice_ground_glass', 'dice_consolidation']
    info = seg.data_info(r, dls)
    assert info['window'] == [-1500.0, 500.0] and info['units'] == 'HU' and info['n_fg'] == 2
    # 2.5D through n_in
    d3 = seg.build_dls(r.replace(n_in=3), d)
    assert d3.one_batch()[0].shape[1] == 3 and d3.context == 1
    with pytest.raises(MedvisionError, match='must be odd'): seg.build_dls(r.replace(n_in=2), d)
    with pytest.raises(MedvisionError, match="augs='fancy'"): seg.build_dls(r.replace(augs='fancy'), d)


def test_tiny_recipe_trains_evaluates_predicts(tmp_path):
    "Tiny fast end-to-end: one epoch of covid-tiny on synthetic covid-npy, then evaluate and predict from the folder."
    d, rp = _npy(tmp_path)
    r = get_recipe('covid-tiny').replace(epochs=1, extra={**get_recipe('covid-tiny').extra, 'source_kw': {'rp_boundaries': rp}})
    res = train(r, d, tmp_path/'model', show_progress=False)
    out = tmp_path/'model'
    assert {'model.pth', 'recipe.json', 'metrics.json', 'per_class.csv'} <= {p.name for p in out.iterdir()}
    f = res['final']
    assert f['split'] == 'first-medseg' and f['classes'] == SEG_CLASSES and f['n_images'] == 12
    assert set(f['per_class']) == set(SEG_CLASSES) and {'dice', 'iou'} <= set(f['per_class']['lungs_other'])
    for k in ('fg_dice', 'miou', 'mean_dice'): assert 0 <= f[k] <= 1
    tab = pd.read_csv(out/'per_class.csv', index_col=0)
    assert list(tab.index) == SEG_CLASSES
    assert len(list((out/'overlays').glob('overlay_*.png'))) == r.extra['n_overlays']
    meta = json.loads((out/'recipe.json').read_text())
    assert meta['data_info']['stats'][1] > 0 and meta['split'] == 'first-medseg'
    ev = evaluate(out, d)
    assert ev['final']['fg_dice'] == pytest.approx(f['fg_dice'], abs=1e-6)
    assert ev['final']['miou'] == pytest.approx(f['miou'], abs=1e-6)
    pr = predict(out, [d/'test_images_medseg.npy'], out=tmp_path/'pred')
    assert pr.loc[0, 'n_slices'] == 3 and abs(sum(pr.loc[0, [f"frac_{c}" for c in SEG_CLASSES]]) - 1) < 1e-6
    m = np.load(tmp_path/'pred'/'test_images_medseg.npy.mask.npy')  # named after the input file
    assert m.shape == (3, 64, 64) and m.dtype == np.uint8 and m.max() < 4
    assert np.array_equal(np.asarray(Image.open(tmp_path/'pred'/'test_images_medseg.npy.mask_001.png')), m[1])
    # the network sees plain tensors (the pre-hook), and fastai's show_results still draws typed results
    from medvision.recipes.core import load_model_dir
    from medvision.interpret.segmentation import show_results
    import matplotlib; matplotlib.use('Agg')
    _, learn = load_model_dir(out, d)
    x, _ = learn.dls.valid.one_batch()
    assert type(learn.model(x)) is torch.Tensor
    fig = show_results(learn, max_n=2)
    assert len(fig.axes) >= 2
    # an 8-bit PNG is refused by a HU model with a clear message
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path/'x.png')
    assert 'trained on HU' in predict(out, [tmp_path/'x.png']).loc[0, 'error']  # an error row, not a crash


def test_tiny_recipe_on_png_layout(tmp_path):
    d = write_covid_png(tmp_path/'png', n=24, size=64, n_volumes=3)
    r = get_recipe('covid-tiny').replace(epochs=1, size=64, extra={'source_kw': {'boundaries': [8, 16]}, 'n_overlays': 2})
    res = train(r, d, tmp_path/'m', show_progress=False)
    f = res['final']
    assert f['split'] == 'blocks' and f['classes'] == LESION_CLASSES and f['fg_classes'] == ['lesion']
    pr = predict(tmp_path/'m', [d/'test'], out=tmp_path/'pred')
    assert len(pr) == 4 and (tmp_path/'pred'/'0000.png.mask.png').exists()


@pytest.mark.slow
def test_tiny_recipe_learns_lesions(tmp_path):
    "A few-minute CPU run reaches a foreground Dice well above chance on synthetic CT."
    d, rp = _npy(tmp_path, n=48, n_rp=96, size=64, seed=1)
    r = get_recipe('covid-tiny').replace(epochs=8, extra={**get_recipe('covid-tiny').extra, 'source_kw': {'rp_boundaries': rp}})
    res = train(r, d, tmp_path/'model', show_progress=False)
    f = res['final']
    # chance level: predicting lesions with the lesion pixel share at random gives a Dice of about that share
    src = seg.build_dls(r, d).source
    masks = np.stack([src.read_mask(it) for it in src.items])
    share = float((masks < 2).mean())
    assert share < 0.05
    assert f['fg_dice'] > max(0.3, 5*share), f
