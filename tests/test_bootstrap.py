"Tests for medvision.bootstrap: the vectorised resampler against a slow loop, known answers, sklearn agreement."
import numpy as np
from fastcore import test as fct
eq, close = fct.test_eq, fct.test_close
from sklearn import metrics as skm

from medvision.bootstrap import (unit_codes, unit_confusions, sum_by_unit, bootstrap_confusions, bootstrap_ci,
                                 class_metrics, seg_metrics, mean_ci, percentile_ci)
from medvision.metrics import seg_confusion, seg_summary


def slow_bootstrap(units, y_true, y_pred, n_classes, n_resamples, seed, metric):
    "Reference: draw units one resample at a time, rebuild the item list, recompute the metric from labels."
    rng = np.random.default_rng(seed)
    names = list(dict.fromkeys(units))
    vals = []
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(names), size=len(names))
        yt = np.concatenate([y_true[units == names[u]] for u in drawn])
        yp = np.concatenate([y_pred[units == names[u]] for u in drawn])
        vals.append(metric(yt, yp))
    vals = np.array(vals)
    return np.percentile(vals, 2.5), np.percentile(vals, 97.5)


def test_matches_slow_reference_resampler():
    rng = np.random.default_rng(1)
    units = np.repeat(np.array([f"p{i}" for i in range(23)]), rng.integers(1, 5, 23))
    yt = rng.integers(0, 3, len(units))
    yp = np.where(rng.random(len(units)) < 0.7, yt, rng.integers(0, 3, len(units)))
    codes, names = unit_codes(units)
    ci = bootstrap_ci(unit_confusions(codes, yt, yp, 3), class_metrics, 300, seed=7, unit='patient', batch=64)
    refs = {'accuracy': lambda t, p: (t == p).mean(),
            'macro_f1': lambda t, p: skm.f1_score(t, p, average='macro', zero_division=0),
            'weighted_f1': lambda t, p: skm.f1_score(t, p, average='weighted', zero_division=0)}
    for k, f in refs.items():
        lo, hi = slow_bootstrap(units, yt, yp, 3, 300, 7, f)
        close(ci[k]['lo'], lo, eps=1e-12); close(ci[k]['hi'], hi, eps=1e-12)
        eq((ci[k]['unit'], ci[k]['n_units']), ('patient', 23))


def test_segmentation_reference_and_point_value():
    rng = np.random.default_rng(2)
    vols = np.repeat(np.arange(6), 3)                      # 6 volumes of 3 slices
    targ = rng.integers(0, 3, (18, 8, 8)); pred = np.where(rng.random((18, 8, 8)) < .8, targ, 0)
    per_slice = np.stack([seg_confusion(pred[i:i+1], targ[i:i+1], 3).numpy() for i in range(18)])
    cv = sum_by_unit(vols, per_slice)
    eq(cv.sum(0), seg_confusion(pred, targ, 3).numpy())
    pm = seg_metrics(cv.sum(0), ['a', 'b', 'bg'], n_fg=2)
    for k, v in seg_summary(cv.sum(0), n_fg=2).items(): close(pm[k], v)
    ci = bootstrap_ci(cv, lambda c: seg_metrics(c, ['a', 'b', 'bg'], 2), 200, seed=3, unit='volume')
    r = np.random.default_rng(3); ref = []
    for _ in range(200):
        d = r.integers(0, 6, 6)
        ref.append(seg_summary(sum(cv[u] for u in d), n_fg=2)['fg_dice'])
    close(ci['fg_dice']['lo'], np.percentile(ref, 2.5), eps=1e-12)
    close(ci['fg_dice']['hi'], np.percentile(ref, 97.5), eps=1e-12)
    assert ci['fg_dice']['lo'] <= pm['fg_dice'] <= ci['fg_dice']['hi']


def test_all_correct_is_one_one():
    y = np.repeat([0, 1, 2, 3], 5)
    ci = bootstrap_ci(unit_confusions(np.arange(20), y, y, 4), class_metrics, 1000)
    for k in ('accuracy', 'macro_f1', 'weighted_f1', 'f1_0', 'f1_3'):
        eq((ci[k]['lo'], ci[k]['hi']), (1.0, 1.0))
    m = np.random.default_rng(0).integers(0, 3, (5, 6, 6))
    confs = np.stack([seg_confusion(m[i:i+1], m[i:i+1], 3).numpy() for i in range(5)])
    ci = bootstrap_ci(confs, lambda c: seg_metrics(c, n_fg=2), 500)
    for k in ('fg_dice', 'miou', 'dice_0', 'iou_2'): eq((ci[k]['lo'], ci[k]['hi']), (1.0, 1.0))


def test_seeded_batching_and_off():
    c = unit_confusions(np.arange(30), np.arange(30) % 2, (np.arange(30) // 3) % 2, 2)
    a = bootstrap_confusions(c, 100, seed=5, batch=7)
    eq(a, bootstrap_confusions(c, 100, seed=5, batch=100))
    assert not np.array_equal(a, bootstrap_confusions(c, 100, seed=6))
    eq(bootstrap_ci(c, class_metrics, 0), {})
    eq(mean_ci([1.0, np.nan, 1.0], 50)['n_units'], 2)
    assert all(np.isnan(percentile_ci([np.nan, np.inf])))


def test_macro_f1_like_sklearn_with_absent_classes():
    yt, yp = np.array([0, 0, 1, 1, 1]), np.array([0, 2, 1, 1, 0])
    m = class_metrics(unit_confusions(np.zeros(5), yt, yp, 4)[0])
    close(m['macro_f1'], skm.f1_score(yt, yp, average='macro', zero_division=0))
    assert np.isnan(m['f1_3']) and m['f1_2'] == 0
