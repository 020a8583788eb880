"""`bench/fidelity.py`'s bookkeeping: the COVID comparison changes only what the data and budget force, holds each
volume out once for both recipes alike, pairs them by volume, and merges workflows into one JSON (training itself is
replaced by a recorder)."""
import json

import numpy as np


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
