"""Faithful seed recipe vs medvision's recommended recipe, same data, same split, same reduced budget (issue 12).

- `chestct` (seed 003): `seed003-cnn` vs `chestct-cnn` on real chest CT (../shared/data/chest-ct; else a synthetic
  twin), both at the same size / epochs / batch, official train/valid folders, scored on the validation folder: macro
  F1 with a 95 % bootstrap CI over validation images (1000 resamples of the per-image (truth, prediction) pairs,
  rebuilt from the confusion matrix).
- `covid` (seed 004): `seed004-unetpp-b3` vs `covid-unetpp-b3` on the real COVID PNG slices (../shared/data/
  covid-ct-png), leave-one-volume-out over its volumes: each volume is held out once and both recipes train on every
  `stride`-th slice of the others. Each recipe keeps everything that makes it itself — loss (seed: balanced CE + smp
  Dice + smp focal γ 2.5; recommended: CE + smoothed Dice + softmax focal γ 2), optimiser and schedule values, batch
  size, augmentations, sampler rule, standardisation, best-epoch monitor. Changed for both alike, and only these:
  the network (`--arch`, default `unetpp-efflite0`: UNet++ on the packaged ImageNet EfficientNet-Lite0 encoder —
  EfficientNet-B3's ImageNet weights cannot be fetched offline and a B3 UNet++ from random weights learns nothing in
  a CPU budget, bench/results/transfer.json), size, epochs, the split (by volume: the seed's random 20 % of slices
  would validate on near-duplicates of training slices) and seed 004's `sources=['medseg']` (this data has one source).
  Score: pooled lesion Dice on the held-out volume (the same code for both runs, bench/transfer.py's `seg_score`) of
  the epoch each recipe keeps (its own monitor, on the same held-out slices: optimistic for both) and of the last
  epoch (no choice); mean over volumes with a 95 % bootstrap CI by volume, and faithful − recommended paired by volume.
On a 2-core CPU the budget is small (see `budget` in the JSON); the numbers compare pipelines at that budget, not the
seeds' results. Results are merged into the JSON per workflow.
Usage: python bench/fidelity.py [--only chestct,covid] [--epochs N] [--size S]   → bench/results/fidelity.json
       python bench/fidelity.py --only covid --runs seed004-unetpp-b3 --faithful-kw '{"lr": 0.001}'   (a variant of
         the faithful recipe, stored under covid_{"lr": 0.001} and paired by volume with the base runs; `extra`
         is merged, e.g. '{"extra": {"lesion_rule": null}}' drops one key)
       add --resume to continue a stopped study from the volumes its JSON key already holds (same settings)
       python bench/fidelity.py --only covid --size 384 --epochs 20 --arch native   (a GPU: each recipe's own network)
"""
import argparse, json, sys, tempfile, time
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from medvision.core import shared_data, atomic_write_text
from medvision.recipes.core import train, get_recipe
from transfer import covid_volumes, volume_label, covid_split, seg_score, _ci, paired_diff   # one split rule,
# one scorer and one pairing for every COVID benchmark

OUT = Path(__file__).parent/'results'/'fidelity.json'
PAIRS = {'chestct': ('seed003-cnn', 'chestct-cnn'), 'covid': ('seed004-unetpp-b3', 'covid-unetpp-b3')}


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


def bench_chestct(tmp, epochs=3, size=64, bs=32):
    "Seed 003's faithful CNN against `chestct-cnn`, same overrides for both."
    data = shared_data('chest-ct')
    if data is None:
        from medvision.synth import synth
        data, desc = synth('chestct', tmp/'ct', n=12, size=64), 'synthetic chestct twin'
    else: desc = 'real: ../shared/data/chest-ct'
    budget = dict(size=size, epochs=epochs, bs=bs, note='same overrides for both; official train/valid folders')
    res = {'benchmark': 'seed 003, chest CT', 'data': desc, 'budget': budget, 'runs': {}}
    for name in PAIRS['chestct']:
        t0 = time.time()
        r = train(name, data, tmp/name, show_progress=False, size=size, epochs=epochs, bs=bs)
        f1, ci, n = f1_ci(r['final']['confusion'])
        res['runs'][name] = {'split': r['split'], 'n_valid': n, 'macro_f1': round(f1, 4),
                             'macro_f1_ci95': [round(c, 4) for c in ci], 'accuracy': round(r['final']['accuracy'], 4),
                             'epochs_run': r['epochs_run'], 'train_time_s': round(time.time()-t0, 1)}
    return res


def covid_recipe(name, arch):
    "The registered recipe with only what this data forces changed: no `sources` filter (one source, 'png')."
    r = get_recipe(name)
    ex = {k: v for k, v in (r.extra or {}).items() if k != 'sources'}
    return r.replace(arch=r.arch if arch == 'native' else arch, extra={**ex, 'num_workers': 0, 'n_overlays': 0})


def covid_diff(per, key='lesion_dice'):
    "Faithful − recommended `key` (lesion Dice of the kept or of the last epoch), paired by held-out volume."
    return paired_diff(*(per[k] for k in PAIRS['covid']), key, won='volumes_faithful_better')


def last_epoch_dice(res):
    "The validation lesion Dice of a run's last epoch: free of the choice of the kept epoch, which saw the same slices."
    return round(float(res['history'][-1]['fg_dice']), 4)


def covid_summary(runs):
    "Per recipe the mean over held-out volumes with its CI by volume (kept and last epoch); the paired differences."
    mean = lambda p, key: round(float(np.mean([o[key] for o in p])), 4)
    summ = {k: dict(mean_lesion_dice=mean(p, 'lesion_dice'), ci=_ci([o['lesion_dice'] for o in p]),
                    mean_last_epoch_lesion_dice=mean(p, 'last_epoch_lesion_dice'),
                    last_epoch_ci=_ci([o['last_epoch_lesion_dice'] for o in p]), n_volumes=len(p)) for k, p in runs.items()}
    if not all(runs.get(k) for k in PAIRS['covid']): return dict(summary=summ)   # a variant run alone
    return dict(summary=summ, faithful_minus_recommended=covid_diff(runs),
                faithful_minus_recommended_last_epoch=covid_diff(runs, 'last_epoch_lesion_dice'))


def variant(r, kw):
    "Recipe `r` with fields `kw` replaced; `extra` is merged key by key (a key set to None is removed)."
    if 'extra' in kw:
        ex = {**(r.extra or {}), **kw['extra']}
        kw = {**kw, 'extra': {k: v for k, v in ex.items() if v is not None}}
    return r.replace(**kw)


def bench_covid(tmp, epochs=10, size=128, arch='unetpp-efflite0', stride=4, volumes=None, save=lambda res: None,
                runs=PAIRS['covid'], faithful_kw=None, prior=None):
    """Leave-one-volume-out: `seed004-unetpp-b3` vs `covid-unetpp-b3`, both on the same slices, scored alike;
    `faithful_kw` changes the faithful recipe (a variant, e.g. `{'lr': 1e-3}`), `runs` picks which recipes run;
    `prior` (a stopped study's saved result with the same settings) is continued: its volumes are not run again."""
    data, n = shared_data('covid-ct-png'), 970
    if data is None: raise SystemExit('covid: ../shared/data/covid-ct-png is absent; nothing to compare')
    vols = covid_volumes(n)
    if volumes: vols = [vols[i] for i in volumes]
    recipes = {k: covid_recipe(k, arch) for k in runs}
    if faithful_kw: recipes[PAIRS['covid'][0]] = variant(recipes[PAIRS['covid'][0]], faithful_kw)
    budget = dict(size=size, epochs=epochs, train_stride=stride, arch=arch,
                  pretrained='both: pretrained=True, the ImageNet encoder through the offline resolver',
                  note='same network, size, epochs and slices for both; each recipe keeps its own loss, optimiser, '
                       'schedule, batch, augmentations, sampler, standardisation and monitor',
                  batch={k: r.bs for k, r in recipes.items()}, lr={k: r.lr for k, r in recipes.items()},
                  monitor={k: r.monitor for k, r in recipes.items()}, faithful_overrides=faithful_kw or {})
    res = {'benchmark': 'seed 004, COVID CT lesion segmentation', 'data': 'real: ../shared/data/covid-ct-png',
           'budget': budget, 'split': 'leave one volume out (README boundaries); train on every '
           f'{stride}th slice of the other volumes, validate on every slice of the held-out one',
           'score': 'pooled lesion Dice on the held-out volume (bench/transfer.py seg_score, same code for both) of the '
                    "epoch each recipe keeps by its own monitor (seen the same slices: optimistic) and of the last epoch",
           'runs': {k: [] for k in recipes}}
    if prior:
        if prior.get('budget') != budget or set(prior['runs']) != set(recipes) or prior.get('split') != res['split']:
            raise SystemExit('--resume: the saved study was run with other settings; run it afresh without --resume')
        res['runs'] = {k: list(p) for k, p in prior['runs'].items()}
        done = {o['volume'] for p in res['runs'].values() for o in p}
        if any({o['volume'] for o in p} != done for p in res['runs'].values()):
            raise SystemExit('--resume: the saved recipes cover different volumes; run it afresh without --resume')
        vols = [v for v in vols if volume_label(v) not in done]
    for v in vols:
        sp = [list(s) for s in covid_split(n, v, stride)]
        for k, r in recipes.items():
            out = Path(tmp)/f'{k}-{v[0]}'
            t0 = time.time()
            rr = train(r, data, out, size=size, epochs=epochs, split=sp, show_progress=False, overwrite=True)
            s = seg_score(data, r, out, rr)
            res['runs'][k].append(dict(volume=volume_label(v), n_valid=s['n_valid'], lesion_dice=s['lesion_dice'],
                                       ci=s['ci'], best_epoch=s['best_epoch'], s_per_epoch=s['s_per_epoch'],
                                       last_epoch_lesion_dice=last_epoch_dice(rr),
                                       train_time_s=round(time.time()-t0, 1)))
            print(k, res['runs'][k][-1], flush=True)
        res.update(covid_summary(res['runs']))
        save(res)
    return res


def with_base(res, out=OUT):
    "A variant's results with its faithful run paired against the base study's runs (same held-out volumes)."
    base = json.loads(out.read_text()).get('covid', {}).get('runs', {}) if out.exists() else {}
    var = res['runs'].get(PAIRS['covid'][0])
    if not var: return res
    vs = {f'minus_{k}{sfx}': paired_diff(var, base[k], key, won='volumes_better') for k in PAIRS['covid'] if k in base
          for sfx, key in (('', 'lesion_dice'), ('_last_epoch', 'last_epoch_lesion_dice'))}
    return {**res, 'variant_vs_base': vs}


def save_workflow(name, res, out=OUT):
    "Merge one workflow's results into the JSON (other workflows' results are kept)."
    d = json.loads(out.read_text()) if out.exists() else {}
    d = {'benchmark': 'seed fidelity: faithful vs recommended, same data and budget', **d, name: res}
    atomic_write_text(json.dumps(d, indent=2) + '\n', out)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--only', default='chestct,covid')
    ap.add_argument('--epochs', type=int, default=None, help='default: chestct 3, covid 10')
    ap.add_argument('--size', type=int, default=None, help='default: chestct 64, covid 128')
    ap.add_argument('--arch', default='unetpp-efflite0', help="covid network for both runs, or 'native' (each recipe's own)")
    ap.add_argument('--stride', type=int, default=4, help='covid: train on every stride-th slice')
    ap.add_argument('--volumes', default=None, help='covid: comma-separated volume indices 0-7 (default: all)')
    ap.add_argument('--faithful-kw', default=None, help='covid: JSON overrides of the faithful recipe, a variant '
                    'stored under covid_<overrides> and paired with the base runs, e.g. \'{"lr": 0.001}\'')
    ap.add_argument('--runs', default=None, help='covid: comma-separated recipes to run (default both)')
    ap.add_argument('--resume', action='store_true', help='covid: continue a stopped study (same settings) '
                    'from its saved volumes')
    ap.add_argument('--out', default=str(OUT))
    a = ap.parse_args(argv)
    tmp, out = Path(tempfile.mkdtemp()), Path(a.out)
    for w in a.only.split(','):
        if w == 'chestct':
            res = bench_chestct(tmp, a.epochs or 3, a.size or 64)
            save_workflow(w, res, out)
        elif w == 'covid':
            vols = [int(i) for i in a.volumes.split(',')] if a.volumes else None
            kw = json.loads(a.faithful_kw) if a.faithful_kw else None
            key = w + (f"_{json.dumps(kw, sort_keys=True)}" if kw else '')
            runs = tuple(a.runs.split(',')) if a.runs else PAIRS['covid']
            save = lambda r: save_workflow(key, with_base(r, out) if kw else r, out)
            prior = json.loads(out.read_text()).get(key) if a.resume and out.exists() else None
            if a.resume and prior is None: raise SystemExit(f'--resume: no saved {key!r} study in {out}')
            bench_covid(tmp, a.epochs or 10, a.size or 128, a.arch, a.stride, vols, save, runs, kw, prior)
        else: raise SystemExit(f'unknown workflow {w!r}; one of {list(PAIRS)}')
    print(out.read_text())


if __name__ == '__main__':
    main()
