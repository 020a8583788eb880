"Tests for medvision.distributed: a 2-process CPU (gloo) data-parallel training, the single-process fallback, launch commands."
import json, math
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate", reason='data-parallel training needs the distributed extra: pip install -e ".[distributed]"')

from medvision.core import MedvisionError
from medvision.recipes.core import evaluate, load_model_dir
from medvision.synth import synth
from medvision.distributed import (dist_info, is_main_process, launch, launch_command, sync_metric_state, train_distributed)

RUN_FILES = {'model.pth', 'recipe.json', 'metrics.json', 'loss.png', 'checkpoint.pth', 'per_class.csv', 'per_volume.csv', 'overlays'}


def test_two_cpu_processes_train_one_model(tmp_path):
    "2 gloo processes train covid-tiny; rank 0 alone writes; metrics cover the whole validation set; weights load in one process."
    data = synth('covid-npy', tmp_path/'covid', n=16, size=32)
    out = tmp_path/'run'
    res = launch('covid-tiny', data, out, n_procs=2, cpu=True, timeout=600, epochs=2, size=32, bs=4)
    m = json.loads((out/'metrics.json').read_text())
    assert m['distributed'] == {'world_size': 2, 'backend': 'gloo', 'device': 'cpu:0', 'bs_per_process': 4, 'global_bs': 8}
    assert res == m and m['epochs_run'] == 2 and len(m['history']) == 2
    assert all(math.isfinite(h['train_loss']) and math.isfinite(h['valid_loss']) for h in m['history'])  # both ranks got batches
    assert set(p.name for p in out.iterdir()) == RUN_FILES  # one run's files, nothing from rank 1
    # the Dice recorded during the 2-process run (each process saw half the validation set) equals a
    # single-process evaluation of the saved best weights: the per-process confusion matrices were summed
    best = m['history'][m['best_epoch']]
    ev = evaluate(out, data)['final']
    assert best['fg_dice'] == pytest.approx(ev['fg_dice'], abs=1e-6)
    assert best['miou'] == pytest.approx(ev['miou'], abs=1e-6)
    assert ev['n_images'] == m['final']['n_images']
    recipe, learn = load_model_dir(out)  # plain keys (no `module.` prefix): loads in a single process
    assert recipe.name == 'covid-tiny' and not any(k.startswith('module.') for k in learn.model.state_dict())


def test_single_process_falls_back_to_train(tmp_path):
    assert dist_info()['world_size'] == 1 and is_main_process()
    data = synth('mri-folders', tmp_path/'mri', n=8, size=32)
    res = train_distributed('mri-tiny', data, tmp_path/'one', epochs=1, size=32, bs=8)
    assert 'distributed' not in res and (tmp_path/'one'/'model.pth').exists()
    assert sync_metric_state([]) == 0  # no process group: nothing to sync


def test_launch_commands():
    c = launch_command('covid-unetpp-b3', '/data', '/out', n_procs=2, launcher='accelerate', epochs=5, pretrained=False)
    s = ' '.join(c)
    assert 'accelerate.commands.launch --num_processes 2' in s and '--multi_gpu' in s
    assert s.endswith('-m medvision.distributed covid-unetpp-b3 --data /data --out /out --epochs 5 --no-pretrained')
    c = launch_command('covid-tiny', 'd', 'o', n_procs=2, cpu=True)
    assert 'torch.distributed.run' in ' '.join(c) and '--nproc_per_node=2' in c and c[-1] == '--cpu'
    with pytest.raises(MedvisionError, match='unknown launcher'): launch_command('x', 'd', 'o', launcher='mpirun')


def test_launch_checks_before_starting_processes(tmp_path):
    with pytest.raises(MedvisionError, match="unknown recipe 'no-such-recipe'"):
        launch('no-such-recipe', tmp_path, tmp_path/'o', n_procs=2, cpu=True)
    with pytest.raises(MedvisionError, match='data folder not found'):
        launch('covid-tiny', tmp_path/'missing', tmp_path/'o', n_procs=2, cpu=True)
    with pytest.raises(MedvisionError, match='`bs` must be an integer'):
        launch('covid-tiny', tmp_path, tmp_path/'o', n_procs=2, cpu=True, bs=0)


@pytest.mark.slow
def test_launch_reports_a_process_error(tmp_path):
    (tmp_path/'empty').mkdir()
    with pytest.raises(MedvisionError, match='distributed training failed') as e:
        launch('covid-tiny', tmp_path/'empty', tmp_path/'o', n_procs=2, cpu=True, timeout=600, epochs=1)
    assert 'Traceback' not in str(e.value)  # the processes' one-line medvision errors, not the launcher's traceback
