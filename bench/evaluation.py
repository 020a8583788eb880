"""Evaluation like a paper (issue 14): bootstrap 95 % CIs, flip TTA vs none, 5-fold CV and the fold ensemble on chest CT.

One model (`chestct-tiny`, the seed-003 baseline CNN at 64 px, from scratch, one epoch by default: six trainings;
the recorded run took 55 min on 2 CPU cores shared with other jobs, ~15 min of CPU time) is trained on the official
`train` folder (validated on the official `valid` folder), then scored on **all** of `valid` (72 images) without
and with flip TTA. Five group-aware, stratified folds of `train` give five more models (each scored on its own
fold), whose probability-average ensemble is scored on all of `valid`. Every metric carries its bootstrap 95 % CI
(1 000 resamples of the image: chest CT has no patient id), seeded.

Writes bench/results/evaluation.json: `chestct.no_tta`, `chestct.tta`, `chestct.cv` (`per_fold`, `mean`, `sd`,
`ensemble`), each metric as `{value, ci: {lo, hi, unit, n_units}}`.
Usage: python bench/evaluation.py [--quick] [--epochs N] [--size S] [--folds K]   (--quick: synthetic data, < 1 min)
"""
import argparse, json, platform, sys, tempfile, time, warnings
from pathlib import Path
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medvision.core import shared_data, atomic_write_text
from medvision.recipes.core import train, evaluate
from medvision.recipes.evaluation import cv, HEADLINE

METRICS = ('accuracy', 'macro_f1', 'weighted_f1')


def _with_ci(final):
    "Headline metrics of a `final` dict as `{value, ci}` (+ ECE, n, split)."
    ci = final.get('ci') or {}
    res = {k: {'value': final[k], 'ci': ci.get(k)} for k in METRICS if k in final}
    res.update(ece=final.get('ece'), n=final.get('n'), split=final.get('split'))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='synthetic chest-CT folders, tiny budget')
    ap.add_argument('--epochs', type=int, default=1)
    ap.add_argument('--size', type=int, default=64)
    ap.add_argument('--folds', type=int, default=5)
    ap.add_argument('--out', default=None)
    a = ap.parse_args(argv)
    warnings.filterwarnings('ignore')
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp(prefix='mv-evalbench-'))
    root = None if a.quick else shared_data('chest-ct')
    if root is None:
        from medvision.synth import synth
        root = synth('chestct', tmp/'data', n=12, size=64); desc = 'synthetic chestct layout (medvision.synth)'
        if a.quick: a.epochs, a.size, a.folds = 1, 32, 3
    else: desc = 'real: ../shared/data/chest-ct (official train/valid folders)'
    ov = dict(epochs=a.epochs, size=a.size)
    t0 = time.time()
    train('chestct-tiny', root, tmp/'model', show_progress=False, **ov)
    t_train = time.time() - t0
    res = {'data': desc, 'recipe': 'chestct-tiny', 'overrides': ov, 'ci': '95 % percentile bootstrap, 1000 resamples, seed 0',
           'machine': f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads (shared CPU)"}
    ev = {}
    for name, tta in (('no_tta', False), ('tta', True)):
        t = time.time()
        e = evaluate(tmp/'model', root/'valid', split='all', tta=tta, ci_resamples=1000)
        ev[name] = {**_with_ci(e['final']), 'tta': e['tta'], 'eval_s': round(time.time() - t, 1)}
    t = time.time()
    c = cv('chestct-tiny', root/'train', tmp/'cv', folds=a.folds, seed=0, **ov)
    t_cv = time.time() - t
    e = evaluate(tmp/'cv', root/'valid', split='all', ci_resamples=1000)
    per = [{'fold': f['fold'], 'split': f['split'], **{k: {'value': f[k], 'ci': f['ci'].get(k)} for k in METRICS if k in f}}
           for f in c['per_fold']]
    ev['cv'] = {'folds': a.folds, 'how': c.get('how'), 'data': 'train folder only (valid folder held out)',
                'per_fold': per, 'mean': {k: v for k, v in c['mean'].items() if k in METRICS},
                'sd': {k: v for k, v in c['sd'].items() if k in METRICS},
                'ensemble': _with_ci(e['final']), 'train_s': round(t_cv, 1)}
    res['chestct'] = {**ev, 'train_s': round(t_train, 1)}
    res['total_s'] = round(time.time() - t0, 1)
    txt = json.dumps(res, indent=2)
    out = Path(a.out) if a.out else Path(__file__).resolve().parent/'results'/('evaluation-quick.json' if a.quick else 'evaluation.json')
    atomic_write_text(txt + '\n', out)
    print(txt)
    print(f"written to {out}")


if __name__ == '__main__': main()
