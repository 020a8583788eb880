"""Faithful seed recipe vs medvision's recommended recipe, same data, same split, same reduced budget (issue 12).

Chest CT (seed 003, real data from ../shared/data/chest-ct when present, else a synthetic twin): `seed003-cnn` vs
`chestct-cnn`, both at the same size / epochs / batch (overrides below), official train/valid folders, scored on the
validation folder: macro F1 with a 95 % bootstrap CI over validation images (1000 resamples of the per-image
(truth, prediction) pairs, rebuilt from the confusion matrix). On a 2-core CPU the budget is small (see `budget` in
the JSON; the committed run: 10 epochs at 128 px); the numbers compare pipelines at that budget, not the seeds' results.
Usage: python bench/fidelity.py [--epochs N] [--size S]   → bench/results/fidelity.json
"""
import argparse, json, sys, tempfile, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medvision.core import shared_data, atomic_write_text
from medvision.recipes.core import train

def f1_ci(conf, n_boot=1000, seed=0):
    "Macro F1 and its 95 % bootstrap CI over the images behind confusion matrix `conf` (rows = truth)."
    from sklearn.metrics import f1_score
    conf = np.asarray(conf)
    t = np.repeat(np.arange(len(conf)), conf.sum(1))
    p = np.concatenate([np.repeat(np.arange(len(conf)), r) for r in conf])
    f = lambda i: f1_score(t[i], p[i], average='macro', labels=range(len(conf)), zero_division=0)
    rng = np.random.default_rng(seed)
    bs = [f(rng.integers(0, len(t), len(t))) for _ in range(n_boot)]
    return float(f(np.arange(len(t)))), [float(np.percentile(bs, 2.5)), float(np.percentile(bs, 97.5))], int(len(t))

def main(epochs=3, size=64, bs=32):
    data = shared_data('chest-ct')
    tmp = Path(tempfile.mkdtemp())
    if data is None:
        from medvision.synth import synth
        data, desc = synth('chestct', tmp/'ct', n=12, size=64), 'synthetic chestct twin'
    else: desc = 'real: ../shared/data/chest-ct'
    budget = dict(size=size, epochs=epochs, bs=bs, note='same overrides for both; official train/valid folders')
    res = {'benchmark': 'seed fidelity: faithful vs recommended (seed 003, chest CT)', 'data': desc, 'budget': budget, 'runs': {}}
    for name in ('seed003-cnn', 'chestct-cnn'):
        t0 = time.time()
        r = train(name, data, tmp/name, show_progress=False, size=size, epochs=epochs, bs=bs)
        f1, ci, n = f1_ci(r['final']['confusion'])
        res['runs'][name] = {'split': r['split'], 'n_valid': n, 'macro_f1': round(f1, 4), 'macro_f1_ci95': [round(c, 4) for c in ci],
                             'accuracy': round(r['final']['accuracy'], 4), 'epochs_run': r['epochs_run'], 'train_time_s': round(time.time()-t0, 1)}
    out = Path(__file__).parent/'results'/'fidelity.json'
    atomic_write_text(json.dumps(res, indent=2) + '\n', out)
    print(json.dumps(res, indent=2))

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--epochs', type=int, default=3); ap.add_argument('--size', type=int, default=64)
    a = ap.parse_args()
    main(a.epochs, a.size)
