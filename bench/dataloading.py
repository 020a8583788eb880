#!/usr/bin/env python
"""Images per second delivered to the model: today's path (decode every file every time) against the persistent
preprocessed-image cache, cold (built in this run) and warm (built before), on full-size radiographs; and the share of
a training step spent waiting for data.

- bodypart: the seed-000 recipe's loaders (`seed000-densenet121`: percentile window, 224 px crop, random oversampling,
  its augmentations) on synthetic DICOMs in the UNIFESP layout at the real size (4000 x 3500 stored values, 12-16
  bit, MONOCHROME1 and MONOCHROME2, as the real files mix them). `today`: `cache=False`; `cold`: an empty cache, so the
  time includes building it (parallel processes) and then one epoch; `warm`: one more epoch from the built cache.
  Images/s = training images delivered in one epoch / its wall time (batch transforms on this CPU included).
- data_wait_frac: a small network (ResNet-18, 224 px, batch 16) trained for a few steps through fastai on this CPU;
  wait = time from the end of one step to the arrival of the next batch; fraction = wait / step, warm cache.
- covid: COVID PNG slices (512 px, the covid-png layout) through `covid-unetpp-b3`'s loaders at 384 px: `today` =
  first epoch, `warm` = second epoch (segmentation's in-memory `ItemCache`; no persistent cache for slices yet).
- workers: the same wait measurement with 0 (the CPU default) and 2 DataLoader worker processes, today and warm.
- peak_rss_gb: peak resident memory of this process (its build processes not counted: they hold one chunk each).

    python bench/dataloading.py            # writes bench/results/dataloading.json
    python bench/dataloading.py --quick    # small and fast, writes bench/results/dataloading_quick.json
"""
from __future__ import annotations
import argparse, json, os, platform, resource, shutil, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np, torch
from PIL import Image


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def full_size_unifesp(out: Path, n: int, shape=(4000, 3500), seed: int = 0) -> Path:
    "The UNIFESP layout of `synth` (CSV, study folders, mixed photometry and bit depths), each file at `shape`."
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    from medvision import synth
    synth.write_unifesp_dicom(out, n=n, size=128, seed=seed)
    rng = np.random.default_rng(seed)
    for f in sorted(out.rglob('*-c.dcm')):
        ds = pydicom.dcmread(f)
        a = ds.pixel_array
        big = np.asarray(Image.fromarray(a.astype(np.float32), mode='F').resize(shape[::-1], Image.BILINEAR))
        hi = 2**int(ds.BitsStored) - 1
        big = np.clip(big + rng.normal(0, 0.01 * hi, big.shape), 0, hi).astype(a.dtype)
        ds.Rows, ds.Columns = big.shape
        ds.PixelData = big.tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(f, enforce_file_format=True)
    return out


def epoch_rate(dl) -> tuple:
    "(images/s, images, seconds) of one pass over `dl`."
    t, n = time.perf_counter(), 0
    for b in dl: n += len(b[0])
    s = time.perf_counter() - t
    return n / s, n, s


def bodypart(data: Path, bs: int, workers: int) -> dict:
    from medvision.recipes.core import get_recipe, get_task
    from medvision.data.cache import cache_clear
    task = get_task('classification')
    rec = get_recipe('seed000-densenet121').replace(pretrained=False, bs=bs)
    out = {}
    dls = task.build_dls(rec, data)
    rate, n, s = epoch_rate(dls.train)
    out['today'] = dict(images_per_s=round(rate, 2), images=n, seconds=round(s, 2))
    print('bodypart today', out['today'], flush=True)
    cache_clear('images')
    rc = rec.replace(extra={**rec.extra, 'cache': True})
    t = time.perf_counter()
    dls = task.build_dls(rc, data)   # builds the cache: every distinct file decoded once, in parallel
    build = time.perf_counter() - t
    rate, n, s = epoch_rate(dls.train)
    out['cold'] = dict(images_per_s=round(n / (build + s), 2), images=n, seconds=round(build + s, 2),
                       build_s=round(build, 2), distinct_files=len(dls.items_df))
    print('bodypart cold', out['cold'], flush=True)
    rate, n, s = epoch_rate(dls.train)
    out['warm'] = dict(images_per_s=round(rate, 2), images=n, seconds=round(s, 2))
    print('bodypart warm', out['warm'], flush=True)
    out['warm_speedup'] = round(out['warm']['images_per_s'] / out['today']['images_per_s'], 1)
    out['data_wait_frac'], out['data_wait'] = data_wait(dls)
    out['today_data_wait_frac'], _ = data_wait(task.build_dls(rec, data), steps=3)
    out['workers'] = {}   # the CPU default (0 workers) against 2 worker processes, each path, same network
    for nw in (0, 2):
        for name, r in (('today', rec), ('warm', rc)):
            r = r.replace(extra={**r.extra, 'num_workers': nw})
            frac, w = data_wait(task.build_dls(r, data), steps=3 if name == 'today' else 6)
            out['workers'][f'{name}_nw{nw}'] = dict(data_wait_frac=frac, step_s=w['step_s'], wait_s=w['wait_s'])
            print('workers', name, nw, out['workers'][f'{name}_nw{nw}'], flush=True)
    out['settings'] = dict(recipe=rec.name, size=rec.size, bs=bs, file_shape=[4000, 3500], workers_build=workers,
                           num_workers=dls.train.fake_l.num_workers, sampler=rec.sampler, augs=rec.augs)
    return out


def data_wait(dls, steps: int = 6) -> tuple:
    "Share of a training step (ResNet-18, AdamW, fp32 on this CPU) spent waiting for the next batch."
    import timm
    from fastai.vision.all import Callback, CancelFitException, CancelValidException
    from medvision.learner import make_learner
    from torch import nn

    class Wait(Callback):
        order = 100
        def before_fit(self): self.last, self.waits, self.steps = None, [], []
        def before_batch(self):
            if self.training and self.last is not None: self.waits.append(time.perf_counter() - self.last)
        def after_batch(self):
            if not self.training: return
            now = time.perf_counter()
            if self.last is not None: self.steps.append(now - self.last)
            self.last = now
            if len(self.steps) >= steps: raise CancelFitException()
        def before_validate(self): raise CancelValidException()

    model = timm.create_model('resnet18', pretrained=False, num_classes=len(dls.vocab), in_chans=3)
    w = Wait()
    learn = make_learner(dls, model, nn.CrossEntropyLoss(), None, patience=0, amp=False, cbs=[w])
    with learn.no_bar(), learn.no_logging(): learn.fit(100, 1e-4)
    frac = sum(w.waits) / sum(w.steps)
    return round(frac, 4), dict(steps=len(w.steps), step_s=round(float(np.median(w.steps)), 3),
                                wait_s=round(float(np.median(w.waits)), 4), network='resnet18', bs=dls.bs)


def covid(out: Path, n: int, size: int) -> dict:
    from medvision import synth
    from medvision.recipes.core import get_recipe, get_task
    data = out/'covid-png'
    synth.SYNTH_LAYOUTS['covid-png'](data, n=n, size=512, n_volumes=3)
    rec = get_recipe('covid-unetpp-b3').replace(pretrained=False, size=size)
    dls = get_task('segmentation').build_dls(rec, data)
    r1, n1, s1 = epoch_rate(dls.train)
    r2, n2, s2 = epoch_rate(dls.train)
    return dict(today=dict(images_per_s=round(r1, 2), images=n1, seconds=round(s1, 2)),
                warm=dict(images_per_s=round(r2, 2), images=n2, seconds=round(s2, 2), cache='in-memory ItemCache'),
                settings=dict(recipe=rec.name, size=size, bs=rec.bs, slices=n, slice_px=512,
                              num_workers=dls.train.fake_l.num_workers))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--files', type=int, default=None, help='distinct full-size DICOMs (default 64; --quick 24)')
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix='mv-dl-'))
    os.environ.setdefault('MEDVISION_CACHE', str(work/'cache'))
    n = a.files or (24 if a.quick else 64)
    shape = (1000, 875) if a.quick else (4000, 3500)
    res = {'machine': dict(cpus=os.cpu_count(), torch=torch.__version__, python=platform.python_version(),
                           platform=platform.platform()), 'method': __doc__.split('\n\n')[1].replace('\n', ' ')}
    try:
        t = time.perf_counter()
        data = full_size_unifesp(work/'unifesp', n, shape)
        res['synth_s'] = round(time.perf_counter() - t, 1)
        res['bodypart'] = bodypart(data, 16, os.cpu_count() or 1)
        res['bodypart']['settings']['file_shape'] = list(shape)
        res['covid'] = covid(work, 12 if a.quick else 48, 128 if a.quick else 384)
        res['peak_rss_gb'] = round(rss_gb(), 2)
    finally: shutil.rmtree(work, ignore_errors=True)
    out = ROOT/'bench'/'results'/('dataloading_quick.json' if a.quick else 'dataloading.json')
    out.write_text(json.dumps(res, indent=1) + '\n')
    print(json.dumps(res, indent=1))
    return res


if __name__ == '__main__':
    main()
