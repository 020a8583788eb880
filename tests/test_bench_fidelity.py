"""`bench/fidelity.py`'s bookkeeping: the COVID comparison changes only what the data and budget force, holds each
volume out once for both recipes alike, pairs them by volume, and merges workflows into one JSON (training itself is
replaced by a recorder)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd


def test_covid_recipe_changes_only_the_network_and_sources(bench_script):
    m = bench_script('fidelity')
    from medvision.recipes.core import get_recipe
    for name in m.PAIRS['covid']:
        reg, r = get_recipe(name), m.covid_recipe(name, 'unetpp-efflite0')
        assert r.arch == 'unetpp-efflite0' and 'sources' not in r.extra
        for k in ('loss', 'lr', 'wd', 'bs', 'schedule', 'augs', 'sampler', 'monitor', 'split', 'size', 'epochs'):
            assert getattr(r, k) == getattr(reg, k), (name, k)
        kept = {k: v for k, v in reg.extra.items() if k not in ('sources', 'n_overlays')}
        assert kept.items() <= r.extra.items()
        assert m.covid_recipe(name, 'native').arch == reg.arch
    seed = m.covid_recipe('seed004-unetpp-b3', 'native')
    assert seed.loss['gamma'] == 2.5 and seed.extra['stats'] == 'all' and seed.extra['lesion_rule'] == 'seed004'


def test_covid_lovo_pairs_both_recipes_by_volume(monkeypatch, bench_script, tmp_path):
    m = bench_script('fidelity')
    calls, saved = [], []
    def fake_train(r, data, out, **kw):
        calls.append((r.name, kw))
        return {'history': [{'fg_dice': 0.1}, {'fg_dice': 0.3 if r.name.startswith('seed') else 0.2}]}
    def fake_score(data, r, out, res):
        dice = (0.5 if r.name.startswith('seed') else 0.6) + len(calls) / 1000
        n_valid = len(calls[-1][1]['split'][1])
        return dict(lesion_dice=dice, ci=[0.1, 0.9], n_valid=n_valid, best_epoch=0, s_per_epoch=1.)
    monkeypatch.setattr(m, 'train', fake_train)
    monkeypatch.setattr(m, 'seg_score', fake_score)
    monkeypatch.setattr(m, 'shared_data', lambda name: tmp_path)
    res = m.bench_covid(tmp_path, epochs=2, size=96, save=saved.append)
    from medvision.data.seg_layouts import COVID_PNG_BOUNDARIES
    n_vol = len(COVID_PNG_BOUNDARIES) + 1
    assert len(calls) == 2 * n_vol and len(saved) == n_vol   # saved after every volume: a stopped run keeps its part
    assert [c[0] for c in calls] == list(m.PAIRS['covid']) * n_vol
    for (_, a), (_, b) in zip(calls[::2], calls[1::2]):
        assert a == b and a['size'] == 96 and a['epochs'] == 2   # both recipes: same slices, size, epochs
        tr, va = a['split']
        assert not set(tr) & set(va)
    held = sorted(i for _, kw in calls[::2] for i in kw['split'][1])
    assert held == list(range(970))   # every slice validated exactly once
    per = res['runs']['seed004-unetpp-b3']
    mean = round(float(np.mean([o['lesion_dice'] for o in per])), 4)
    assert res['summary']['seed004-unetpp-b3']['mean_lesion_dice'] == mean
    d = res['faithful_minus_recommended']   # the fake: faithful 0.5 + k/1000, recommended 0.6 + (k+1)/1000
    assert d['volumes_faithful_better'] == 0 and d['n_volumes'] == n_vol
    assert abs(d['mean'] + 0.101) < 1e-9 and d['ci'][0] <= d['mean'] <= d['ci'][1]
    last = res['faithful_minus_recommended_last_epoch']   # the last epoch's Dice, not the kept epoch's
    assert last['mean'] == 0.1 and last['volumes_faithful_better'] == n_vol
    assert res['summary']['covid-unetpp-b3']['mean_last_epoch_lesion_dice'] == 0.2
    one = m.bench_covid(tmp_path, epochs=1, size=64, volumes=[7])
    assert [o['volume'] for o in one['runs']['covid-unetpp-b3']] == ['789-969']


def test_workflows_merge_into_one_json(bench_script, tmp_path):
    m = bench_script('fidelity')
    out = tmp_path/'fidelity.json'
    m.save_workflow('chestct', {'runs': {'a': 1}}, out)
    m.save_workflow('covid', {'runs': {'b': 2}}, out)
    m.save_workflow('covid', {'runs': {'b': 3}}, out)
    d = json.loads(out.read_text())
    assert d['chestct'] == {'runs': {'a': 1}} and d['covid'] == {'runs': {'b': 3}} and 'benchmark' in d


def test_a_faithful_variant_pairs_with_the_base_runs(monkeypatch, bench_script, tmp_path):
    m = bench_script('fidelity')
    seen = []
    def fake_train(r, data, out, **kw):
        seen.append(r)
        return {'history': [{'fg_dice': 0.5}]}
    monkeypatch.setattr(m, 'train', fake_train)
    monkeypatch.setattr(m, 'seg_score', lambda data, r, out, res: dict(lesion_dice=0.7, ci=[0.6, 0.8], n_valid=3,
                                                                        best_epoch=0, s_per_epoch=1.))
    monkeypatch.setattr(m, 'shared_data', lambda name: tmp_path)
    faithful = m.PAIRS['covid'][0]
    res = m.bench_covid(tmp_path, epochs=1, volumes=[0, 7], runs=(faithful,), faithful_kw={'lr': 1e-3})
    assert [r.name for r in seen] == [faithful] * 2 and all(r.lr == 1e-3 for r in seen)
    assert set(res['runs']) == {faithful} and 'faithful_minus_recommended' not in res
    assert res['budget']['faithful_overrides'] == {'lr': 1e-3}
    out = tmp_path/'f.json'
    base = lambda d: [dict(volume=v, lesion_dice=d, last_epoch_lesion_dice=d) for v in ('0-158', '789-969')]
    m.save_workflow('covid', {'runs': {faithful: base(0.6), m.PAIRS['covid'][1]: base(0.8)}}, out)
    vs = m.with_base(res, out)['variant_vs_base']
    assert vs[f'minus_{faithful}']['mean'] == 0.1 and vs[f'minus_{faithful}']['volumes_better'] == 2
    assert vs[f"minus_{m.PAIRS['covid'][1]}"]['mean'] == -0.1
    assert vs[f'minus_{faithful}_last_epoch']['mean'] == -0.1   # last epoch 0.5 against the base's 0.6
    short = {'runs': {faithful: res['runs'][faithful][:1]}}   # not the same volumes: no pairing
    assert m.with_base(short, out)['variant_vs_base'][f'minus_{faithful}'] is None


def test_a_stopped_study_resumes_from_its_saved_volumes(monkeypatch, bench_script, tmp_path):
    m = bench_script('fidelity')
    trained = []
    def fake_train(r, data, out, **kw):
        trained.append(kw['split'][1][0])   # the first held-out slice names the volume
        return {'history': [{'fg_dice': 0.5}]}
    monkeypatch.setattr(m, 'train', fake_train)
    monkeypatch.setattr(m, 'seg_score', lambda data, r, out, res: dict(lesion_dice=0.7, ci=[0.6, 0.8], n_valid=3,
                                                                        best_epoch=0, s_per_epoch=1.))
    monkeypatch.setattr(m, 'shared_data', lambda name: tmp_path)
    faithful, kw = (m.PAIRS['covid'][0],), {'lr': 1e-3}
    stopped = json.loads(json.dumps(m.bench_covid(tmp_path, volumes=[0], runs=faithful, faithful_kw=kw)))
    trained.clear()
    res = m.bench_covid(tmp_path, volumes=[0, 7], runs=faithful, faithful_kw=kw, prior=stopped)
    assert trained == [789]   # volume 0 is not run again
    assert [o['volume'] for o in res['runs'][faithful[0]]] == ['0-158', '789-969']
    assert res['summary'][faithful[0]]['n_volumes'] == 2
    import pytest
    with pytest.raises(SystemExit, match='other settings'):   # another budget is another study
        m.bench_covid(tmp_path, epochs=3, volumes=[0, 7], runs=faithful, faithful_kw=kw, prior=stopped)
    with pytest.raises(SystemExit, match='other settings'):
        m.bench_covid(tmp_path, volumes=[0, 7], runs=faithful, faithful_kw={'lr': 2e-3}, prior=stopped)


def test_a_variant_merges_extra_key_by_key(bench_script):
    m = bench_script('fidelity')
    r = m.covid_recipe('seed004-unetpp-b3', 'unetpp-efflite0')
    v = m.variant(r, {'extra': {'lesion_rule': None, 'lesion_weight': 2.0}, 'wd': 1e-2})
    assert 'lesion_rule' not in v.extra and v.extra['lesion_weight'] == 2.0 and v.wd == 1e-2
    assert {k: x for k, x in v.extra.items() if k not in ('lesion_rule', 'lesion_weight')} == \
           {k: x for k, x in r.extra.items() if k not in ('lesion_rule', 'lesion_weight')}
    assert r.extra['lesion_rule'] == 'seed004'   # the recipe itself is untouched


def test_mri_lopo_holds_each_patient_out_and_pairs_by_volume(monkeypatch, bench_script, tmp_path):
    m = bench_script('fidelity')
    folds, saved, lrs = [], [], []
    def fake_fold(df, recipe, out, size, epochs, bs):
        name = getattr(recipe, 'name', recipe)
        lrs.append(recipe.lr)
        folds.append((name, df, size, epochs, bs))
        va = df[df.split == 'valid']
        vols = {}
        for i, (vol, g) in enumerate(va.groupby('volume', sort=True)):
            good = name.startswith('seed') and i % 2 == 0   # the fake: faithful right on every other volume
            conf = np.zeros((3, 3), int)
            conf[0, 0 if good else 1] = len(g)
            vols[f"{g.group.iloc[0]}/{Path(str(vol)).name}"] = dict(truth='a', vote='a' if good else 'b', slice_confusion=conf.tolist())
        return dict(classes=['a', 'b', 'c'], volumes=vols, best_epoch=0, epochs_run=epochs, train_time_s=0.)
    monkeypatch.setattr(m, 'mri_fold', fake_fold)
    df = pd.DataFrame(dict(path=[f'{p}/v{j}/s{k}' for p in ('brats', 'patient01', 'patient04', 'patient19')
                                 for j in range(2) for k in range(3)],
                           label='T1', split='train'))
    df['volume'] = df.path.str.rsplit('/', n=1).str[0]
    df['group'] = df.path.str.split('/').str[0]
    def fake_items(valid, name):
        d = df.copy()
        d['split'] = np.where(d.group.isin(valid), 'valid', 'train')
        return d
    monkeypatch.setattr(m, 'mri_items', fake_items)
    monkeypatch.setattr(m, 'shared_data', lambda name: tmp_path)
    res = m.bench_mri(tmp_path, epochs=2, size=64, save=saved.append)
    assert [f[0] for f in folds] == list(m.PAIRS['mri']) * 3 and len(saved) == 3
    held = [sorted(f[1][f[1].split == 'valid'].group.unique()) for f in folds[::2]]
    assert held == [['patient01'], ['patient04'], ['patient19']]            # each patient held out once
    assert all(f[2:] == (64, 2, 32) for f in folds)                          # same budget for both recipes
    assert all('brats' not in set(f[1][f[1].split == 'valid'].group) for f in folds)   # mri-brats always trains
    s = res['summary']
    assert s['mri-cnn']['slice_accuracy'] == 0 and s['mri-cnn']['volume_vote_accuracy'] == 0
    assert s['seed002-cnn']['slice_accuracy'] == 0.5 and s['seed002-cnn']['n_volumes'] == 6
    lo, hi = s['seed002-cnn']['slice_accuracy_ci']
    assert lo <= 0.5 <= hi
    d = res['faithful_minus_recommended']['vote_correct']
    assert d['mean'] == 0.5 and d['n_volumes'] == 6 and d['ci'][0] <= 0.5 <= d['ci'][1]
    assert d['volumes_faithful_better'] == 3
    assert s['seed002-cnn']['volume_vote_ci'] == m.wilson(3, 6)
    lo, hi = m.wilson(8, 8)
    assert 0.6 < lo < 0.7 and hi == 1.0   # all right: the interval does not collapse to [1, 1]
    (tmp_path/'f.json').write_text(json.dumps({'mri': res}))   # a variant of the faithful recipe, paired with it
    var = m.bench_mri(tmp_path, epochs=2, size=64, runs=('seed002-cnn',), faithful_kw={'lr': 0.01})
    assert lrs[-3:] == [0.01] * 3 and lrs[0] == 1e-3   # the variant's override reached training
    assert folds[-1][0] == 'seed002-cnn' and 'mri-cnn' not in var['runs'] and 'faithful_minus_recommended' not in var
    vb = m.with_base(var, tmp_path/'f.json', 'mri')['variant_vs_base']
    assert vb['minus_seed002-cnn']['vote_correct']['mean'] == 0 and vb['minus_mri-cnn']['vote_correct']['mean'] == 0.5


def test_chestct_f1_ci_is_medvision_bootstrap(bench_script):
    m = bench_script('fidelity')
    from medvision.bootstrap import class_metrics
    conf = np.array([[8, 2, 0], [1, 6, 3], [0, 0, 10]])
    f1, ci, n = m.f1_ci(conf)
    assert n == 30 and abs(f1 - float(class_metrics(conf)['macro_f1'])) < 1e-12
    assert ci[0] < f1 < ci[1] and ci == m.f1_ci(conf)[1]   # seeded


def test_chestct_trains_each_recipe_once_per_seed(monkeypatch, bench_script, tmp_path):
    m = bench_script('fidelity')
    calls = []
    def fake_train(name, data, out, **kw):
        calls.append((name, kw['seed'], kw['size'], kw['epochs']))
        right = 8 if name.startswith('seed') else 6 + kw['seed']   # faithful: 8 of 10 right; recommended 6, then 7
        conf = [[right // 2, 5 - right // 2], [5 - (right - right // 2), right - right // 2]]
        return {'split': 'official', 'final': {'confusion': conf, 'accuracy': right / 10}, 'epochs_run': kw['epochs']}
    monkeypatch.setattr(m, 'train', fake_train)
    monkeypatch.setattr(m, 'shared_data', lambda name: tmp_path)
    res = m.bench_chestct(tmp_path, epochs=2, size=32, seeds=(0, 1))
    assert calls == [(n, s, 32, 2) for s in (0, 1) for n in m.PAIRS['chestct']]   # same budget, every seed
    faithful, rec = m.PAIRS['chestct']
    assert res['runs'][rec]['seed'] == 0 and res['runs'][rec]['accuracy'] == 0.6   # the first seed's run
    by_seed = res['seed_summary'][rec]['macro_f1_by_seed']
    assert list(by_seed) == ['0', '1'] and by_seed['0'] < by_seed['1']
    d = res['faithful_minus_recommended_by_seed']
    assert d['n_seeds'] == 2 and d['values'][0] > d['values'][1] > 0
    assert 'seed_runs' not in m.bench_chestct(tmp_path, epochs=1, size=32)   # one seed: no spread to report
