"Tests for medvision.tune: search spaces, storages, shared studies across processes, pruning, reports, train_best."
import json, os, subprocess, sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from medvision.core import MedvisionError
from medvision.recipes.core import load_model_dir
from medvision.synth import synth
from medvision.recipes.core import get_recipe
from medvision.tune import tune, train_best, check_space, check_storage

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(epochs=1, size=32, bs=8)  # one epoch of the tiny MRI CNN at 32 px: about a second per trial


@pytest.fixture(scope='module')
def mri(tmp_path_factory):
    return synth('mri-folders', tmp_path_factory.mktemp('mri'), n=8, size=32)


def run_tune(*args, **kw):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT), 'MPLBACKEND': 'Agg'}
    return subprocess.Popen([sys.executable, '-m', 'medvision.tune', *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def trial_dirs(out): return sorted(p.name for p in Path(out).glob('trial_*')) if Path(out).exists() else []


# ---------------------------------------------------------------- checks before any training
@pytest.mark.parametrize('space,msg', [
    ({'lr': ('exp', 1e-5, 1e-2)}, "unknown kind 'exp'"),
    ({'lr': ('log', 1e-2, 1e-5)}, 'must be below'),
    ({'lr': ('log', 0.0, 1e-2)}, 'positive lower bound'),
    ({'dropout': ('float', 0.5, 0.5)}, 'must be below'),
    ({'dropuot': ('float', 0.0, 0.5)}, "did you mean 'dropout'"),
    ({'name': ('cat', ['a', 'b'])}, 'not a tunable recipe field'),
    ({'dropout': ('float', 0.0, 1.0)}, 'value 1.0 is not valid'),
    ({'bs': ('int', 0, 8)}, '`bs` must be an integer >= 1'),
    ({'bs': ('cat', [])}, 'non-empty list'),
    ({'arch': ('cat', ['mri-cnn', 'no-such-net'])}, "unknown model 'no-such-net'"),
    ({'lr': 0.01}, 'expected a spec'),
    ({'lr': None, 'dropout': None}, 'search space is empty'),
])
def test_bad_space_fails_before_training(mri, tmp_path, space, msg):
    with pytest.raises(MedvisionError, match=msg.replace('(', r'\(').replace('[', r'\[')):
        tune('mri-tiny', mri, n_trials=1, space=space, out=tmp_path/'out', epochs=1, size=32)
    assert trial_dirs(tmp_path/'out') == []


def test_space_merging_and_loss_keys():
    r = get_recipe('covid-tiny')
    sp = check_space(r, {'loss.dice': ('float', 0.0, 1.0), 'bs': [4, 8], 'dropout': None})
    assert sp == {'lr': ('log', 1e-5, 1e-2), 'loss.dice': ('float', 0.0, 1.0), 'bs': ('cat', [4, 8])}
    with pytest.raises(MedvisionError, match='does not take it'):
        check_space(r, {'loss.dcie': ('float', 0.0, 1.0)})
    r2 = r.replace(extra={**r.extra, 'tune_space': {'wd': ('log', 1e-4, 1e-1)}})  # a recipe extends the default
    assert list(check_space(r2)) == ['lr', 'dropout', 'wd']
    with pytest.raises(MedvisionError, match='also fixed'):
        check_space(r, {'bs': ('cat', [4, 8])}, fixed=['bs'])


@pytest.mark.parametrize('storage,msg', [
    ('nonsense://host/db', "unknown database 'nonsense'"),
    ('://nowhere', 'not a valid storage URL'),
    ('postgresql://me@host:port/db', 'not a valid storage URL'),
    ('sqlite://', 'cannot be shared'),
    ('my study', 'neither a storage URL'),
    ('{tmp}/missing/study.db', 'does not exist'),
    ('sqlite:///{tmp}/missing/study.db', 'does not exist'),
])
def test_bad_storage_fails_before_training(mri, tmp_path, storage, msg):
    with pytest.raises(MedvisionError, match=msg):
        tune('mri-tiny', mri, n_trials=1, storage=storage.format(tmp=tmp_path), out=tmp_path/'out', **FAST)
    assert trial_dirs(tmp_path/'out') == []


def test_unreachable_server_names_cause_and_hides_password():
    with pytest.raises(MedvisionError) as e: check_storage('postgresql://me:secret@127.0.0.1:1/db')
    assert 'secret' not in str(e.value) and '***' in str(e.value)
    assert 'driver is not installed' in str(e.value) or 'cannot open the study storage' in str(e.value)


def test_cli_reports_bad_storage_in_one_line(mri, tmp_path):
    from medvision.cli import main
    assert main(['tune', 'mri-tiny', '--data', str(mri), '--storage', 'nonsense://x/y', '--out', str(tmp_path/'o')]) == 1
    assert trial_dirs(tmp_path/'o') == []


# ---------------------------------------------------------------- studies
def test_two_processes_share_one_sqlite_study(mri, tmp_path):
    "Two `python -m medvision.tune` workers on one fresh SQLite file: every trial of both lands in one study."
    db, out = tmp_path/'study.db', tmp_path/'tune'
    args = ['mri-tiny', '--data', mri, '--trials', 2, '--storage', db, '--study', 'shared', '--out', out,
            '--epochs', 1, '--size', 32, '--bs', 8]
    procs = [run_tune(*args) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p,(o,e) in zip(procs, outs): assert p.returncode == 0, e[-3000:]
    study = optuna.load_study(study_name='shared', storage=f"sqlite:///{db}")
    nums = [t.number for t in study.trials]
    assert len(nums) == 4 and sorted(nums) == [0, 1, 2, 3]  # sum of both workers, no duplicate, none lost
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    assert len({t.user_attrs['worker'] for t in study.trials}) == 2  # both workers ran trials
    assert trial_dirs(out) == ['trial_000', 'trial_001', 'trial_002', 'trial_003']
    best = json.loads((out/'best.json').read_text())
    assert best['study_name'] == 'shared' and best['best_trial'] is not None
    assert sum(best['trials'].values()) == 4
    tbl = pd.read_csv(out/'trials.csv')
    assert sorted(tbl['number']) == [0, 1, 2, 3] and {'params_lr', 'params_dropout', 'state'} <= set(tbl.columns)
    # a re-run resumes the study: n_trials more trials, numbered on
    s = tune('mri-tiny', mri, n_trials=1, storage=db, study_name='shared', out=out, plots=False, verbose=False, **FAST)
    assert sorted(t.number for t in s.trials) == [0, 1, 2, 3, 4]
    # the best trial's recipe trains into a model folder that loads in one process
    res = train_best(out, 'mri-tiny', mri, tmp_path/'best_model', **FAST)
    recipe, learn = load_model_dir(tmp_path/'best_model')
    assert recipe.lr == pytest.approx(s.best_params['lr']) and recipe.dropout == pytest.approx(s.best_params['dropout'])
    assert res['epochs_run'] == 1


def test_pruned_trial_is_recorded_as_pruned(mri, tmp_path):
    "ThresholdPruner(lower=2) prunes every trial of a recipe monitoring macro F1 (<= 1) after its first epoch."
    db = tmp_path/'p.db'
    tune('mri-tiny', mri, n_trials=1, storage=db, out=tmp_path/'o', prune=optuna.pruners.ThresholdPruner(lower=2.0),
         plots=False, verbose=False, epochs=3, size=32, bs=8)
    t, = optuna.load_study(study_name='medvision-mri-tiny', storage=f"sqlite:///{db}").trials
    assert t.state == TrialState.PRUNED
    assert list(t.intermediate_values) == [0] and t.user_attrs['epochs_run'] == 1  # stopped after epoch 0 of 3
    assert pd.read_csv(tmp_path/'o'/'trials.csv')['state'].tolist() == ['PRUNED']
    assert not (tmp_path/'o'/'trial_000'/'checkpoint.pth').exists()


def test_in_memory_study_report_and_limits(mri, tmp_path):
    out = tmp_path/'t'
    s = tune('mri-tiny', mri, n_trials=3, out=out, prune=False, verbose=False, **FAST)
    assert [t.state for t in s.trials] == [TrialState.COMPLETE]*3
    assert s.direction == optuna.study.StudyDirection.MAXIMIZE  # mri-tiny monitors macro_f1
    best = json.loads((out/'best.json').read_text())
    assert best['best_value'] == pytest.approx(s.best_value) and best['best_recipe']['lr'] == pytest.approx(s.best_params['lr'])
    for p in ('history', 'importance', 'slice'):
        assert best['plots'][p] == f"{p}.png" and (out/f"{p}.png").stat().st_size > 1000
    # importances need two completed trials: skipped with the reason, not an error
    s1 = tune('mri-tiny', mri, n_trials=1, space={'dropout': None}, out=tmp_path/'one', prune=False, verbose=False, **FAST)
    b1 = json.loads((tmp_path/'one'/'best.json').read_text())
    assert b1['plots']['importance'].startswith('skipped') and (tmp_path/'one'/'history.png').exists()
    # max_trials caps the study across calls
    db = tmp_path/'cap.db'
    tune('mri-tiny', mri, n_trials=5, max_trials=2, storage=db, out=tmp_path/'cap', plots=False, verbose=False, **FAST)
    s = tune('mri-tiny', mri, n_trials=5, max_trials=2, storage=db, out=tmp_path/'cap', plots=False, verbose=False, **FAST)
    assert len(s.trials) == 2


def test_resumed_study_must_match(mri, tmp_path):
    db = tmp_path/'m.db'
    tune('mri-tiny', mri, n_trials=1, storage=db, out=tmp_path/'o', plots=False, verbose=False, **FAST)
    with pytest.raises(MedvisionError, match='created with space'):
        tune('mri-tiny', mri, n_trials=1, storage=db, space={'wd': ('log', 1e-4, 1e-1)}, out=tmp_path/'o', **FAST)
    with pytest.raises(MedvisionError, match="tuned recipe 'mri-tiny'"):
        train_best(tmp_path/'o', 'chestct-tiny', mri, tmp_path/'x')
    assert len(optuna.load_study(study_name='medvision-mri-tiny', storage=f"sqlite:///{db}").trials) == 1


def test_interrupted_trial_runs_again(mri, tmp_path, monkeypatch):
    "Ctrl-C inside a trial: recorded as failed; the next call on the study runs the same values first."
    import medvision.tune as mt
    real = mt.train
    def interrupted(*a, **k): raise KeyboardInterrupt()
    monkeypatch.setattr(mt, 'train', interrupted)
    db = tmp_path/'i.db'
    with pytest.raises(KeyboardInterrupt):
        tune('mri-tiny', mri, n_trials=3, storage=db, out=tmp_path/'o', plots=False, verbose=False, **FAST)
    monkeypatch.setattr(mt, 'train', real)
    s = tune('mri-tiny', mri, n_trials=1, storage=db, out=tmp_path/'o', plots=False, verbose=False, **FAST)
    t0, t1 = s.trials
    assert t0.state == TrialState.FAIL and t0.user_attrs['interrupted']
    assert t1.state == TrialState.COMPLETE and t1.user_attrs['retry_of'] == 0 and t1.params == t0.params
