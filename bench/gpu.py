#!/usr/bin/env python
"""The seed recipes at their real sizes on a GPU: seconds per step, images/s and peak memory with AMP fp16, bf16 and
fp32 (and channels_last), the full training step against the model alone, and one full epoch of covid-unetpp-b3.

Every number goes through medvision's own path: the recipe's task adapter builds the DataLoaders from synthetic data
written in the recipe's real on-disk layout (DICOMs for the body part, PNG folders for chest CT and MRI, Kaggle npy
and MedSeg NIfTI for COVID), the model and the loss; `make_learner` adds medvision's fused AdamW and fastai's
`MixedPrecision` (grad scaler for fp16). The networks are trained unfrozen (the most expensive phase) from random
weights (`pretrained=False`: the GPU machine has no internet; the timing does not depend on the weights).

- `full`: wall time of training steps through `Learner.fit` (data loading, batch transforms, callbacks, optimiser),
  timed from the end of a warm-up step to the end of the last step, with one `cuda.synchronize` at each end.
- `model_only`: the same model, loss, optimiser and precision on one batch already on the GPU (no loader, no
  callbacks): forward, backward, scaler and optimiser step. `step_over_model_only` = full / model_only (fp16).

    python bench/gpu.py                 # CUDA: full sizes, writes bench/results/gpu.json
    python bench/gpu.py --smoke         # CPU, tiny sizes (run by the tests), writes bench/results/gpu_smoke.json
    python bench/gpu.py --only mri-cnn  # one recipe
"""
from __future__ import annotations
import argparse, json, os, platform, shutil, sys, tempfile, time, traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np, pandas as pd, torch
from fastai.vision.all import Callback, CancelFitException, CancelValidException

from medvision import synth
from medvision.core import seed_everything
from medvision.learner import make_learner
from medvision.recipes.core import get_recipe, get_task

# key: (recipe, synthetic layout, file size written, items wanted (base files x replication), extra)
FULL = {
    'mri-cnn': ('seed002-cnn', 'mri-folders', 256, 640, {}),
    'chestct-resnet50': ('seed003-resnet50', 'chestct', 512, 640, {}),
    'bodypart-densenet121': ('seed000-densenet121', 'unifesp-dicom', 2048, 1024, {}),
    'covid-unetpp-b3': ('seed004-unetpp-b3', 'medseg-nifti', 512, 160, {}),
    'covid-unetpp-b2': ('seed001-unetpp-b2', 'covid-npy', 512, 256, {}),
    'chestct-inception3': ('seed003-inception3', 'chestct', 512, 640, {}),
}
EPOCH = ('covid-unetpp-b3', 'covid-npy', 512, 929)   # one full epoch: the Kaggle npy set's 100 + 829 slices
MODES = {'amp_fp16': (True, False), 'bf16': ('bf16', False), 'fp32': (False, False), 'amp_fp16_channels_last': (True, True)}


def sync():
    if torch.cuda.is_available(): torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------- synthetic data
def _write(args):
    layout, out, n, size, seed = args
    synth.SYNTH_LAYOUTS[layout](out, n=n, size=size, seed=seed)
    return out


def _link(src: Path, dst: Path):
    try: os.link(src, dst)
    except OSError: shutil.copy(src, dst)


def _grow_unifesp(root: Path, reps: int):
    "Each DICOM again under `reps - 1` new SOPInstanceUIDs (hard links) with CSV rows; studies suffixed alike."
    df = pd.read_csv(root/'train.csv', dtype=str)
    files = {p.name[:-len('-c.dcm')]: p for p in (root/'train').rglob('*-c.dcm')}
    rows = [df]
    for k in range(1, reps):
        d = df.copy()
        for c in ('SOPInstanceUID', 'StudyInstanceUID'): d[c] = d[c] + f'.{k}'
        for u in df['SOPInstanceUID']: _link(files[u], files[u].with_name(f'{u}.{k}-c.dcm'))
        rows.append(d)
    pd.concat(rows).to_csv(root/'train.csv', index=False)


def _grow_folders(root: Path, reps: int):
    "Each PNG of the train/valid class folders again under `reps - 1` new names (hard links)."
    for split in ('train', 'valid'):
        for p in sorted((root/split).rglob('*.png')):
            for k in range(1, reps): _link(p, p.with_name(f'{p.stem}_r{k}{p.suffix}'))


def _grow_npy(root: Path, n: int):
    "Tile the Kaggle npy arrays to `n` slices: 100 MedSeg + the rest Radiopedia, as in the Kaggle set."
    n_ms = min(100, n // 2)
    for src, m in (('medseg', n_ms), ('radiopedia', n - n_ms)):
        for kind in ('images', 'masks'):
            a = np.load(root/f'{kind}_{src}.npy')
            np.save(root/f'{kind}_{src}.npy', np.resize(a, (m,) + a.shape[1:]))


def _grow_nifti(root: Path, reps: int):
    "Tile the MedSeg training volume `reps` times along its slices."
    import nibabel as nib
    for f in ('tr_im.nii.gz', 'tr_mask.nii.gz'):
        im = nib.load(root/f)
        nib.save(nib.Nifti1Image(np.concatenate([np.asarray(im.dataobj)]*reps, axis=-1), im.affine), root/f)


def make_data(layout: str, out: Path, size: int, n: int, workers: int) -> Path:
    "`n` items of `layout` at `size` px in `out`: a few phantoms written in parallel, then replicated."
    base = {'unifesp-dicom': 48, 'chestct': 8, 'mri-folders': 8, 'covid-npy': 32, 'medseg-nifti': 16}[layout]
    base = min(base, n)
    if layout in ('unifesp-dicom',) and workers > 1:   # the slow phantoms: one chunk per process, merged
        chunks = [(layout, out.parent/f'{out.name}_{i}', max(1, base // workers), size, i) for i in range(workers)]
        with ProcessPoolExecutor(workers) as ex: parts = list(ex.map(_write, chunks))
        out.mkdir(parents=True)
        (out/'train').mkdir()
        pd.concat([pd.read_csv(p/'train.csv', dtype=str) for p in parts]).to_csv(out/'train.csv', index=False)
        for i, p in enumerate(parts):
            for s in (p/'train').iterdir(): s.rename(out/'train'/f'{i}_{s.name}')
            shutil.rmtree(p)
        base = sum(1 for _ in (out/'train').rglob('*-c.dcm'))
    else: _write((layout, out, base, size, 0))
    reps = max(1, -(-n // base))
    if layout == 'unifesp-dicom': _grow_unifesp(out, reps)
    elif layout in ('chestct', 'mri-folders'): _grow_folders(out, reps)
    elif layout == 'covid-npy': _grow_npy(out, n)
    elif layout == 'medseg-nifti': _grow_nifti(out, reps)
    return out


# ----------------------------------------------------------------------------------------------- timing
class StepTimer(Callback):
    "Time training steps `warm`..`warm + n` of `Learner.fit`, then stop; validation is skipped."
    order = 100
    def __init__(self, warm: int, n: int): self.warm, self.n = warm, n
    def before_fit(self): self.i, self.t0, self.t1, self.scale, self.loss = 0, None, None, None, None
    def after_batch(self):
        if not self.training: return
        self.i += 1
        if self.i == self.warm: sync(); self.t0 = time.perf_counter()
        if self.i < self.warm + self.n: return
        sync()
        self.t1 = time.perf_counter()
        sc = getattr(self.learn, 'scaler', None)   # fastai's MixedPrecision keeps its GradScaler here during fit
        self.scale = float(sc.get_scale()) if sc is not None and sc.is_enabled() else None
        self.loss = float(self.learn.loss)
        raise CancelFitException()
    def before_validate(self): raise CancelValidException()
    @property
    def s_per_step(self): return (self.t1 - self.t0) / self.n if self.t1 else None


def _batch_on(xb, dev, cl):
    xb = xb.to(dev, non_blocking=True)
    return xb.contiguous(memory_format=torch.channels_last) if cl and xb.ndim == 4 else xb


def model_only(learn, xb, yb, amp, cl: bool, warm: int, n: int) -> float:
    "Seconds per forward + backward + optimiser step on one batch already on the device."
    model, opt = learn.model, learn.opt.opt   # the torch optimiser inside medvision's AdamW wrapper
    dev = next(model.parameters()).device
    dtype = torch.bfloat16 if amp == 'bf16' else torch.float16
    use_amp = bool(amp) and dev.type == 'cuda'
    scaler = torch.amp.GradScaler('cuda', enabled=use_amp and amp is True)
    xb, yb = _batch_on(xb, dev, cl), yb.to(dev)
    model.train()
    for i in range(warm + n):
        if i == warm: sync(); t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype, enabled=use_amp):
            loss = learn.loss_func(model(xb), yb)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    sync()
    return (time.perf_counter() - t0) / n


def bench_recipe(key: str, rname: str, data: Path, size: int, warm: int, steps: int, modes: list,
                 bs: int | None = None) -> dict:
    "Every precision mode of one recipe: full step vs model-only, images/s and peak GPU memory."
    recipe = get_recipe(rname).replace(pretrained=False, size=size, **({'bs': bs} if bs else {}))
    task = get_task(recipe.task)
    seed_everything(0)
    t = time.perf_counter()
    dls = task.build_dls(recipe, data)
    setup_s = time.perf_counter() - t
    model = task.build_model(recipe, dls).to(dls.device)
    splitter = task.build_splitter(recipe, model) if callable(getattr(task, 'build_splitter', None)) else None
    xb, yb = dls.one_batch()[:2]
    res = {'recipe': rname, 'size': recipe.size, 'bs': recipe.bs, 'n_train': len(dls.train_ds), 'data': str(data.name),
           'num_workers': dls.train.fake_l.num_workers, 'dls_setup_s': round(setup_s, 2),
           'params_m': round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    for mode in modes:
        amp, cl = MODES[mode]
        model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        timer = StepTimer(warm, steps)
        learn = make_learner(dls, model, task.build_loss(recipe, dls), None, lr=1e-4, wd=recipe.wd, patience=0,
                             amp=amp, splitter=splitter, cbs=[timer], opt_kw=(recipe.extra or {}).get('opt'))
        learn.unfreeze()
        if torch.cuda.is_available(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        try:
            with learn.no_bar(), learn.no_logging(): learn.fit(10_000, 1e-4)
            full = timer.s_per_step
            mo = model_only(learn, xb, yb, amp if torch.cuda.is_available() else False, cl, warm, steps)
        except Exception as e:  # one failing mode is a finding, not the end of the run
            res[mode] = {'error': f'{type(e).__name__}: {e}'[:500], 'trace': traceback.format_exc()[-1500:]}
            print(f'{key} {mode}: FAILED {e}', flush=True)
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        res[mode] = {'s_per_step': round(full, 4) if full else None,
                     'images_per_s': round(recipe.bs / full, 1) if full else None,
                     'model_only_s_per_step': round(mo, 4),
                     'model_only_images_per_s': round(recipe.bs / mo, 1),
                     'step_over_model_only': round(full / mo, 3) if full else None,
                     'peak_mem_gb': round(peak, 2) if peak is not None else None,
                     'grad_scale': timer.scale, 'last_loss': round(timer.loss, 4) if timer.loss is not None else None}
        print(f'{key} {mode}: {res[mode]}', flush=True)
        del learn
    model.to(memory_format=torch.contiguous_format)
    first = res.get(modes[0], {})   # amp_fp16 on CUDA
    res['step_over_model_only'] = first.get('step_over_model_only')
    return res


def bench_epoch(data: Path, size: int) -> dict:
    "One full epoch (training + validation) of covid-unetpp-b3 through `train`, AMP on CUDA."
    from medvision.recipes.core import train
    out = data.parent/'epoch-run'
    t = time.perf_counter()
    r = train('covid-unetpp-b3', data, out, show_progress=False, epochs=1, size=size, pretrained=False)
    wall = time.perf_counter() - t
    return {'recipe': 'covid-unetpp-b3', 'size': size, 'n_slices': int(np.load(data/'images_medseg.npy', mmap_mode='r').shape[0]
                                                                      + np.load(data/'images_radiopedia.npy', mmap_mode='r').shape[0]),
            'train_time_s': r['train_time_s'], 'wall_s_with_setup_and_eval': round(wall, 1),
            'fg_dice_after_1_epoch': (r.get('final') or {}).get('fg_dice')}


def device_info() -> dict:
    d = {'torch': torch.__version__, 'python': platform.python_version(), 'cpus': os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        d.update(name=p.name, total_mem_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda,
                 cudnn=torch.backends.cudnn.version())
    else: d['name'] = 'cpu'
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--smoke', action='store_true', help='CPU, tiny sizes (the test suite runs this)')
    ap.add_argument('--only', nargs='*', help='recipe keys to run (default: all)')
    ap.add_argument('--no-epoch', action='store_true', help='skip the full covid-unetpp-b3 epoch')
    ap.add_argument('--steps', type=int, default=None)
    ap.add_argument('--budget', type=float, default=None, help='seconds: recipes not started by then are skipped')
    ap.add_argument('--out', default=None, help='JSON path (default bench/results/gpu.json, gpu_smoke.json with --smoke)')
    ap.add_argument('--work', default=None, help='folder for the synthetic data (default: a temporary folder)')
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not a.smoke and not cuda: ap.error('no CUDA device: run with --smoke on the CPU')
    out = Path(a.out or ROOT/'bench'/'results'/('gpu_smoke.json' if a.smoke else 'gpu.json'))
    if cuda: torch.backends.cudnn.benchmark = True
    workers = 1 if a.smoke else min(16, os.cpu_count() or 1)
    keys = a.only or list(FULL)
    unknown = set(keys) - set(FULL)
    if unknown: ap.error(f'unknown recipe keys {sorted(unknown)}; known: {list(FULL)}')
    warm, steps = (1, a.steps or 1) if a.smoke else (3, a.steps or 10)
    modes = ['fp32'] if a.smoke else list(MODES)
    res = {'device': device_info(), 'smoke': a.smoke, 'warm_steps': warm, 'timed_steps': steps,
           'method': __doc__.split('\n\n')[1].replace('\n', ' '), 'recipes': {}}
    work = Path(a.work or tempfile.mkdtemp(prefix='mv-gpu-'))

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1) + '\n')

    t_all = time.perf_counter()
    for key in keys:
        rname, layout, fsize, n, _ = FULL[key]
        if a.budget and time.perf_counter() - t_all > a.budget:
            res['recipes'][key] = {'recipe': rname, 'skipped': f'time budget of {a.budget:.0f} s spent'}
            continue
        size, bs = ((96 if 'inception' in key else 64), 4) if a.smoke else (None, None)   # Inception-V3 needs >= 75 px
        if a.smoke: fsize, n = 64, 12
        t = time.perf_counter()
        try:
            data = work/f'{key}-{layout}'
            if not data.exists(): make_data(layout, data, fsize, n, workers)
            data_s = time.perf_counter() - t
            r = bench_recipe(key, rname, data, size or get_recipe(rname).size, warm, steps, modes, bs)
            r['synth_s'] = round(data_s, 1)
        except Exception as e:
            r = {'recipe': rname, 'error': f'{type(e).__name__}: {e}'[:500], 'trace': traceback.format_exc()[-2000:]}
            print(f'{key}: FAILED {e}', flush=True)
        r['wall_s'] = round(time.perf_counter() - t, 1)
        res['recipes'][key] = r
        save()
    if a.budget and time.perf_counter() - t_all > a.budget: res['epoch'] = {'skipped': 'time budget spent'}
    elif not a.no_epoch:
        t = time.perf_counter()
        try:
            name, layout, fsize, n = EPOCH
            if a.smoke: fsize, n = 64, 12
            data = work/'epoch-covid-npy'
            if not data.exists(): make_data(layout, data, fsize, n, workers)
            res['epoch'] = bench_epoch(data, 64 if a.smoke else 384)
        except Exception as e:
            res['epoch'] = {'error': f'{type(e).__name__}: {e}'[:500], 'trace': traceback.format_exc()[-2000:]}
            print(f'epoch: FAILED {e}', flush=True)
        res['epoch']['wall_s'] = round(time.perf_counter() - t, 1)
    res['total_s'] = round(time.perf_counter() - t_all, 1)
    save()
    if a.work is None: shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=1))
    return res


if __name__ == '__main__':
    main()
