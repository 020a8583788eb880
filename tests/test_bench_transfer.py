"""`bench/transfer.py`'s bookkeeping: splits never leak, the leave-one-volume-out study holds each volume out once and
summarises by volume, and the README table shows every run (training itself is replaced by a recorder)."""
import json

import numpy as np


def test_covid_split_keeps_the_held_out_block_apart(bench_script):
    tr, va = bench_script('transfer').covid_split(20, (8, 12), stride=3)
    assert va == [8, 9, 10, 11]
    assert tr == [0, 3, 6, 12, 15, 18] and not set(tr) & set(va)


def test_bootstrap_by_group_brackets_the_estimate(bench_script):
    m = bench_script('transfer')
    x = np.r_[np.zeros(50), np.ones(50)]
    lo, hi = m.bootstrap(np.arange(100), lambda i: x[i].mean())
    assert lo < 0.5 < hi and hi - lo < 0.3
    # one group holding every item: resampling groups cannot move the statistic
    assert m.bootstrap(np.zeros(100), lambda i: x[i].mean()) == [0.5, 0.5]


def test_lovo_holds_each_volume_out_once(monkeypatch, bench_script):
    m = bench_script('transfer')
    calls, saved = [], []
    def fake_run(data, recipe, cfg, out, split, **kw):
        calls.append((split, kw, cfg))
        dice = 0.6 if kw.get('pretrained', True) else 0.4
        return dict(lesion_dice=dice + len(calls) / 1000, ci=[0.1, 0.9], n_valid=len(split[1]), s_per_epoch=1.0,
                    best_epoch=0)
    monkeypatch.setattr(m, 'seg_run', fake_run)
    m.lovo_study('data', 970, m.COVID, '/tmp', 2, tag='augs-none', save=saved.append, augs='none', size=96)
    from medvision.data.seg_layouts import COVID_PNG_BOUNDARIES
    n_vol = len(COVID_PNG_BOUNDARIES) + 1
    assert len(calls) == 2 * n_vol and len(saved) == n_vol   # saved after every volume: a stopped study keeps its part
    held = [tuple(s[1]) for s, kw, _ in calls[::2]]
    assert sorted(i for h in held for i in h) == list(range(970))   # every slice validated exactly once
    for (tr, va), kw, cfg in calls:
        assert not set(tr) & set(va) and kw['augs'] == 'none' and cfg['size'] == 96 and cfg['epochs'] == 2
    res = saved[-1]['lovo_augs-none']
    assert res['settings']['done'] == n_vol and res['settings']['overrides'] == {'augs': 'none'}
    pre = [o['lesion_dice'] for o in res['pretrained']['per_volume']]
    assert res['pretrained']['mean_lesion_dice'] == round(float(np.mean(pre)), 4)
    lo, hi = res['pretrained']['ci']
    assert lo <= res['pretrained']['mean_lesion_dice'] <= hi
    assert res['scratch']['mean_lesion_dice'] < res['pretrained']['mean_lesion_dice']
    pair = res['pretrained_minus_scratch']   # paired by volume: the fake gives pretrained +0.2 - 0.001 on each
    assert pair['volumes_won'] == n_vol and abs(pair['mean'] - 0.199) < 1e-9 and pair['ci'][0] <= pair['mean'] <= pair['ci'][1]
    assert m.variant_vs_base(res, res) == dict(mean=0.0, ci=[0.0, 0.0], n_volumes=n_vol, run='pretrained')
    part = {'pretrained': {'per_volume': res['pretrained']['per_volume'][:3]}}   # a study stopped after 3 volumes
    assert m.variant_vs_base(part, res) is None   # not the same held-out volumes: no pairing
    rows = m.table({'covid': saved[-1]}).splitlines()
    assert len(rows) == 4 and 'held-out volumes' in rows[2] and '"augs": "none"' in rows[3]
    json.dumps(saved[-1])   # the JSON file can hold it


def test_mri_lopo_pools_the_held_out_volumes(monkeypatch, bench_script):
    m = bench_script('transfer')
    seen, saved = [], []
    monkeypatch.setattr(m, 'mri_items', lambda held, name: held)
    def fake_run(df, recipe, cfg, out, **kw):
        seen.append(df)
        pat = df[0]
        return dict(volumes={f'{pat}/FLAIR.nii.gz': ['FLAIR', 'T1'], f'{pat}/T1W.nii.gz': ['T1', 'T1']})
    monkeypatch.setattr(m, 'cls_run', fake_run)
    m.mri_lopo('/tmp', save=saved.append)
    assert seen == [('patient01',), ('patient04',), ('patient19',)] and len(saved) == 3
    r = saved[-1]['lopo']['pretrained']
    assert r['n_volumes'] == 6 and r['volume_accuracy'] == 0.5 and r['ci'] == [0.5, 0.5]   # same 1 of 2 per patient
    assert saved[0]['lopo']['pretrained']['n_volumes'] == 2 and saved[-1]['lopo']['settings']['done'] == 'patient19'


def test_neighbour_split_validates_between_training_slices(monkeypatch, bench_script):
    m = bench_script('transfer')
    calls, saved = [], []
    monkeypatch.setattr(m, 'seg_run', lambda data, recipe, cfg, out, split, **kw: calls.append(split) or
                        dict(lesion_dice=0.8, ci=[0.7, 0.9], n_valid=len(split[1]), s_per_epoch=1.0, best_epoch=0))
    m.neighbour_study('data', 40, dict(m.COVID, stride=4), '/tmp', save=saved.append)
    tr, va = calls[0]
    assert tr == list(range(0, 40, 4)) and va == [2, 10, 18, 26, 34] and not set(tr) & set(va)
    assert all(min(abs(v - t) for t in tr) == 2 for v in va)   # each validation slice sits 2 slices from a training one
    rows = m.table({'covid': saved[-1]}).splitlines()
    assert len(rows) == 4 and 'neighbouring slices' in rows[2]
