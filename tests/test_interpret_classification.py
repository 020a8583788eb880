"Classification interpretation: scores, report, confusion matrix, histograms, Grad-CAM, top losses."
import numpy as np, pandas as pd, pytest, torch
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from sklearn import metrics as skm
from medvision.core import MedvisionError
from medvision.models import create_model
from medvision.synth import synth
from medvision.data.classification import read_chestct, classification_dls
from medvision.interpret.classification import (ClassPreds, scores, plot_confusion, most_confused, intensity_histograms,
    grad_cam, last_conv, plot_gradcam, get_preds, top_losses, plot_top_losses, confusion)


@pytest.fixture(autouse=True)
def no_open_figures():
    before = set(plt.get_fignums())   # other test modules may have left figures open
    yield
    assert set(plt.get_fignums()) <= before, "a plot left a figure open"


def _cp(n=60, c=4, seed=0, acc=0.7):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    p = rng.random((n, c)); hit = rng.random(n) < acc
    p[hit, y[hit]] += 2
    p = p / p.sum(1, keepdims=True)
    return ClassPreds(p, y, [f'c{i}' for i in range(c)], pd.DataFrame(dict(path=[f'{i}.png' for i in range(n)])),
                      -np.log(p[np.arange(n), y]), split_name='valid: demo split')


def test_scores_match_sklearn():
    cp = _cp()
    s = scores(cp)
    yp = cp.probs.argmax(1)
    assert s['accuracy'] == pytest.approx(skm.accuracy_score(cp.targs, yp))
    assert s['macro_f1'] == pytest.approx(skm.f1_score(cp.targs, yp, average='macro'))
    assert s['weighted_f1'] == pytest.approx(skm.f1_score(cp.targs, yp, average='weighted'))
    assert s['split'] == 'valid: demo split' and list(s['report'].index[:4]) == cp.classes
    assert s['report_text'] == skm.classification_report(cp.targs, yp, target_names=cp.classes, digits=3, zero_division=0)


def test_report_covers_present_classes_like_macro_f1():
    "Classes neither in the targets nor predicted are left out, so the report's macro avg is the macro_f1 metric."
    cp = _cp()
    classes = cp.classes + ['never_seen_1', 'never_seen_2']
    cp2 = ClassPreds(np.pad(cp.probs, ((0, 0), (0, 2))), cp.targs, classes, cp.items, cp.losses, split_name=cp.split_name)
    s = scores(cp2)
    assert 'never_seen_1' not in s['report'].index and list(s['report'].index[:4]) == cp.classes
    assert s['report'].loc['macro avg', 'f1-score'] == pytest.approx(s['macro_f1'])
    assert s['report_text'] == skm.classification_report(cp.targs, cp.probs.argmax(1), target_names=cp.classes, digits=3, zero_division=0)


def test_multilabel_tuned_threshold():
    rng = np.random.default_rng(1)
    T = (rng.random((80, 5)) < 0.3).astype(int)
    P = np.clip(T * 0.3 + rng.random((80, 5)) * 0.5, 0, 1)      # positives mostly below 0.5
    cp = ClassPreds(P, T, list('abcde'))
    tuned, fixed = scores(cp), scores(cp, threshold=0.5)
    assert tuned['threshold'] < 0.5 and tuned['macro_f1'] > fixed['macro_f1']
    assert tuned['macro_f1'] == pytest.approx(skm.f1_score(T, P >= tuned['threshold'], average='macro', zero_division=0))
    assert 0 <= tuned['exact_match'] <= tuned['accuracy'] <= 1


def test_confusion_and_most_confused(tmp_path):
    cp = ClassPreds(np.eye(3)[[0, 0, 1, 1, 2, 0]], np.array([0, 1, 1, 2, 2, 1]), ['a', 'b', 'c'])
    cm = plot_confusion(cp, tmp_path/'sub'/'cm.png', normalize=True)
    assert cm.tolist() == [[1, 0, 0], [2, 1, 0], [0, 1, 1]] and (tmp_path/'sub'/'cm.png').stat().st_size > 1000
    assert most_confused(cp) == [('b', 'a', 2), ('c', 'b', 1)]
    assert confusion([0, 1], [1, 1], 2).tolist() == [[0, 1], [0, 1]]
    with pytest.raises(MedvisionError, match='single-label'): plot_confusion(ClassPreds(np.eye(2), np.eye(2, dtype=int), ['a', 'b']))


def test_top_losses_order():
    cp = _cp()
    tl = top_losses(cp, 5)
    assert len(tl) == 5 and tl.loss.is_monotonic_decreasing and tl.loss.iloc[0] == pytest.approx(cp.losses.max())


def test_intensity_histograms_on_chestct(tmp_path):
    df = read_chestct(synth('chestct', tmp_path/'ct', n=6, size=32))
    st = intensity_histograms(df[df.split == 'train'], tmp_path/'hist.png', n_per_class=3)
    assert sorted(st.index) == sorted(df.label.unique()) and (st.n_images > 0).all() and (tmp_path/'hist.png').exists()
    assert (st['p1'] <= st['mean']).all() and (st['mean'] <= st['p99']).all()


@pytest.mark.parametrize('arch,n_in,size', [('chestct-cnn', 1, 64), ('mri-cnn', 1, 32), ('resnet18', 3, 64), ('densenet121', 3, 64)])
def test_grad_cam_any_registered_cnn(arch, n_in, size):
    torch.manual_seed(0)
    m = create_model(arch, n_in=n_in, n_out=3, pretrained=False)
    assert isinstance(last_conv(m), torch.nn.Conv2d)
    cam, t = grad_cam(m, torch.randn(n_in, size, size))
    assert cam.shape == (size, size) and 0 <= cam.min() and cam.max() <= 1 and 0 <= t < 3
    m.train(); grad_cam(m, torch.randn(1, n_in, size, size), target=1); assert m.training


def test_grad_cam_localises():
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.ReLU(inplace=True)),
                              torch.nn.Sequential(torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(2, 2)))
    with torch.no_grad():
        net[0][0].weight[:] = torch.tensor([1., -1.]).view(2, 1, 1, 1); net[0][0].bias.zero_()
        net[1][2].weight[:] = torch.eye(2); net[1][2].bias.zero_()
    x = torch.zeros(1, 1, 12, 12); x[..., 8:11, 1:4] = 1
    cam, t = grad_cam(net, x, target=0)
    assert t == 0 and cam[9, 2] == pytest.approx(1) and cam[2, 9] == pytest.approx(0)


def test_learner_tools_end_to_end(tmp_path):
    from fastai.vision.all import Learner, CrossEntropyLossFlat
    df = read_chestct(synth('chestct', tmp_path/'ct', n=6, size=32))
    dls = classification_dls(df, opener='gray', size=32, bs=4, aug='none', resize='pad')
    learn = Learner(dls, create_model('chestct-cnn', n_in=1, n_out=4), loss_func=CrossEntropyLossFlat())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    cp = get_preds(learn)
    assert len(cp) == (df.split == 'valid').sum() and cp.split_name.startswith('official split')
    assert cp.paths == list(df[df.split == 'valid'].path) and cp.losses.shape == (len(cp),)
    tl = plot_top_losses(cp, opener=dls.opener, k=4, fn=tmp_path/'top.png')
    assert len(tl) == 4 and (tmp_path/'top.png').exists()
    cams = plot_gradcam(learn, cp.paths[:3], tmp_path/'cam.png', targets=['normal'] * 3)
    assert len(cams) == 3 and cams[0].shape == (32, 32) and (tmp_path/'cam.png').exists()


def test_gradcam_on_a_model_loaded_without_its_data(tmp_path):
    "A model folder alone (no training data) explains images: `ModelDls.test_dl` rebuilds the preprocessing."
    from medvision.recipes.core import train, load_model_dir
    from medvision.synth import synth
    data = synth('chestct', tmp_path/'ct', n=4, size=32)
    train('chestct-tiny', data, tmp_path/'m', size=32, epochs=1, show_progress=False)
    recipe, learn = load_model_dir(tmp_path/'m')            # no data: learn.dls is a ModelDls
    files = sorted((data/'test').rglob('*.png'))[:2]
    cams = plot_gradcam(learn, files, tmp_path/'cam.png', show=False)
    assert len(cams) == 2 and all(c.shape == (32, 32) and 0 <= c.min() and c.max() <= 1 for c in cams)
    assert (tmp_path/'cam.png').stat().st_size > 1000
    x = learn.dls.test_dl(files[:1], bs=1).one_batch()[0]
    cam, t, p = grad_cam(learn.model, x, return_prob=True)
    with torch.no_grad(): ref = torch.softmax(learn.model.eval()(x), 1)[0, t].item()
    assert abs(p - ref) < 1e-5                             # the probability comes from the same forward pass
