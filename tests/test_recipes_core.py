"Tests for medvision.recipes.core: Recipe, registry, task adapters, train/evaluate/predict on a fake tiny task."
import json, os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from fastai.callback.core import Callback
from fastai.data.core import Datasets
from fastai.data.transforms import ItemGetter
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy

from medvision.core import MedvisionError
from medvision.learner import TrainingInterrupted
from medvision.callbacks import load_weights
import medvision.recipes.core as rc
from medvision.recipes.core import (Recipe, register_recipe, get_recipe, list_recipes, register_task, get_task, train,
                                    evaluate, predict, load_model_dir, ModelDls, input_keys, unique_files, run_lock)


# ---------------------------------------------------------------- a fake tiny task
def write_toy(path, n=64, size=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.3, (n, 1, size, size)).astype(np.float32)
    y = np.arange(n) % 2
    x[y == 1, :, size // 4:-size // 4, size // 4:-size // 4] += 1.0
    path = Path(path); path.mkdir(parents=True, exist_ok=True)
    np.save(path / 'images.npy', x); np.save(path / 'labels.npy', y)
    return path


def always_nan(inp, targ): return torch.tensor(float('nan'))


class Toy:
    classes = ['plain', 'square']
    @staticmethod
    def build_dls(recipe, data):
        data = Path(data)
        if not (data / 'images.npy').exists(): raise MedvisionError("no images.npy", data)
        x = torch.from_numpy(np.load(data / 'images.npy')); y = torch.from_numpy(np.load(data / 'labels.npy'))
        n = len(x); cut = n * 3 // 4
        dsets = Datasets([(x[i], y[i]) for i in range(n)], [[ItemGetter(0)], [ItemGetter(1)]],
                         splits=[list(range(cut)), list(range(cut, n))])
        dls = dsets.dataloaders(bs=recipe.bs, device='cpu', num_workers=0)
        dls.classes, dls.split_name = list(recipe.extra.get('classes', Toy.classes)), 'last-quarter'
        return dls
    @staticmethod
    def data_info(recipe, dls): return {'size': recipe.size, 'split': None}
    @staticmethod
    def build_model(recipe, dls):
        assert recipe.pretrained is False or isinstance(dls, ModelDls) is False
        body = nn.Sequential(nn.Conv2d(recipe.n_in, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return nn.Sequential(body, nn.Sequential(nn.Dropout(recipe.dropout or 0.), nn.Linear(6, len(dls.classes))))
    @staticmethod
    def build_loss(recipe, dls):
        if recipe.extra.get('nan_loss'): return lambda inp, targ: (inp * float('nan')).mean()
        return CrossEntropyLossFlat()
    @staticmethod
    def build_metrics(recipe, dls): return [accuracy] + ([always_nan] if recipe.extra.get('nan') else [])
    @staticmethod
    def evaluate_dl(learn, dl, recipe, out):
        p, t = learn.get_preds(dl=dl)
        return {'accuracy': float((p.argmax(1) == t).float().mean()), 'n': int(len(t)), 'nan_metric': float('nan')}
    @staticmethod
    def predict_files(learn, recipe, files, out):
        x = torch.stack([torch.from_numpy(np.load(f)).float() for f in files])
        with torch.no_grad(): p = learn.model.eval()(x).softmax(1)
        return pd.DataFrame({'file': [str(f) for f in files], 'class': [learn.dls.classes[i] for i in p.argmax(1)]})


TOY = Recipe('toy-test', 'toytest', arch='tiny', n_in=1, size=12, bs=16, epochs=4, lr=3e-2, monitor='accuracy',
             patience=None, pretrained=False, seed=3, description='fake task for tests', reproduces='nothing')


@pytest.fixture(autouse=True)
def toy_task():
    register_task('toytest', Toy)
    register_recipe(TOY)
    yield
    rc._TASKS.pop('toytest', None); rc._RECIPES.pop('toy-test', None)


@pytest.fixture
def data(tmp_path): return write_toy(tmp_path / 'data')


class RaiseAt(Callback):
    order = 0
    def __init__(self, at): self.at = at
    def before_epoch(self):
        if not hasattr(self.learn, 'lr_finder') and self.epoch + (self.learn.mv_phase or {}).get('offset', 0) == self.at:
            raise KeyboardInterrupt


def hist(m): return [{k: v for k, v in r.items() if k != 'time_s'} for r in m['history']]


# ---------------------------------------------------------------- Recipe
def test_recipe_replace_and_json_roundtrip(tmp_path):
    r = TOY.replace(epochs=7, loss={'ce': 1.0}, extra={'a': [1, 2]})
    assert (TOY.epochs, r.epochs) == (4, 7) and TOY.loss == {}
    assert Recipe.from_json(r.to_json()) == r
    assert Recipe.from_dict(r.to_dict()) == r
    r.to_json(tmp_path / 'r.json')
    assert Recipe.from_json(tmp_path / 'r.json') == r
    assert get_recipe(str(tmp_path / 'r.json')) == r
    with pytest.raises(MedvisionError, match="did you mean 'epochs'") as e: TOY.replace(epoch=3)
    assert 'fields are:' in str(e.value)
    with pytest.raises(MedvisionError, match='unknown recipe field'): Recipe.from_dict({**TOY.to_dict(), 'colour': 1})
    with pytest.raises(MedvisionError, match='lacks required'): Recipe.from_dict({'name': 'x'})
    with pytest.raises(MedvisionError, match='schedule'): TOY.replace(schedule='cosine')
    with pytest.raises(MedvisionError, match='sampler'): TOY.replace(sampler='smote')
    # train() ignores None overrides, so 'none' is how a run switches a recipe's sampler off
    assert TOY.replace(sampler='oversample').replace(sampler='none').sampler is None
    with pytest.raises(MedvisionError, match='lr'): TOY.replace(lr=-1.0)
    with pytest.raises(MedvisionError, match='not valid JSON'): Recipe.from_json('{bad json')


def test_recipe_prints_nicely():
    s = repr(TOY)
    assert s.splitlines()[0] == "Recipe 'toy-test' (toytest): fake task for tests"
    assert any(l.split()[:2] == ['size', '12'] for l in s.splitlines())
    md = TOY._repr_markdown_()
    assert '| field | value |' in md and '| `bs` | `16` |' in md and 'Reproduces: nothing' in md


# ---------------------------------------------------------------- registry and tasks
def test_registry_and_errors():
    r = get_recipe('toy-test')
    assert r == TOY and r is not rc._RECIPES['toy-test']
    r.loss['x'] = 1
    assert get_recipe('toy-test').loss == {}  # the registry is not mutated through a copy
    with pytest.raises(MedvisionError, match="did you mean 'toy-test'") as e: get_recipe('toy-tset')
    assert 'registered recipes:' in str(e.value) and 'toy-test' in str(e.value)
    df = list_recipes()
    assert list(df.columns) == ['name', 'task', 'model', 'size', 'loss', 'schedule', 'reproduces']
    row = df[df.name == 'toy-test'].iloc[0]
    assert (row.task, row.model, row['size'], row.loss) == ('toytest', 'tiny', 12, 'default')
    assert list(list_recipes(task='toytest').name) == ['toy-test']


def test_missing_task_modules_are_tolerated(monkeypatch):
    monkeypatch.setattr(rc, 'TASK_MODULES', {'nosuch': 'medvision.recipes.nosuch_task'})
    monkeypatch.setattr(rc, '_loaded', set())
    assert 'toy-test' in list(list_recipes().name)
    with pytest.raises(MedvisionError, match='known tasks'): get_task('nosuch')


def test_adapter_contract_checked():
    with pytest.raises(MedvisionError, match=r"lacks \['build_model'"):
        register_task('half', SimpleNamespace(build_dls=print))
    assert get_task('toytest') is Toy


# ---------------------------------------------------------------- train
def test_train_writes_model_folder(tmp_path, data):
    out = tmp_path / 'model'
    m = train('toy-test', data, out, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ['checkpoint.pth', 'loss.png', 'metrics.json', 'model.pth', 'recipe.json']
    sd = torch.load(out / 'model.pth', weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert (out / 'loss.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    on_disk = json.loads((out / 'metrics.json').read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert m['split'] == 'last-quarter' and m['epochs_run'] == 4 and not m['stopped_early']
    assert m['history_columns'] == ['epoch', 'phase', 'train_loss', 'valid_loss', 'accuracy', 'lr', 'time_s']
    assert [r['epoch'] for r in m['history']] == [0, 1, 2, 3]
    assert m['best_value'] == max(r['accuracy'] for r in m['history'])
    assert m['history'][m['best_epoch']]['accuracy'] == m['best_value']
    assert m['final']['accuracy'] == pytest.approx(m['best_value']) and m['final']['nan_metric'] is None
    assert m['classes'] == ['plain', 'square']
    meta = json.loads((out / 'recipe.json').read_text())
    assert meta['recipe'] == TOY.to_dict() and meta['split'] == 'last-quarter' and meta['data'] == str(data)
    assert meta['classes'] == ['plain', 'square'] and meta['data_info']['size'] == 12
    assert {'medvision', 'torch', 'fastai'} <= set(meta['versions'])


def test_train_overrides_and_seed000(tmp_path, data):
    m = train('toy-test', data, tmp_path / 'm', show_progress=False, epochs=2, seed=None, schedule='fine_tune', freeze_epochs=1)
    assert [r['phase'] for r in m['history']] == ['frozen', 'unfrozen', 'unfrozen']
    assert m['epochs_planned'] == 3 and set(m['lrs']) == {'frozen', 'unfrozen'}
    meta = json.loads((tmp_path / 'm' / 'recipe.json').read_text())
    assert meta['recipe']['epochs'] == 2 and meta['recipe']['seed'] == 3  # None overrides are ignored
    with pytest.raises(MedvisionError, match='unknown recipe field'): train('toy-test', data, tmp_path / 'x', epoch=2)


def test_same_seed_same_metrics_and_weights(tmp_path, data):
    a = train('toy-test', data, tmp_path / 'a', show_progress=False, epochs=3)
    b = train('toy-test', data, tmp_path / 'b', show_progress=False, epochs=3)
    assert hist(a) == hist(b) and a['final'] == b['final']
    wa, wb = (torch.load(tmp_path / d / 'model.pth', weights_only=True) for d in 'ab')
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_train_resumes_to_the_same_result(tmp_path, data):
    full = train('toy-test', data, tmp_path / 'full', show_progress=False, epochs=5)
    with pytest.raises(TrainingInterrupted) as e:
        train('toy-test', data, tmp_path / 'cut', show_progress=False, epochs=5, cbs=[RaiseAt(2)])
    assert 'resume' in str(e.value)
    assert (tmp_path / 'cut' / 'checkpoint.pth').exists() and not (tmp_path / 'cut' / 'metrics.json').exists()
    res = train('toy-test', data, tmp_path / 'cut', resume=True, show_progress=False, epochs=5)
    assert res['resumed_from_epoch'] == 2
    assert len(res['history']) == len(full['history']) == 5
    assert hist(res) == hist(full) and res['final'] == full['final'] and res['best_epoch'] == full['best_epoch']
    wa, wb = (torch.load(tmp_path / d / 'model.pth', weights_only=True) for d in ('full', 'cut'))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_metrics_tell_the_truth_about_early_stopping_after_resume(tmp_path, data):
    "Issue 17.2: an early-stopped, interrupted and resumed run reports each epoch once, epochs_run and stopped_early."
    kw = dict(show_progress=False, epochs=6, monitor='always_nan', patience=2, extra={'nan': True})
    full = train('toy-test', data, tmp_path / 'full', **kw)
    with pytest.raises(TrainingInterrupted): train('toy-test', data, tmp_path / 'cut', cbs=[RaiseAt(1)], **kw)
    res = train('toy-test', data, tmp_path / 'cut', resume=True, **kw)
    for m in (full, res):
        assert [r['epoch'] for r in m['history']] == [0, 1]
        assert (m['epochs_run'], m['epochs_planned'], m['stopped_early'], m['stopped_epoch']) == (2, 6, True, 1)
    assert res['resumed_from_epoch'] == 1 and json.loads((tmp_path / 'cut' / 'metrics.json').read_text())['epochs_run'] == 2


def test_resume_errors(tmp_path, data):
    with pytest.raises(MedvisionError, match='nothing to resume'): train('toy-test', data, tmp_path / 'new', resume=True)
    with pytest.raises(TrainingInterrupted):
        train('toy-test', data, tmp_path / 'cut', show_progress=False, cbs=[RaiseAt(1)])
    with pytest.raises(MedvisionError, match=r'different settings.*epochs: 4 -> 6'):
        train('toy-test', data, tmp_path / 'cut', resume=True, epochs=6)


def test_fresh_train_refuses_an_old_run_unless_overwrite(tmp_path, data):
    "Never lose work: a new run into a folder holding one is an error that keeps every file; `overwrite=True` replaces it."
    out = tmp_path / 'm'
    with pytest.raises(TrainingInterrupted): train('toy-test', data, out, show_progress=False, cbs=[RaiseAt(2)])
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    assert 'checkpoint.pth' in before
    with pytest.raises(MedvisionError, match=r'already holds a run.*--resume.*--overwrite'):
        train('toy-test', data, out, show_progress=False, epochs=2)
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before
    m = train('toy-test', data, out, show_progress=False, epochs=2, overwrite=True)
    assert m['epochs_run'] == 2 and m['resumed_from_epoch'] is None


def test_overwrite_builds_aside_and_keeps_the_old_run_on_failure(tmp_path, data):
    "Issue 17.3: the new run is built in a temporary sibling; broken data or a NaN loss leave the old run untouched."
    out = tmp_path / 'm'
    train('toy-test', data, out, show_progress=False, epochs=1)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    (tmp_path / 'broken').mkdir()
    with pytest.raises(MedvisionError, match='no images.npy'): train('toy-test', tmp_path / 'broken', out, overwrite=True)
    with pytest.raises(MedvisionError, match=r'training loss became nan at epoch 0 \(batch 0\)'):
        train('toy-test', data, out, overwrite=True, show_progress=False, extra={'nan_loss': True})
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['broken', 'data', 'm']  # no temporary folder left behind
    with pytest.raises(MedvisionError, match='training loss became nan'):
        train('toy-test', data, tmp_path / 'fresh', show_progress=False, extra={'nan_loss': True})
    assert not (tmp_path / 'fresh').exists()  # a failed fresh run leaves nothing (no NaN model)
    with pytest.raises(MedvisionError, match='is a file'): train('toy-test', data, out / 'model.pth', show_progress=False)


def test_run_lock(tmp_path, data):
    "Issue 17.3: a second train into a locked folder fails at once; a lock of a dead process is taken over."
    out = tmp_path / 'm'
    with run_lock(out) as f:
        assert f.exists() and str(os.getpid()) in f.read_text()
        with pytest.raises(MedvisionError, match='another `medvision train`'): train('toy-test', data, out, show_progress=False)
    assert not f.exists() and not out.exists()  # released; the folder it created for nothing is gone
    out.mkdir(); (out / '.medvision-train.lock').write_text(f"{2**22 + 12345} {os.uname().nodename}\n")
    assert train('toy-test', data, out, show_progress=False, epochs=1)['epochs_run'] == 1
    assert not (out / '.medvision-train.lock').exists()


def test_input_keys_never_collide(tmp_path):
    names = ['1.2.840.1.dcm', '1.2.840.2.dcm', 'a/scan.dcm', 'b/scan.dcm', 'scan.dcm', 'scan.png', 'a/b/scan.dcm']
    keys = input_keys([tmp_path / 'in' / n for n in names])
    assert keys == names
    assert input_keys([tmp_path / 'x' / 'one.dcm']) == ['one.dcm']
    f = tmp_path / 'x' / 'one.dcm'
    assert unique_files([f, tmp_path / 'x' / '..' / 'x' / 'one.dcm', tmp_path / 'two.dcm', f]) == [f, tmp_path / 'two.dcm']
    with pytest.raises(MedvisionError, match='more than once'): input_keys([f, f])


# ---------------------------------------------------------------- evaluate / predict
def test_evaluate_and_predict_from_folder(tmp_path, data):
    out = tmp_path / 'model'
    m = train('toy-test', data, out, show_progress=False, epochs=3)
    recipe, learn = load_model_dir(out)
    assert recipe == TOY.replace(epochs=3) and isinstance(learn.dls, ModelDls) and learn.dls.c == 2
    assert learn.dls.info['size'] == 12
    ev = evaluate(out, data, out=tmp_path / 'ev')
    assert ev['final']['accuracy'] == pytest.approx(m['final']['accuracy']) and ev['split'] == 'last-quarter'
    assert json.loads((tmp_path / 'ev' / 'metrics.json').read_text())['final']['n'] == 16
    with pytest.raises(MedvisionError, match="cannot evaluate split 'test'"): evaluate(out, data, split='test')
    for i in range(2): np.save(tmp_path / f'img{i}.npy', np.load(data / 'images.npy')[i])
    df = predict(out / 'model.pth', [tmp_path / 'img0.npy', tmp_path / 'img1.npy'])
    assert list(df.columns) == ['file', 'class'] and len(df) == 2
    with pytest.raises(MedvisionError, match='not a medvision model folder'): predict(data, [tmp_path / 'img0.npy'])
    with pytest.raises(MedvisionError, match='not found'): predict(out, [tmp_path / 'missing.npy'])


def test_model_data_mismatch_and_bad_weights(tmp_path, data):
    out = tmp_path / 'model'
    train('toy-test', data, out, show_progress=False, epochs=1)
    meta = json.loads((out / 'recipe.json').read_text())
    meta['classes'] = ['a', 'b', 'c']  # a model built for 3 classes vs weights for 2
    (out / 'recipe.json').write_text(json.dumps(meta))
    with pytest.raises(MedvisionError, match='do not fit this model'): load_model_dir(out)
    meta['classes'] = ['x', 'y']
    (out / 'recipe.json').write_text(json.dumps(meta))
    with pytest.raises(MedvisionError, match='differ from the model'): evaluate(out, data)
    (out / 'recipe.json').write_text('{not json')
    with pytest.raises(MedvisionError, match='not valid JSON'): load_model_dir(out)


def test_model_saved_even_if_monitor_never_improves(tmp_path, data):
    m = train('toy-test', data, tmp_path / 'm', show_progress=False, epochs=2, monitor='always_nan', extra={'nan': True})
    assert m['best_epoch'] is None and m['best_value'] is None
    load_weights(Toy.build_model(TOY, SimpleNamespace(classes=Toy.classes)), tmp_path / 'm' / 'model.pth')


@pytest.mark.parametrize('name,key,close', [('chestct-tiny', 'multilabel', 'multi_label'),
                                            ('covid-tiny', 'lesion_wieght', 'lesion_weight')])
def test_a_typo_in_extra_raises_with_a_suggestion(tmp_path, name, key, close):
    "An `extra` key the task does not read stops `train` before any data is read, naming the likely key."
    r = get_recipe(name)
    with pytest.raises(MedvisionError, match=f"unknown extra key '{key}' \\(did you mean '{close}'\\?\\)"):
        train(r, tmp_path/'no-data-needed', tmp_path/'out', extra={**r.extra, key: True})
    assert not (tmp_path/'out'/'model.pth').exists()


def test_extra_values_are_type_checked(tmp_path):
    with pytest.raises(MedvisionError, match="extra 'multi_label' must be bool"):
        train('chestct-tiny', tmp_path, tmp_path/'out', extra={'multi_label': 'yes'})


def test_earlier_names_still_load():
    "Schedules and augmentation presets are named for what they do; the seed-numbered names of older recipe.json files load."
    from medvision.data.classification import aug_preset
    r = Recipe.from_dict({'name': 'old', 'task': 'classification', 'schedule': 'seed000'})
    assert r.schedule == 'fine_tune'
    assert r.replace(schedule='seed003').schedule == 'head_then_last'
    for old, new in [('seed000', 'radiograph'), ('seed002', 'mri-light'), ('seed003', 'ct-light')]:
        a, b = aug_preset(old, 64), aug_preset(new, 64)
        assert [repr(t) for t in a[0] + a[1]] == [repr(t) for t in b[0] + b[1]]
