"""Faithful seed recipe vs medvision's recommended recipe, same data, same split, same reduced budget (issue 12).

- `chestct` (seed 003): `seed003-cnn` vs `chestct-cnn` on real chest CT (../shared/data/chest-ct; else a synthetic
  twin), both at the same size / epochs / batch, official train/valid folders, scored on the validation folder: macro
  F1 with a 95 % bootstrap CI over validation images (medvision.bootstrap, 1000 resamples of the per-image
  (truth, prediction) pairs, rebuilt from the confusion matrix the JSON keeps).
- `mri` (seed 002): `seed002-cnn` vs `mri-cnn` on the real brain MRI (../shared/data/mri-brats + mri-ljubljana),
  leaving one Ljubljana patient out (mri-brats always trains): both at the same size / epochs / batch, each with its own
  network, normalisation, augmentations, optimiser, schedule, monitor and patience. Score: slice macro F1 and accuracy
  pooled over every held-out volume (95 % CI by volume, medvision.bootstrap) and volume accuracy by slice vote;
  faithful − recommended paired by volume. Eight held-out volumes: the intervals are wide.
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
Usage: python bench/fidelity.py [--only chestct,covid,mri] [--epochs N] [--size S]   → bench/results/fidelity.json
       python bench/fidelity.py --only chestct --epochs 10 --size 128 --seeds 0,1,2   (each recipe once per seed)
       python bench/fidelity.py --only covid --runs seed004-unetpp-b3 --faithful-kw '{"lr": 0.001}'   (a variant of
         the faithful recipe, stored under covid_{"lr": 0.001} and paired by volume with the base runs; `extra`
         is merged, e.g. '{"extra": {"lesion_rule": null}}' drops one key)
       python bench/fidelity.py --only mri --runs seed002-cnn --faithful-kw '{"arch": "mri-cnn"}'   (the same for MRI,
         under mri_{"arch": "mri-cnn"})
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
from medvision.bootstrap import unit_codes, unit_confusions, bootstrap_ci, class_metrics
from transfer import (covid_volumes, volume_label, covid_split, seg_score, _ci, paired_diff,   # one split rule,
    mri_items, valid_preds, volume_name)   # one scorer, one pairing, one MRI item table and one way to predict it

OUT = Path(__file__).parent/'results'/'fidelity.json'
PAIRS = {'chestct': ('seed003-cnn', 'chestct-cnn'), 'covid': ('seed004-unetpp-b3', 'covid-unetpp-b3'),
         'mri': ('seed002-cnn', 'mri-cnn')}
MRI_PATIENTS = ('patient01', 'patient04', 'patient19')   # the Ljubljana patients, each held out once


def variant(r, kw):
    "Recipe `r` with fields `kw` replaced; `extra` is merged key by key (a key set to None is removed)."
    if 'extra' in kw:
        ex = {**(r.extra or {}), **kw['extra']}
        kw = {**kw, 'extra': {k: v for k, v in ex.items() if v is not None}}
    return r.replace(**kw)


def f1_ci(conf, n_boot=1000, seed=0):
    """Macro F1 and its 95 % bootstrap CI over the images behind confusion matrix `conf` (rows = truth), by
    `medvision.bootstrap` (each image one unit; macro F1 over the classes present, as `medvision evaluate` reports it)."""
    conf = np.asarray(conf, dtype=np.int64)
    t = np.repeat(np.arange(len(conf)), conf.sum(1))
    p = np.concatenate([np.repeat(np.arange(len(conf)), r) for r in conf])
    per_image = unit_confusions(np.arange(len(t)), t, p, len(conf))
    ci = bootstrap_ci(per_image, class_metrics, n_boot, seed)['macro_f1']
    return float(class_metrics(conf)['macro_f1']), [ci['lo'], ci['hi']], int(len(t))


def bench_chestct(tmp, epochs=3, size=64, bs=32, seeds=(0,)):
    """Seed 003's faithful CNN against `chestct-cnn`, same overrides for both; with several `seeds` each recipe trains
    once per seed (the recipes' own seed is 0), so the spread between training runs is measured, not assumed."""
    data = shared_data('chest-ct')
    if data is None:
        from medvision.synth import synth
        data, desc = synth('chestct', tmp/'ct', n=12, size=64), 'synthetic chestct twin'
    else: desc = 'real: ../shared/data/chest-ct'
    budget = dict(size=size, epochs=epochs, bs=bs, note='same overrides for both; official train/valid folders')
    res = {'benchmark': 'seed 003, chest CT', 'data': desc, 'budget': budget, 'runs': {}}
    per_seed = {name: [] for name in PAIRS['chestct']}
    for seed in seeds:
        for name in PAIRS['chestct']:
            t0 = time.time()
            r = train(name, data, tmp/f'{name}-{seed}', show_progress=False, size=size, epochs=epochs, bs=bs, seed=seed)
            f1, ci, n = f1_ci(r['final']['confusion'])
            run = {'split': r['split'], 'seed': seed, 'n_valid': n, 'macro_f1': round(f1, 4),
                   'macro_f1_ci95': [round(c, 4) for c in ci], 'accuracy': round(r['final']['accuracy'], 4),
                   'confusion': np.asarray(r['final']['confusion']).tolist(),
                   'epochs_run': r['epochs_run'], 'train_time_s': round(time.time()-t0, 1)}
            per_seed[name].append(run)
            res['runs'].setdefault(name, run)   # the first seed's run (the recipes' own seed 0 by default)
    if len(seeds) > 1: res.update(seed_spread(per_seed))
    return res


def seed_spread(per_seed):
    "Macro F1 of every training seed, its mean / SD / range per recipe, and faithful − recommended paired by seed."
    f1 = {k: np.asarray([o['macro_f1'] for o in v]) for k, v in per_seed.items()}
    summ = {k: dict(macro_f1_by_seed={str(o['seed']): o['macro_f1'] for o in per_seed[k]},
                    mean=round(float(v.mean()), 4), sd=round(float(v.std(ddof=1)), 4),
                    range=[round(float(v.min()), 4), round(float(v.max()), 4)]) for k, v in f1.items()}
    d = f1[PAIRS['chestct'][0]] - f1[PAIRS['chestct'][1]]
    return dict(seed_runs=per_seed, seed_summary=summ,
                faithful_minus_recommended_by_seed=dict(values=[round(float(x), 4) for x in d],
                                                        mean=round(float(d.mean()), 4), n_seeds=len(d)))


def mri_fold(df, recipe, out, size, epochs, bs):
    "Train `recipe` (a name or `Recipe`) on `df`'s train rows; per held-out volume its slices' confusion and vote."
    from medvision.data.mri import vote_volumes
    t0 = time.time()
    r = train(recipe, df, out, size=size, epochs=epochs, bs=bs, show_progress=False, overwrite=True)
    cp, va = valid_preds(df, out)
    codes, names = unit_codes(va['volume'])
    confs = dict(zip(names, unit_confusions(codes, cp.targs, cp.preds, len(cp.classes), len(names))))
    vols = {volume_name(o['path']): dict(truth=str(o['label']), vote=str(o['class']),
                                         slice_confusion=confs[str(o['path'])].tolist())
            for o in vote_volumes(va, cp.probs, cp.classes).to_dict('records')}
    return dict(classes=list(cp.classes), volumes=vols, best_epoch=r['best_epoch'], epochs_run=r['epochs_run'],
                train_time_s=round(time.time() - t0, 1))

def mri_volumes(folds):
    "One row per held-out volume of a recipe's folds: `volume`, `vote_correct` (0/1), `slice_accuracy`; sorted."
    vols = {v: o for f in folds for v, o in f['volumes'].items()}
    return [dict(volume=v, vote_correct=float(o['truth'] == o['vote']),
                 slice_accuracy=float(class_metrics(np.asarray(o['slice_confusion']))['accuracy']),
                 slice_confusion=o['slice_confusion']) for v, o in sorted(vols.items())]


def mri_diff(a, b, won='volumes_faithful_better'):
    "`a` − `b` per held-out volume (rows of `mri_volumes`): slice accuracy and vote correctness, CI by volume."
    return {key: paired_diff(a, b, key, won=won) for key in ('slice_accuracy', 'vote_correct')}


def mri_summary(runs):
    "Per recipe over all held-out volumes: slice macro F1 and accuracy (CI by volume), vote accuracy; paired diffs."
    out, rows = {}, {k: mri_volumes(folds) for k, folds in runs.items()}
    for k, vols in rows.items():
        confs = np.asarray([o['slice_confusion'] for o in vols])
        ci = bootstrap_ci(confs, class_metrics, unit='volume')
        m = class_metrics(confs.sum(0))
        ok = np.asarray([o['vote_correct'] for o in vols])
        out[k] = dict(slice_macro_f1=round(float(m['macro_f1']), 4),
                      slice_macro_f1_ci=[round(ci['macro_f1'][b], 4) for b in ('lo', 'hi')],
                      slice_accuracy=round(float(m['accuracy']), 4),
                      slice_accuracy_ci=[round(ci['accuracy'][b], 4) for b in ('lo', 'hi')],
                      volume_vote_accuracy=round(float(ok.mean()), 4), volume_vote_ci=wilson(ok.sum(), len(ok)),
                      n_volumes=len(vols), n_slices=int(confs.sum()))
    res = dict(summary=out)
    if all(rows.get(k) for k in PAIRS['mri']):
        res['faithful_minus_recommended'] = mri_diff(*(rows[k] for k in PAIRS['mri']))
    return res


def wilson(k, n, z=1.96):
    "Wilson score 95 % interval of the proportion `k / n` (a bootstrap collapses to [1, 1] when all are right)."
    p, d = k / n, 1 + z*z/n
    c, h = (p + z*z/(2*n)) / d, z * np.sqrt(p*(1 - p)/n + z*z/(4*n*n)) / d
    return [round(float(c - h), 4), round(float(c + h), 4)]


def bench_mri(tmp, epochs=15, size=128, bs=32, save=lambda res: None, patients=MRI_PATIENTS, runs=PAIRS['mri'],
              faithful_kw=None):
    """Seed 002's faithful CNN against `mri-cnn`: leave one Ljubljana patient out, same slices and budget for both;
    `faithful_kw` changes the faithful recipe (a variant), `runs` picks which recipes run."""
    if shared_data('mri-brats') is None or shared_data('mri-ljubljana') is None:
        raise SystemExit('mri: ../shared/data/mri-brats or mri-ljubljana is absent; nothing to compare')
    recipes = {k: get_recipe(k) for k in runs}
    if faithful_kw: recipes[PAIRS['mri'][0]] = variant(recipes[PAIRS['mri'][0]], faithful_kw)
    res = {'benchmark': 'seed 002, brain MRI sequence (T1/T2/FLAIR)',
           'data': 'real: ../shared/data/mri-brats (3 cases) + mri-ljubljana (3 patients)',
           'budget': dict(size=size, epochs=epochs, bs=bs, faithful_overrides=faithful_kw or {},
                          note='same overrides for both; each recipe keeps its own network, normalisation, '
                               'augmentations, optimiser, schedule, monitor and patience'),
           'split': 'leave one Ljubljana patient out: train on mri-brats + the other two patients, validate on every '
                    'slice of the held-out patient\'s volumes',
           'score': 'slice macro F1 / accuracy pooled over all held-out volumes (95 % CI: bootstrap by volume), '
                    'volume accuracy by slice vote (95 % Wilson interval); faithful - recommended paired by volume '
                    '(bootstrap by volume)',
           'runs': {k: [] for k in recipes}}
    for pat in patients:
        df = mri_items((pat,), f'LOPO: valid {pat}')
        for k, r in recipes.items():
            f = dict(patient=pat, **mri_fold(df, r, Path(tmp)/f'{k}-{pat}', size, epochs, bs))
            res['runs'][k].append(f)
            print(k, pat, {v: (o['truth'], o['vote']) for v, o in f['volumes'].items()}, flush=True)
        res.update(mri_summary(res['runs']))
        save(res)
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


def vs_base(workflow, var, base):
    "A variant's faithful run minus one base run, paired by held-out volume: `{suffix: difference}`."
    if workflow == 'mri': return {'': mri_diff(mri_volumes(var), mri_volumes(base), 'volumes_better')}
    return {sfx: paired_diff(var, base, key, won='volumes_better')
            for sfx, key in (('', 'lesion_dice'), ('_last_epoch', 'last_epoch_lesion_dice'))}


def with_base(res, out=OUT, workflow='covid'):
    "A variant's results with its faithful run paired against the base study's runs of both recipes (same volumes)."
    base = json.loads(out.read_text()).get(workflow, {}).get('runs', {}) if out.exists() else {}
    var = res['runs'].get(PAIRS[workflow][0])
    if not var: return res
    return {**res, 'variant_vs_base': {f'minus_{k}{sfx}': d for k in PAIRS[workflow] if k in base
                                       for sfx, d in vs_base(workflow, var, base[k]).items()}}


def save_workflow(name, res, out=OUT):
    "Merge one workflow's results into the JSON (other workflows' results are kept)."
    d = json.loads(out.read_text()) if out.exists() else {}
    d = {'benchmark': 'seed fidelity: faithful vs recommended, same data and budget', **d, name: res}
    atomic_write_text(json.dumps(d, indent=2) + '\n', out)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--only', default='chestct,covid')
    ap.add_argument('--epochs', type=int, default=None, help='default: chestct 3, covid 10, mri 15')
    ap.add_argument('--size', type=int, default=None, help='default: chestct 64, covid 128, mri 128')
    ap.add_argument('--arch', default='unetpp-efflite0', help="covid network for both runs, or 'native' (each recipe's own)")
    ap.add_argument('--stride', type=int, default=4, help='covid: train on every stride-th slice')
    ap.add_argument('--volumes', default=None, help='covid: comma-separated volume indices 0-7 (default: all)')
    ap.add_argument('--faithful-kw', default=None, help='covid, mri: JSON overrides of the faithful recipe, a variant '
                    'stored under covid_<overrides> and paired with the base runs, e.g. \'{"lr": 0.001}\'')
    ap.add_argument('--runs', default=None, help='covid, mri: comma-separated recipes to run (default both)')
    ap.add_argument('--resume', action='store_true', help='covid: continue a stopped study (same settings) '
                    'from its saved volumes')
    ap.add_argument('--seeds', default='0', help='chestct: comma-separated training seeds, each recipe once per seed')
    ap.add_argument('--out', default=str(OUT))
    a = ap.parse_args(argv)
    tmp, out = Path(tempfile.mkdtemp()), Path(a.out)
    for w in a.only.split(','):
        if w == 'chestct':
            res = bench_chestct(tmp, a.epochs or 3, a.size or 64, seeds=[int(i) for i in a.seeds.split(',')])
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
        elif w == 'mri':
            kw = json.loads(a.faithful_kw) if a.faithful_kw else None
            key = w + (f"_{json.dumps(kw, sort_keys=True)}" if kw else '')
            runs = tuple(a.runs.split(',')) if a.runs else PAIRS['mri']
            bench_mri(tmp, a.epochs or 15, a.size or 128, runs=runs, faithful_kw=kw,
                      save=lambda r: save_workflow(key, with_base(r, out, 'mri') if kw else r, out))
        else: raise SystemExit(f'unknown workflow {w!r}; one of {list(PAIRS)}')
    print(out.read_text())


if __name__ == '__main__':
    main()
