"Tests for medvision.learner and medvision.callbacks: weight I/O, best model, early stopping, checkpoints, resume, Ctrl-C, seeds."
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from fastai.callback.core import Callback
from fastai.data.core import Datasets
from fastai.data.transforms import ItemGetter
from fastai.learner import Metric
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.torch_core import params

from medvision.core import MedvisionError, seed_everything, atomic_save
from medvision.callbacks import save_weights, load_weights, CHECKPOINT_FORMAT
from medvision.learner import (AdamW, make_learner, resume, fit_schedule, load_exported, load_checkpoint, TrainingInterrupted,
                               MedvisionLearner)


def tiny_dls(n=48, bs=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g) * 0.3
    y = torch.arange(n) % 2
    x[y == 1, :, 3:9, 3:9] += 1.0
    items = [(x[i], y[i]) for i in range(n)]
    cut = n * 3 // 4
    dsets = Datasets(items, [[ItemGetter(0)], [ItemGetter(1)]], splits=[list(range(cut)), list(range(cut, n))])
    return dsets.dataloaders(bs=bs, device='cpu', num_workers=0)


def tiny_model():
    body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return nn.Sequential(body, nn.Sequential(nn.Dropout(0.2), nn.Linear(6, 2)))


class EpochScore(Metric):
    "A metric whose value is scripted per (global) epoch, to test trackers deterministically."
    def __init__(self, vals): self.vals, self.ep = vals, 0
    def reset(self): pass
    def accumulate(self, learn): self.ep = learn.epoch + (learn.mv_phase or {}).get('offset', 0)
    @property
    def value(self): return self.vals[self.ep]
    @property
    def name(self): return 'score'


class RaiseAt(Callback):
    "Simulates Ctrl-C: raise KeyboardInterrupt at epoch `at` (before it starts, or after `after_batches` training batches)."
    order = 0
    def __init__(self, at, after_batches=None): self.at, self.after_batches, self.nb = at, after_batches, 0
    def before_epoch(self):
        self.nb = 0
        if hasattr(self.learn, 'lr_finder'): return
        if self.after_batches is None and self._ep() == self.at: raise KeyboardInterrupt
    def after_batch(self):
        if not self.training or hasattr(self.learn, 'lr_finder'): return
        self.nb += 1
        if self.after_batches is not None and self._ep() == self.at and self.nb >= self.after_batches: raise KeyboardInterrupt
    def _ep(self): return self.epoch + (self.learn.mv_phase or {}).get('offset', 0)


def build(out=None, seed=42, metrics=(accuracy,), cbs=None, **kw):
    seed_everything(seed)
    return make_learner(tiny_dls(), tiny_model(), CrossEntropyLossFlat(), list(metrics), out=out, cbs=cbs, **kw)


def quiet_fit(learn, n=4, lr=1e-2, start_epoch=0):
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(n, lr, start_epoch=start_epoch)
    return learn


def quiet_schedule(learn, *a, **kw):
    with learn.no_bar(), learn.no_logging(): return fit_schedule(learn, *a, **kw)


def hist(learn): return [{k: v for k, v in r.items() if k != 'time_s'} for r in learn.mv_history]


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- weights I/O
def test_weights_roundtrip_and_errors(tmp_path):
    m = tiny_model()
    f = save_weights(m, tmp_path / 'model.pth')
    sd = torch.load(f, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    m2 = load_weights(tiny_model(), f)
    assert same_weights(m, m2)
    wrong = nn.Sequential(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1)), nn.Linear(6, 5))
    with pytest.raises(MedvisionError, match='do not fit this model'): load_weights(wrong, f)
    torch.save(m, tmp_path / 'pickled.pth')
    with pytest.raises(MedvisionError, match='trust_pickle'): load_weights(m, tmp_path / 'pickled.pth')
    (tmp_path / 'cut.pth').write_bytes(f.read_bytes()[:200])
    with pytest.raises(MedvisionError, match='corrupt'): load_weights(m, tmp_path / 'cut.pth')
    (tmp_path / 'junk.pth').write_bytes(b'not a torch file at all')
    with pytest.raises(MedvisionError): load_weights(m, tmp_path / 'junk.pth')
    with pytest.raises(MedvisionError, match='not found'): load_weights(m, tmp_path / 'missing.pth')


def test_atomic_save_survives_a_kill(tmp_path, monkeypatch):
    m = tiny_model()
    f = save_weights(m, tmp_path / 'model.pth')
    before = f.read_bytes()
    real_save = torch.save
    def dying_save(obj, path, *a, **k):
        Path(path).write_bytes(b'half a file')  # partial write, then the process "dies"
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt): save_weights(nn.Sequential(nn.Linear(2, 2)), f)
    monkeypatch.setattr(torch, 'save', real_save)
    assert f.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ['model.pth']  # no temp file left behind
    load_weights(tiny_model(), f)


def test_load_exported_needs_trust(tmp_path):
    learn = build()
    learn.path = tmp_path
    learn.export('export.pkl')
    with pytest.raises(MedvisionError, match='trust_pickle=True') as e: load_exported(tmp_path / 'export.pkl')
    assert 'arbitrary code' in str(e.value) and '--trust-pickle' in str(e.value)
    assert isinstance(load_exported(tmp_path / 'export.pkl', trust_pickle=True).model, nn.Sequential)
    with pytest.raises(MedvisionError): load_weights(tiny_model(), tmp_path / 'export.pkl')


# ---------------------------------------------------------------- make_learner
def test_make_learner_defaults(tmp_path):
    learn = build(tmp_path / 'run')
    assert isinstance(learn, MedvisionLearner)
    assert getattr(learn.opt_func, 'func', learn.opt_func) is AdamW and learn.wd == 1e-2
    learn.create_opt()
    assert learn.opt.opt.defaults['fused'] and [pg['weight_decay'] for pg in learn.opt.opt.param_groups] == [0.01, 0., 0.01, 0.]
    assert not any(type(cb).__name__ == 'MixedPrecision' for cb in learn.cbs)  # CPU: no AMP
    assert {'save_best', 'early_stop', 'checkpoint', 'history'} <= {cb.name for cb in learn.cbs}
    assert len(learn.splitter(learn.model)) == 2  # body + head groups
    with pytest.raises(MedvisionError, match='choose one of'): build(monitor='f1_macro')
    nothing = build(None, patience=None)
    assert not any(cb.name in ('save_best', 'checkpoint', 'early_stop') for cb in nothing.cbs)


def test_best_model_saver_picks_best_epoch(tmp_path):
    vals = [0.1, 0.5, 0.9, 0.3, 0.2]
    snaps = []
    class Snap(Callback):
        order = 99
        def after_epoch(self): snaps.append({k: v.clone() for k, v in self.model.state_dict().items()})
    learn = build(tmp_path, metrics=[EpochScore(vals)], monitor='score', cbs=Snap(), patience=None)
    quiet_fit(learn, 5)
    assert learn.save_best.best_epoch == 2 and learn.save_best.best_value == pytest.approx(0.9)
    sd = torch.load(tmp_path / 'model.pth', weights_only=True)
    assert all(torch.equal(sd[k], snaps[2][k]) for k in sd)
    assert all(torch.equal(v, snaps[2][k]) for k, v in learn.model.state_dict().items())  # best reloaded at the end


def test_early_stopping_stops(tmp_path):
    learn = build(tmp_path, metrics=[EpochScore([0.5, 0.6, 0.6, 0.55, 0.9, 0.9, 0.9, 0.9])], monitor='score', patience=2)
    quiet_fit(learn, 8)
    assert len(learn.mv_history) == 4 and learn.early_stop.stopped_epoch == 3
    assert load_checkpoint(tmp_path / 'checkpoint.pth')['phase']['done']


def test_lr_find_with_callbacks(tmp_path):
    learn = build(tmp_path)
    quiet_schedule(learn, 'one_cycle', epochs=2)  # lr=None → lr_find
    assert learn.mv_lrs['one_cycle'] > 0 and len(learn.mv_history) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ['checkpoint.pth', 'model.pth']
    assert learn.save_best.best_epoch in (0, 1)


# ---------------------------------------------------------------- checkpoints, Ctrl-C, resume
def test_checkpoint_is_weights_only_and_complete(tmp_path):
    quiet_fit(build(tmp_path), 2)
    ck = torch.load(tmp_path / 'checkpoint.pth', weights_only=True)
    assert ck['format'] == CHECKPOINT_FORMAT and ck['epoch'] == 2
    assert {'model', 'opt', 'rng', 'recorder', 'history', 'callbacks', 'lrs', 'phase', 'frozen_idx'} <= set(ck)
    assert {'python', 'numpy', 'torch', 'dls'} <= set(ck['rng']) and len(ck['history']) == 2


def test_ctrl_c_saves_and_resume_is_exact(tmp_path):
    full = quiet_fit(build(tmp_path / 'full'), 5)
    with pytest.raises(TrainingInterrupted) as e: quiet_fit(build(tmp_path / 'cut', cbs=RaiseAt(2)), 5)
    assert isinstance(e.value, KeyboardInterrupt) and 'resume' in str(e.value)
    assert load_checkpoint(tmp_path / 'cut' / 'checkpoint.pth')['epoch'] == 2
    learn = build(tmp_path / 'cut')
    start = resume(learn)
    assert start == 2
    quiet_fit(learn, 5, start_epoch=start)
    assert len(learn.recorder.values) == 5 and len(learn.mv_history) == 5
    assert hist(learn) == hist(full)
    assert same_weights(learn.model, full.model)
    assert (tmp_path / 'cut' / 'model.pth').read_bytes() == (tmp_path / 'full' / 'model.pth').read_bytes() or \
        same_weights(load_weights(tiny_model(), tmp_path / 'cut' / 'model.pth'), load_weights(tiny_model(), tmp_path / 'full' / 'model.pth'))


def test_ctrl_c_mid_epoch(tmp_path):
    full = quiet_fit(build(tmp_path / 'full'), 4)
    with pytest.raises(TrainingInterrupted, match='interrupted.pth'): quiet_fit(build(tmp_path / 'cut', cbs=RaiseAt(2, after_batches=1)), 4)
    assert (tmp_path / 'cut' / 'interrupted.pth').exists()
    ck = load_checkpoint(tmp_path / 'cut' / 'checkpoint.pth')
    assert ck['epoch'] == 2 and not ck['partial']  # the resumable state is the epoch boundary
    learn = build(tmp_path / 'cut')
    quiet_fit(learn, 4, start_epoch=resume(learn))
    assert same_weights(learn.model, full.model) and hist(learn) == hist(full)


def test_ctrl_c_in_first_epoch_still_saves(tmp_path):
    with pytest.raises(TrainingInterrupted): quiet_fit(build(tmp_path, cbs=RaiseAt(0, after_batches=1)), 3)
    ck = load_checkpoint(tmp_path / 'checkpoint.pth')
    assert ck['epoch'] == 0 and ck['partial']
    learn = build(tmp_path)
    quiet_fit(learn, 3, start_epoch=resume(learn))
    assert len(learn.mv_history) == 3


def test_resume_early_stopping_state(tmp_path):
    vals = [0.5, 0.6, 0.6, 0.55, 0.9, 0.9, 0.9, 0.9]
    mk = lambda out, cbs=None: build(out, metrics=[EpochScore(vals)], monitor='score', patience=2, cbs=cbs)
    with pytest.raises(TrainingInterrupted): quiet_fit(mk(tmp_path, RaiseAt(3)), 8)
    learn = mk(tmp_path)
    quiet_fit(learn, 8, start_epoch=resume(learn))
    assert len(learn.mv_history) == 4 and learn.early_stop.stopped_epoch == 3  # stops where the full run stops


@pytest.mark.parametrize('at', [1, 3])
def test_seed000_resume_with_lr_find(tmp_path, at):
    def run(out, cbs=None, res=False):
        learn = build(out, cbs=cbs)
        start = resume(learn) if res else 0
        quiet_schedule(learn, 'fine_tune', epochs=2, lr=None, freeze_epochs=2, start_epoch=start)
        return learn
    full = run(tmp_path / 'full')
    assert [r['phase'] for r in full.mv_history] == ['frozen', 'frozen', 'unfrozen', 'unfrozen']
    assert set(full.mv_lrs) == {'frozen', 'unfrozen'}
    with pytest.raises(TrainingInterrupted): run(tmp_path / 'cut', RaiseAt(at))
    learn = run(tmp_path / 'cut', res=True)
    assert hist(learn) == hist(full) and learn.mv_lrs == full.mv_lrs
    assert same_weights(learn.model, full.model)


def test_ctrl_c_during_lr_find_restores_weights(tmp_path):
    class StopInFinder(Callback):
        def after_batch(self):
            if hasattr(self.learn, 'lr_finder') and self.train_iter >= 5: raise KeyboardInterrupt
    learn = build(tmp_path, cbs=StopInFinder())
    w0 = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with pytest.raises(TrainingInterrupted, match='lr_find'): quiet_schedule(learn, 'one_cycle', epochs=2)
    assert all(torch.equal(v, w0[k]) for k, v in learn.model.state_dict().items())


def test_resume_errors(tmp_path):
    with pytest.raises(MedvisionError, match='no checkpoint'): resume(build(tmp_path))
    quiet_fit(build(tmp_path), 1)
    seed_everything(0)
    other = make_learner(tiny_dls(), nn.Sequential(nn.Flatten(), nn.Linear(144, 2)), CrossEntropyLossFlat(), out=tmp_path)
    with pytest.raises(MedvisionError, match='does not match'): resume(other)


# ---------------------------------------------------------------- reproducibility
def test_same_seed_same_run(tmp_path):
    a = quiet_fit(build(tmp_path / 'a', seed=7), 3)
    b = quiet_fit(build(tmp_path / 'b', seed=7), 3)
    assert hist(a) == hist(b) and same_weights(a.model, b.model)
    assert (tmp_path / 'a' / 'model.pth').exists()
    c = quiet_fit(build(tmp_path / 'c', seed=8), 3)
    assert not same_weights(a.model, c.model)


def test_checkpoint_from_another_version_says_so(tmp_path):
    f = tmp_path / 'checkpoint.pth'
    atomic_save({'format': 'medvision-checkpoint-1', 'epoch': 1}, f)
    with pytest.raises(MedvisionError, match=r'another medvision version \(medvision-checkpoint-1; this one reads medvision-checkpoint-2\)'):
        load_checkpoint(f)
    atomic_save({'weights': 1}, f)
    with pytest.raises(MedvisionError, match='is not a medvision training checkpoint'): load_checkpoint(f)


def opt_state(learn):
    "The optimiser's per-parameter state and hyper-parameters, as plain comparable values."
    sd = learn.opt.state_dict()
    return [{k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in s.items()} for s in sd['state']], sd['hypers']


class RaiseLate(Callback):
    "Ctrl-C that lands *after* the checkpoint was written: at the end of global epoch `at`, or in the `after_fit` of phase `fit`."
    order = 70  # after CheckpointCallback (65)
    def __init__(self, at=None, fit=None): self.at, self.fit = at, fit
    def after_epoch(self):
        if self.at is not None and self.epoch + (self.learn.mv_phase or {}).get('offset', 0) == self.at: raise KeyboardInterrupt
    def after_fit(self):
        if hasattr(self.learn, 'lr_finder') or self.fit is None: return
        if (self.learn.mv_phase or {}).get('name') == self.fit: raise KeyboardInterrupt


@pytest.mark.parametrize('schedule,at', [('one_cycle', 1), ('one_cycle', 3), ('flat_cos', 1), ('flat_cos', 2),
                                         ('fine_tune', 1), ('fine_tune', 2), ('fine_tune', 3),
                                         ('flat_cos', 'late 1'), ('fine_tune', 'late 0'), ('fine_tune', 'fit frozen'),
                                         ('constant', 1), ('constant', 3), ('constant', 'late 2'),
                                         ('head_then_last', 1), ('head_then_last', 2), ('head_then_last', 3), ('head_then_last', 'late 1'),
                                         ('head_then_last', 'fit head+last')])
def test_resume_exact_every_schedule(tmp_path, schedule, at):
    "Issue 12.5: a resumed run's history, weights and optimiser state equal an uninterrupted run's, per schedule."
    kw = dict(epochs=2 if schedule in ('fine_tune', 'head_then_last') else 4, lr=1e-2, freeze_epochs=2)
    # seed003 trains the head, then head + last block: three layer groups (first conv, rest of the body, head)
    split = (lambda m: [params(m[0][:1]), params(m[0][1:]), params(m[1])]) if schedule == 'head_then_last' else None
    def run(out, cbs=None, res=False):
        learn = build(out, cbs=cbs, splitter=split)
        quiet_schedule(learn, schedule, start_epoch=resume(learn) if res else 0, load_best=False, **kw)
        return learn
    full = run(tmp_path / 'full')
    if isinstance(at, int): stop = RaiseAt(at)
    else: stop = RaiseLate(at=int(at.split()[1])) if at.startswith('late') else RaiseLate(fit=at.split()[1])
    with pytest.raises(TrainingInterrupted): run(tmp_path / 'cut', stop)
    learn = run(tmp_path / 'cut', res=True)
    assert [r['epoch'] for r in learn.mv_history] == list(range(4))
    assert hist(learn) == hist(full) and learn.mv_lrs == full.mv_lrs
    assert same_weights(learn.model, full.model)
    assert opt_state(learn) == opt_state(full)


@pytest.mark.parametrize('when', ['after_rename', 'before_rename'])
def test_ctrl_c_while_writing_the_first_checkpoint(tmp_path, monkeypatch, when):
    "Ctrl-C that lands inside the first epoch-boundary checkpoint write (the CLI SIGINT race): the resume is still exact."
    import medvision.callbacks as cbm
    full = quiet_fit(build(tmp_path / 'full'), 3)
    real, calls = cbm.atomic_save, []
    def flaky(obj, path):
        if Path(path).name == 'checkpoint.pth': calls.append(path)
        if len(calls) == 1 and Path(path).name == 'checkpoint.pth':
            if when == 'after_rename': real(obj, path)
            raise KeyboardInterrupt
        return real(obj, path)
    monkeypatch.setattr(cbm, 'atomic_save', flaky)
    with pytest.raises(TrainingInterrupted): quiet_fit(build(tmp_path / 'cut'), 3)
    monkeypatch.setattr(cbm, 'atomic_save', real)
    ck = load_checkpoint(tmp_path / 'cut' / 'checkpoint.pth')
    assert ck['epoch'] == 1 and not ck['partial'] and [h['epoch'] for h in ck['history']] == [0]
    learn = build(tmp_path / 'cut')
    quiet_fit(learn, 3, start_epoch=resume(learn))
    assert hist(learn) == hist(full) and same_weights(learn.model, full.model)
