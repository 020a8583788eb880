"Tests for medvision.metrics against hand-computed values, empty/absent classes, and sklearn."
import math
from types import SimpleNamespace
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from medvision.core import MedvisionError
from medvision.metrics import (seg_confusion, seg_scores, seg_summary, per_image_scores, DiceScore, IoUScore,
                               MeanIoU, MeanDice, ForegroundDice, ForegroundIoU, PerImageDice, macro_f1,
                               weighted_f1, multilabel_f1, classification_report_df, print_report, best_threshold)

nan = float('nan')


def run(m, batches):
    "Drive a fastai metric like the validation loop does."
    from fastai.torch_core import to_detach
    m.reset()
    for p, y in batches: m.accumulate(SimpleNamespace(pred=p, y=y, to_detach=to_detach))
    return m.value


def onehot(idx, n): return F.one_hot(idx, n).movedim(-1, 1).float()


# Hand example: 3 classes, 2 images of 2x3
TARG = torch.tensor([[[0, 0, 1], [2, 2, 2]], [[1, 1, 2], [2, 2, 2]]])
PRED = torch.tensor([[[0, 1, 1], [2, 2, 2]], [[1, 2, 2], [2, 2, 2]]])


def test_confusion_hand_and_forms():
    conf = seg_confusion(PRED, TARG, 3)
    assert conf.dtype == torch.int64
    assert conf.tolist() == [[1, 1, 0], [0, 2, 1], [0, 0, 7]]       # rows truth, cols prediction
    assert torch.equal(seg_confusion(onehot(PRED, 3), TARG), conf)   # logits, n from C
    assert torch.equal(seg_confusion(onehot(PRED, 3), TARG[:, None]), conf)  # (B,1,H,W) target
    assert torch.equal(seg_confusion(PRED[:, None], TARG[:, None], 3), conf)  # (B,1,H,W) index prediction
    assert torch.equal(seg_confusion(PRED.numpy(), TARG.numpy(), 3), conf)   # numpy
    assert torch.equal(seg_confusion(PRED, TARG), conf)              # n inferred from the largest index
    assert seg_confusion(PRED, TARG, 5).shape == (5, 5)
    assert seg_confusion(PRED, torch.where(TARG == 1, 255, TARG), 3).sum() == 12 - 3  # ignored target pixels
    with pytest.raises(MedvisionError, match='do not match'): seg_confusion(PRED, TARG[:, :1])
    with pytest.raises(MedvisionError, match='outside 0..1'): seg_confusion(PRED, TARG, 2)


def test_confusion_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randint(0, 4, (3, 9, 7), generator=g), torch.randint(0, 4, (3, 9, 7), generator=g)
    ref = skm.confusion_matrix(t.flatten().numpy(), p.flatten().numpy(), labels=range(4))
    assert np.array_equal(seg_confusion(p, t, 4).numpy(), ref)


def test_seg_scores_hand_values_and_sklearn():
    conf = seg_confusion(PRED, TARG, 3)
    df = seg_scores(conf, ['gg', 'cons', 'bg'])
    assert list(df.index) == ['gg', 'cons', 'bg']
    assert list(df.columns) == ['dice', 'iou', 'precision', 'recall', 'support', 'predicted']
    np.testing.assert_allclose(df.dice, [2/3, 2/3, 14/15]); np.testing.assert_allclose(df.iou, [1/2, 1/2, 7/8])
    np.testing.assert_allclose(df.precision, [1, 2/3, 7/8]); np.testing.assert_allclose(df.recall, [1/2, 2/3, 1])
    assert df.support.tolist() == [2, 3, 7] and df.predicted.tolist() == [1, 3, 8]
    t, p = TARG.flatten().numpy(), PRED.flatten().numpy()
    np.testing.assert_allclose(df.dice, skm.f1_score(t, p, average=None))        # Dice = pixel F1
    np.testing.assert_allclose(df.iou, skm.jaccard_score(t, p, average=None))
    with pytest.raises(MedvisionError, match='2 class names'): seg_scores(conf, ['a', 'b'])


def test_empty_and_absent_classes():
    # class 3 absent from truth and prediction over the whole set -> NaN, skipped by every mean
    conf = seg_confusion(PRED, TARG, 4)
    df = seg_scores(conf)
    assert math.isnan(df.dice['3']) and math.isnan(df.iou['3'])
    assert math.isnan(df.precision['3']) and math.isnan(df.recall['3'])
    s = seg_summary(conf, n_fg=2)
    assert s['miou'] == pytest.approx((1/2 + 1/2 + 7/8)/3)
    assert s['mean_dice'] == pytest.approx((2/3 + 2/3 + 14/15)/3)
    assert s['fg_dice'] == pytest.approx(2/3) and s['fg_iou'] == pytest.approx(1/2)
    # class only in the prediction: 0, and recall NaN (never occurs), precision 0
    p, t = torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]])
    d = seg_scores(seg_confusion(p, t, 2))
    assert d.dice['1'] == 0 and d.iou['1'] == 0 and d.precision['1'] == 0 and math.isnan(d.recall['1'])
    # class only in the truth: 0, precision NaN (never predicted)
    d = seg_scores(seg_confusion(t, p, 2))
    assert d.dice['1'] == 0 and math.isnan(d.precision['1']) and d.recall['1'] == 0
    # nothing but background everywhere: foreground NaN, background 1
    bg = torch.full((2, 3, 3), 2)
    s = seg_summary(seg_confusion(bg, bg, 3), n_fg=2)
    assert math.isnan(s['fg_dice']) and s['miou'] == 1.0 and s['pixel_acc'] == 1.0
    # all-empty matrix (no pixels): every score NaN
    s = seg_summary(torch.zeros(3, 3, dtype=torch.int64), n_fg=2)
    assert math.isnan(s['miou']) and math.isnan(s['fg_dice'])


def test_per_image_scores():
    df = per_image_scores(onehot(PRED, 3), TARG, classes=['gg', 'cons', 'bg'])
    assert list(df.columns) == ['dice_gg', 'dice_cons', 'dice_bg', 'iou_gg', 'iou_cons', 'iou_bg'] and len(df) == 2
    # image 0: conf [[1,1,0],[0,1,0],[0,0,3]]; image 1: [[0,0,0],[0,1,1],[0,0,4]]
    np.testing.assert_allclose(df.iloc[0].values, [2/3, 2/3, 1, 1/2, 1/2, 1])
    assert math.isnan(df.dice_gg[1]) and math.isnan(df.iou_gg[1])      # absent from image 1 entirely
    np.testing.assert_allclose(df.iloc[1].values[1:3], [2/3, 8/9]); np.testing.assert_allclose(df.iloc[1].values[4:], [1/2, 4/5])
    means = df.mean()                                                   # the per-image-mean variant
    assert means['dice_gg'] == pytest.approx(2/3) and means['dice_bg'] == pytest.approx((1 + 8/9)/2)
    # per-image Dice equals the set-level Dice of each image alone
    for i in range(2):
        assert df.dice_bg[i] == pytest.approx(seg_scores(seg_confusion(PRED[i:i+1], TARG[i:i+1], 3)).dice['2'])


def test_fastai_metrics_accumulate_over_the_set():
    "Accumulated value == set-level value, whatever the batching; never the mean of batch means."
    lg = onehot(PRED, 3)
    one = [(lg, TARG)]
    split = [(lg[:1], TARG[:1]), (lg[1:], TARG[1:])]
    cases = [(DiceScore(0), 2/3), (DiceScore(2), 14/15), (IoUScore(1), 1/2), (IoUScore(2), 7/8),
             (MeanIoU(), (1/2 + 1/2 + 7/8)/3), (MeanDice(), (2/3 + 2/3 + 14/15)/3),
             (ForegroundDice(2), 2/3), (ForegroundIoU(2), 1/2), (ForegroundDice(1), 2/3)]
    for m, want in cases:
        assert run(m, one) == pytest.approx(want), m.name
        assert run(m, split) == pytest.approx(want), m.name
    # a case where the set-level value and the mean of batch values differ: we report the set-level one
    p = torch.tensor([[[1, 1, 1, 1]], [[1, 0, 0, 0]]]); t = torch.tensor([[[1, 1, 1, 1]], [[1, 1, 1, 1]]])
    batches = [(p[:1], t[:1]), (p[1:], t[1:])]
    assert run(DiceScore(1, n_classes=2), batches) == pytest.approx(2*5/(2*5 + 3))   # set-level 10/13
    assert (1 + 2/5)/2 != pytest.approx(10/13)                                          # batch-mean differs


def test_fastai_metrics_empty_rule_and_options():
    lg4 = onehot(PRED, 4)
    assert math.isnan(run(DiceScore(3), [(lg4, TARG)])) and math.isnan(run(IoUScore(3), [(lg4, TARG)]))
    assert run(MeanIoU(), [(lg4, TARG)]) == pytest.approx((1/2 + 1/2 + 7/8)/3)
    assert run(MeanIoU(ignore_absent=False), [(lg4, TARG)]) == pytest.approx((1/2 + 1/2 + 7/8 + 1)/4)
    assert run(MeanIoU(classes=[0, 1]), [(lg4, TARG)]) == pytest.approx(1/2)
    # index predictions without n_classes: the matrix grows to the largest class seen
    assert run(DiceScore(2), [(PRED[:1] * 0, TARG[:1] * 0), (PRED[1:], TARG[1:])]) == pytest.approx(8/9)
    # a class never seen at all -> NaN (not an error)
    assert math.isnan(run(DiceScore(7), [(PRED, TARG)]))
    bg = torch.full((1, 2, 2), 2)
    assert math.isnan(run(ForegroundDice(2), [(bg, bg)]))
    # fastai tensor subclasses and (B,1,H,W) masks
    from fastai.torch_core import TensorMask, TensorBase
    assert run(DiceScore(0), [(TensorBase(onehot(PRED, 3)), TensorMask(TARG[:, None]))]) == pytest.approx(2/3)


def test_per_image_metric():
    lg = onehot(PRED, 3)
    m = PerImageDice()
    v_all = run(m, [(lg[:1], TARG[:1]), (lg[1:], TARG[1:])])
    want = np.nanmean(per_image_scores(lg, TARG)[['dice_0', 'dice_1', 'dice_2']].mean().values)
    assert v_all == pytest.approx(want)
    assert run(PerImageDice(range(2)), [(lg, TARG)]) == pytest.approx((2/3 + 2/3)/2)
    assert m.name == 'per_image_dice'


def test_metric_names():
    assert [m.name for m in [DiceScore(1), IoUScore(0), MeanIoU(), MeanDice(), ForegroundDice(), ForegroundIoU()]] == \
        ['dice_1', 'iou_0', 'miou', 'mean_dice', 'fg_dice', 'fg_iou']
    assert DiceScore(0, name='dice_ground_glass').name == 'dice_ground_glass'


def test_macro_weighted_f1_match_sklearn():
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    yp = out.argmax(1).numpy()
    batches = [(out[:20], y[:20]), (out[20:], y[20:])]
    assert run(macro_f1(), batches) == pytest.approx(skm.f1_score(y.numpy(), yp, average='macro'))
    assert run(weighted_f1(), batches) == pytest.approx(skm.f1_score(y.numpy(), yp, average='weighted'))
    assert macro_f1().name == 'macro_f1' and weighted_f1().name == 'weighted_f1'
    # hand: preds [0,1,2,0] vs truth [0,1,1,0] -> F1 class0 1, class1 2/3, class2 0
    o = torch.tensor([[3., 0, 0], [0, 2, 0], [0, 0, 1], [2, 0, 0]]); t = torch.tensor([0, 1, 1, 0])
    assert run(macro_f1(), [(o, t)]) == pytest.approx((1 + 2/3 + 0)/3)
    assert run(weighted_f1(), [(o, t)]) == pytest.approx((2*1 + 2*2/3)/4)


def test_multilabel_f1():
    logits = torch.tensor([[5., -5, 1], [5, 5, -1], [-5, -5, -5]]); y = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 0]])
    # thresh 0.5 -> pred [[1,0,1],[1,1,0],[0,0,0]]: F1 per class 1, 2/3, 1
    assert run(multilabel_f1(), [(logits, y)]) == pytest.approx((1 + 2/3 + 1)/3)
    assert run(multilabel_f1(average='micro'), [(logits, y)]) == pytest.approx(2*4/(2*4 + 0 + 1))
    # a higher threshold drops the weak positive of class 2
    p = (torch.sigmoid(logits) >= 0.9).numpy()
    assert run(multilabel_f1(thresh=0.9), [(logits, y)]) == pytest.approx(skm.f1_score(y.numpy(), p, average='macro', zero_division=0))


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_report_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    classes = ['Abdomen', 'Chest', 'Hand', 'Skull', 'Thoracic Spine']
    yt, yp = rng.integers(0, 4, 40), rng.integers(0, 5, 40)   # 'Thoracic Spine' never true
    df = classification_report_df(yt, yp, classes)
    ref = skm.classification_report(yt, yp, labels=range(5), target_names=classes, output_dict=True, zero_division=0)
    for k, row in ref.items():
        if k == 'accuracy': assert df.loc['accuracy', 'f1-score'] == pytest.approx(row); continue
        assert df.loc[k].tolist() == pytest.approx([row['precision'], row['recall'], row['f1-score'], row['support']])
    assert list(df.index) == classes + ['accuracy', 'macro avg', 'weighted avg']
    txt = print_report(df, show=False)
    assert txt == skm.classification_report(yt, yp, labels=range(5), target_names=classes, zero_division=0)
    assert print_report(df, digits=3, show=False) == skm.classification_report(
        yt, yp, labels=range(5), target_names=classes, zero_division=0, digits=3)


def test_report_hand_absent_and_names(capsys):
    classes = ['T1', 'T2', 'FLAIR', 'T1c']
    df = classification_report_df(['T1', 'T1', 'T2', 'FLAIR'], ['T1', 'T2', 'T2', 'FLAIR'], classes)
    assert df.loc['T1'].tolist() == pytest.approx([1, 0.5, 2/3, 2])
    assert df.loc['T2'].tolist() == pytest.approx([0.5, 1, 2/3, 1])
    assert df.loc['T1c'].tolist() == [0, 0, 0, 0]                        # absent class
    assert df.loc['accuracy', 'f1-score'] == 0.75 and math.isnan(df.loc['accuracy', 'precision'])
    assert df.loc['macro avg', 'f1-score'] == pytest.approx((2/3 + 2/3 + 1 + 0)/4)
    assert df.loc['weighted avg', 'recall'] == pytest.approx((2*0.5 + 1 + 1)/4)
    print_report(df); assert 'weighted avg' in capsys.readouterr().out
    # tensors and float labels work; bad labels fail clearly
    df2 = classification_report_df(torch.tensor([0, 0, 1, 2]), np.array([0., 1, 1, 2]), classes)
    assert df2.equals(df)
    with pytest.raises(MedvisionError, match="not in classes"): classification_report_df(['T1', 'PD'], ['T1', 'T1'], classes)
    with pytest.raises(MedvisionError, match='outside 0..3'): classification_report_df([0, 4], [0, 0], classes)
    with pytest.raises(MedvisionError, match='differ'): classification_report_df([0, 1], [0], classes)


def test_report_multilabel_matches_sklearn():
    rng = np.random.default_rng(3)
    yt, yp = rng.random((30, 4)) < 0.4, rng.random((30, 4)) < 0.4
    yt[:, 3] = False
    df = classification_report_df(yt.astype(int), yp.astype(int), list('abcd'))
    ref = skm.classification_report(yt, yp, target_names=list('abcd'), output_dict=True, zero_division=0)
    for k in ['a', 'b', 'c', 'd', 'micro avg', 'macro avg', 'weighted avg']:
        r = ref[k]
        assert df.loc[k].tolist() == pytest.approx([r['precision'], r['recall'], r['f1-score'], r['support']]), k


@pytest.mark.parametrize('metric', ['f1_macro', 'f1_micro', 'f1_weighted', 'f1_samples'])
def test_best_threshold_matches_sklearn_grid(metric):
    rng = np.random.default_rng(0)
    t = rng.random((120, 6)) < 0.3
    p = np.clip(t*0.3 + rng.random((120, 6))*0.6, 0, 1)
    thr, score = best_threshold(torch.tensor(p), torch.tensor(t), metric)
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    ref = [skm.f1_score(t, p >= g, average=metric[3:], zero_division=0) for g in grid]
    assert score == pytest.approx(max(ref))
    assert score == pytest.approx(skm.f1_score(t, p >= thr, average=metric[3:], zero_division=0))
    best = [g for g, s in zip(grid, ref) if s == pytest.approx(max(ref))]
    assert thr == min(best, key=lambda g: abs(g - 0.5))               # ties -> closest to 0.5


def test_best_threshold_hand_and_errors():
    p = np.array([[0.9, 0.2], [0.3, 0.8], [0.2, 0.1]]); t = np.array([[1, 0], [1, 1], [0, 0]])
    # 0.15: F1 (0.8 + 2/3)/2; 0.25: both classes perfect; 0.5: class 0 misses 0.3 -> (2/3 + 1)/2
    thr, s = best_threshold(p, t, thresholds=[0.15, 0.25, 0.5])
    assert (thr, s) == (0.25, 1.0)
    assert best_threshold(p, t, thresholds=[0.15])[1] == pytest.approx((0.8 + 2/3)/2)
    with pytest.raises(MedvisionError, match='apply torch.sigmoid'): best_threshold(p*5 - 2, t)
    with pytest.raises(MedvisionError, match='must both be'): best_threshold(p, t[:2])
    with pytest.raises(MedvisionError, match='metric must be one of'): best_threshold(p, t, 'accuracy')


def test_inside_fastai_validate_equals_functional():
    "In a real Learner.validate (batches of 2) the metrics equal the set-level functional scores."
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.torch_core import TensorImage, TensorMask
    from medvision.losses import SegLoss
    from medvision.models import create_model
    torch.manual_seed(0)
    ds = [(TensorImage(torch.randn(1, 32, 32)), TensorMask(torch.randint(0, 3, (32, 32)))) for _ in range(5)]
    dls = DataLoaders.from_dsets(ds, ds, bs=2, device='cpu')
    mets = [DiceScore(0), IoUScore(2), MeanIoU(), ForegroundDice(2), PerImageDice()]
    learn = Learner(dls, create_model('unet-resnet18', n_in=1, n_out=3), loss_func=SegLoss(), metrics=mets)
    with learn.no_logging(): vals = learn.validate()
    probs, targs = learn.get_preds()
    conf = seg_confusion(probs, targs, 3)
    df, s = seg_scores(conf), seg_summary(conf, n_fg=2)
    pi = per_image_scores(probs, targs, 3)[['dice_0', 'dice_1', 'dice_2']].mean()
    want = [df.dice['0'], df.iou['2'], s['miou'], s['fg_dice'], np.nanmean(pi.values)]
    assert [float(v) for v in vals[1:]] == pytest.approx(want)


def test_seg_metrics_share_one_confusion_per_batch(monkeypatch):
    import types, medvision.metrics as M
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(2, 3, 8, 8, generator=g), torch.randint(0, 3, (2, 8, 8), generator=g)) for _ in range(3)]
    calls = []
    orig = M.seg_confusion
    monkeypatch.setattr(M, 'seg_confusion', lambda *a, **k: calls.append(1) or orig(*a, **k))
    mets = [M.ForegroundDice(n_fg=2), M.MeanIoU(), M.DiceScore(1)]
    learn = types.SimpleNamespace()
    for p, y in batches:
        learn.pred, learn.y = p, y
        for m in mets: m.accumulate(learn)
    assert len(calls) == len(batches)                       # one confusion matrix per batch, not one per metric
    conf = sum(orig(p, y, 3) for p, y in batches)
    s = M.seg_summary(conf.numpy(), 2)
    assert mets[0].value == pytest.approx(s['fg_dice']) and mets[1].value == pytest.approx(s['miou'])
    assert mets[2].value == pytest.approx(M.seg_scores(conf.numpy())['dice'].iloc[1])
