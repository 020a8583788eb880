"""Issue 17 through the real `medvision` command (subprocesses): Ctrl-C + --resume per schedule, --overwrite, the run lock,
refused nonsense (--lr inf, NaN/Inf/complex inputs, a diverging run) and exit codes of predict."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch
from test_cli import mv, ok, fails, REPO

RECIPE = 'chestct-tiny'  # flat_cos, a 4-class CNN from scratch: the cheapest recipe to train through the command
TRAIN = ('--size', 32, '--bs', 8)


def popen(*args):
    "Start `python -m medvision.cli *args` in the background (same environment as `mv`)."
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'),
           'PYTHONWARNINGS': 'ignore::DeprecationWarning',
           'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    return subprocess.Popen([sys.executable, '-m', 'medvision.cli', *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,  # Ctrl-C handled even when pytest runs in the background:
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(cond, p, timeout=300):
    "Poll `cond()` every 20 ms while process `p` runs; True once it holds."
    t0 = time.time()
    while not cond():
        if p.poll() is not None or time.time() - t0 > timeout: return False
        time.sleep(0.02)
    return True


def weights(f): return torch.load(f, weights_only=True)


def same(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope='module')
def chest(tmp_path_factory):
    "Synthetic chest-CT folders (8 images per split) and per-schedule recipe files based on chestct-tiny."
    d = tmp_path_factory.mktemp('chest')
    ok(mv('synth', 'chestct', '--out', d/'data', '--n', 8, '--size', 32))
    from medvision.recipes.core import get_recipe
    base = get_recipe(RECIPE).replace(epochs=3)
    recipes = {'flat_cos': RECIPE, 'one_cycle': base.replace(name='cc-one-cycle', schedule='one_cycle'),
               'seed000': base.replace(name='cc-seed000', schedule='fine_tune', freeze_epochs=1, epochs=2)}
    for k, r in recipes.items():
        if not isinstance(r, str): r.to_json(d/f'{k}.json'); recipes[k] = d/f'{k}.json'
    return d, recipes


# ---- Ctrl-C and --resume, one test per schedule --------------------------------------------------------------------

def _sigint_resume(chest, tmp_path, schedule):
    d, recipes = chest
    args = ('train', recipes[schedule], '--data', d/'data', *TRAIN) + (('--epochs', 3) if schedule == 'flat_cos' else ())
    full, cut = popen(*args, '--out', tmp_path/'full'), popen(*args, '--out', tmp_path/'cut')
    # the first epoch's checkpoint appears in the run's staging folder next to `cut` (a fresh run is built aside)
    assert wait_for(lambda: any(tmp_path.glob('.cut.*/checkpoint.pth')), cut), cut.communicate()
    cut.send_signal(signal.SIGINT)
    out, err = cut.communicate(timeout=300)
    assert cut.returncode == 130, (cut.returncode, out[-2000:], err[-3000:])
    assert 'medvision: error: interrupted' in err and 'Traceback' not in err
    assert (tmp_path/'cut'/'checkpoint.pth').exists() and not any(tmp_path.glob('.cut.*'))  # the partial run was moved in
    fails(mv(*args, '--out', tmp_path/'cut'), 'already holds a run', '--resume')  # never silently restarted
    ok(mv(*args, '--out', tmp_path/'cut', '--resume'))  # ('Resuming at epoch' is printed only for a mid-phase resume)
    o, e = full.communicate(timeout=600)
    assert full.returncode == 0, e[-3000:]
    m, ref = (json.loads((tmp_path/k/'metrics.json').read_text()) for k in ('cut', 'full'))
    test_hist = lambda h: [(x['epoch'], x['phase'], x['train_loss'], x['valid_loss']) for x in h]
    assert [x['epoch'] for x in m['history']] == list(range(3))  # each epoch once
    assert test_hist(m['history']) == test_hist(ref['history'])
    assert m['epochs_run'] == 3 == m['epochs_planned'] and m['stopped_early'] is False and m['resumed_from_epoch'] >= 1
    assert same(weights(tmp_path/'cut'/'model.pth'), weights(tmp_path/'full'/'model.pth'))
    assert same(weights(tmp_path/'cut'/'checkpoint.pth')['model'], weights(tmp_path/'full'/'checkpoint.pth')['model'])


# Each runs three `medvision train` processes (~40 s of CPU, 2-3 min wall on the shared 2-core machine): slow.
# The same resume logic is covered in the normal suite, in-process, by tests/test_learner.py::test_resume_exact_every_schedule.
@pytest.mark.slow
def test_sigint_resume_flat_cos(chest, tmp_path): _sigint_resume(chest, tmp_path, 'flat_cos')

@pytest.mark.slow
def test_sigint_resume_one_cycle(chest, tmp_path): _sigint_resume(chest, tmp_path, 'one_cycle')

@pytest.mark.slow
def test_sigint_resume_seed000(chest, tmp_path): _sigint_resume(chest, tmp_path, 'seed000')


# ---- nothing lost: --overwrite, the run lock -----------------------------------------------------------------------

@pytest.fixture(scope='module')
def model(chest):
    "chestct-tiny trained for one epoch through the command."
    d, _ = chest
    ok(mv('train', RECIPE, '--data', d/'data', '--out', d/'model', '--epochs', 1, *TRAIN))
    return d/'model'


def snapshot(d): return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.is_file()}


@pytest.mark.slow  # three training commands; the same logic runs in-process in test_recipes_core.py
def test_overwrite_with_broken_data_keeps_the_old_run(chest, model, tmp_path):
    import shutil
    d, _ = chest
    run = tmp_path/'run'; shutil.copytree(model, run)
    before = snapshot(run)
    (tmp_path/'broken'/'train'/'normal').mkdir(parents=True)  # a chest-CT layout without a single image
    fails(mv('train', RECIPE, '--data', tmp_path/'broken', '--out', run, '--overwrite', *TRAIN), 'no images')
    assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ['broken', 'run']  # no staging left
    fails(mv('train', RECIPE, '--data', d/'data', '--out', run, *TRAIN), 'already holds a run', '--overwrite')
    # a lock left by a process that no longer runs is taken over; --overwrite with good data replaces the run
    (run/'.medvision-train.lock').write_text(f"{2**22 + 12345} {os.uname().nodename}\n")
    r = ok(mv('train', RECIPE, '--data', d/'data', '--out', run, '--overwrite', '--epochs', 1, '--seed', 7, *TRAIN))
    assert 'stale lock' in r.stdout and not (run/'.medvision-train.lock').exists()
    assert json.loads((run/'recipe.json').read_text())['recipe']['seed'] == 7 and snapshot(run)['model.pth'] != before['model.pth']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['broken', 'run']


def test_second_train_into_the_same_out_fails_at_once(chest, tmp_path):
    d, _ = chest
    from medvision.recipes.core import get_recipe
    get_recipe(RECIPE).replace(name='cc-long', patience=None, epochs=500).to_json(tmp_path/'long.json')  # no early stop
    first = popen('train', tmp_path/'long.json', '--data', d/'data', '--out', tmp_path/'run', *TRAIN)  # stopped below
    try:
        assert wait_for(lambda: (tmp_path/'run'/'.medvision-train.lock').exists(), first), first.communicate()
        fails(mv('train', RECIPE, '--data', d/'data', '--out', tmp_path/'run', *TRAIN), 'another `medvision train`', 'pid')
    finally:
        first.send_signal(signal.SIGINT); first.communicate(timeout=300)


# ---- refuse nonsense -----------------------------------------------------------------------------------------------

def test_non_finite_learning_rate(chest, tmp_path):
    d, _ = chest
    fails(mv('train', RECIPE, '--data', d/'data', '--out', tmp_path/'o', '--lr', 'inf', *TRAIN), '`lr` must be', 'finite', 'inf')
    assert not (tmp_path/'o').exists()


@pytest.mark.slow  # trains until the loss explodes
def test_diverging_run_stops_and_saves_nothing(chest, tmp_path):
    d, _ = chest
    line = fails(mv('train', RECIPE, '--data', d/'data', '--out', tmp_path/'o', '--lr', 1e30, '--epochs', 3, *TRAIN))
    assert 'epoch' in line and ('loss became nan' in line or 'diverged' in line), line
    assert not list(tmp_path.rglob('*.pth'))  # no NaN model (and no half-built run) is left anywhere


# ---- classification predict: every listed type, exit codes --------------------------------------------------------

@pytest.mark.slow  # needs a trained model (the segmentation exit codes run in the normal suite: test_cli.py)
def test_classification_predict_exit_codes(chest, model, tmp_path):
    from PIL import Image
    d, _ = chest
    src = sorted((d/'data'/'test').rglob('*.png'))[:2]
    (tmp_path/'in'/'a').mkdir(parents=True); (tmp_path/'in'/'b').mkdir()
    for sub, f in zip('ab', src): (tmp_path/'in'/sub/'scan.png').write_bytes(f.read_bytes())  # same name, two folders
    np.save(tmp_path/'in'/'slice.npy', np.asarray(Image.open(src[0]), dtype=np.float32))
    (tmp_path/'in'/'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    r = ok(mv('predict', '--model', model, tmp_path/'in', '--csv', tmp_path/'p.csv'))
    df = pd.read_csv(tmp_path/'p.csv')
    assert sorted(df['input']) == ['a/scan.png', 'b/scan.png', 'broken.png', 'slice.npy']  # .npy is not dropped
    assert df.set_index('input')['class'].notna().to_dict() == {'a/scan.png': True, 'b/scan.png': True,
                                                                 'broken.png': False, 'slice.npy': True}
    assert '1 of 4 input(s) could not be predicted' in r.stderr
    fails(mv('predict', '--model', model, tmp_path/'in'/'broken.png'), 'none of the 1 input(s) could be predicted', 'broken.png')
    fails(mv('predict', '--model', model, src[0], '--csv', tmp_path), 'is a folder', '--csv')
