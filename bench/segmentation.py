#!/usr/bin/env python
"""A seed-style plain PyTorch COVID-CT training loop against the medvision recipe `covid-unetpp-b3` (issue 4).

The hand-written loop is the kind of code the seed notebooks hold (arrays in RAM, a torch Dataset with numpy
augmentation, a lesion-weighted `WeightedRandomSampler`, smp UNet++, CE + Dice + Focal, AdamW + OneCycleLR) — the
baseline medvision replaces, NOT seed 004 choice by choice: its augmentations are a generic albumentations list
(flips, 90° turns, shift-scale-rotate ±180°, brightness/contrast 0.2 at p .5), its CE is unweighted, its focal is
softmax γ 2, lr 1e-3 / wd 1e-2 and the split is the dataset's default. The faithful seed 004 pipeline
is the `seed004-unetpp-b3` recipe; `bench/fidelity.py` compares it with `covid-unetpp-b3`.

Both train on the same slices, same split, same size, epochs, batch size, learning rate and model architecture,
in one run; both are then scored by the SAME code (`medvision.metrics.seg_confusion` + `seg_summary`) on the
SAME validation slices, against the original full-resolution masks (each model's logits are upsampled to the
slice's own size, so neither pipeline's mask resizing decides the score). `s_per_step` is the median wall time
of a training step (data loading included). The two trainings alternate step by step in one process (the seed
loop is a generator advanced from a fastai callback, outside medvision's timed intervals), so on a shared,
loaded machine both see the same load; `--sequential` runs them one after the other instead.

    python bench/segmentation.py            # ../shared/data/covid-ct-png when present (CPU-sized), else synthetic
    python bench/segmentation.py --quick    # tiny synthetic covid-npy data, < 1 min
    python bench/segmentation.py --rss      # also: peak RSS over one loading epoch of a Kaggle-sized npy set

Writes bench/results/segmentation.json (and prints it); --quick writes bench/results/segmentation_quick.json, so a
smoke run never overwrites the real numbers.
"""
from __future__ import annotations
import argparse, json, math, os, platform, resource, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
import torch.nn.functional as F


# =====================================================================================================
# The seed-style loop (not seed 004 exactly, see above): arrays in RAM, a torch Dataset with albumentations-style numpy augmentation,
# WeightedRandomSampler (lesion slices x3), smp UNet++, CE + Dice + Focal, AdamW + OneCycleLR.
# (albumentations/cv2 are not installed here, so the few transforms the seed uses are written out in
# numpy/scipy/PIL with the same parameters.)
# =====================================================================================================
from PIL import Image
from scipy import ndimage
from torch.utils.data import Dataset, DataLoader, WeightedRandomSampler


def resize_img(img, size):   # cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.asarray(Image.fromarray(img.astype(np.float32), mode='F').resize((size, size), Image.BILINEAR))


def resize_mask(m, size):    # cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)
    return np.asarray(Image.fromarray(m.astype(np.uint8)).resize((size, size), Image.NEAREST))


class Compose:
    def __init__(self, tfms): self.tfms = tfms
    def __call__(self, image, mask):
        for t in self.tfms: image, mask = t(image, mask)
        return {'image': image, 'mask': mask}


class HorizontalFlip:
    def __init__(self, p=0.5): self.p = p
    def __call__(self, im, m): return (im[:, ::-1], m[:, ::-1]) if np.random.rand() < self.p else (im, m)


class VerticalFlip:
    def __init__(self, p=0.5): self.p = p
    def __call__(self, im, m): return (im[::-1], m[::-1]) if np.random.rand() < self.p else (im, m)


class RandomRotate90:
    def __init__(self, p=0.5): self.p = p
    def __call__(self, im, m):
        if np.random.rand() >= self.p: return im, m
        k = np.random.randint(4); return np.rot90(im, k), np.rot90(m, k)


class ShiftScaleRotate:
    def __init__(self, shift_limit=0.0625, scale_limit=0.1, rotate_limit=180, p=0.5):
        self.sh, self.sc, self.rot, self.p = shift_limit, scale_limit, rotate_limit, p
    def __call__(self, im, m):
        if np.random.rand() >= self.p: return im, m
        h, w = im.shape
        a = np.deg2rad(np.random.uniform(-self.rot, self.rot)); s = 1 + np.random.uniform(-self.sc, self.sc)
        dy, dx = np.random.uniform(-self.sh, self.sh, 2) * (h, w)
        rm = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) / s
        c = np.array([h / 2, w / 2]); off = c - rm @ (c + (dy, dx))
        im = ndimage.affine_transform(im, rm, off, order=1, mode='reflect')
        m = ndimage.affine_transform(m, rm, off, order=0, mode='reflect')
        return im, m


class RandomBrightnessContrast:
    def __init__(self, brightness_limit=0.2, contrast_limit=0.2, p=0.5): self.b, self.c, self.p = brightness_limit, contrast_limit, p
    def __call__(self, im, m):
        if np.random.rand() >= self.p: return im, m
        alpha = 1 + np.random.uniform(-self.c, self.c); beta = np.random.uniform(-self.b, self.b)
        return np.clip(im * alpha + beta, 0, 1), m


train_transforms = Compose([HorizontalFlip(p=0.5), VerticalFlip(p=0.5), RandomRotate90(p=0.5),
                            ShiftScaleRotate(shift_limit=0.0625, scale_limit=0.1, rotate_limit=180, p=0.5),
                            RandomBrightnessContrast(0.2, 0.2, p=0.5)])


class CovidDataset(Dataset):
    def __init__(self, images, masks, mean, std, transforms=None):
        self.images, self.masks, self.mean, self.std, self.transforms = images, masks, mean, std, transforms
    def __len__(self): return len(self.images)
    def __getitem__(self, i):
        img, mask = self.images[i], self.masks[i]
        if self.transforms is not None:
            aug = self.transforms(image=img, mask=mask); img, mask = aug['image'], aug['mask']
        img = (np.ascontiguousarray(img, dtype=np.float32) - self.mean) / self.std
        return torch.from_numpy(img)[None], torch.from_numpy(np.ascontiguousarray(mask)).long()


def dice_loss(logits, targets, eps=1.0):
    probs = logits.softmax(1)
    oh = F.one_hot(targets, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (probs * oh).sum((0, 2, 3)); union = probs.sum((0, 2, 3)) + oh.sum((0, 2, 3))
    return 1 - ((2 * inter + eps) / (union + eps)).mean()


def focal_loss(logits, targets, gamma=2.0):
    ce = F.cross_entropy(logits, targets, reduction='none')
    return ((1 - torch.exp(-ce)) ** gamma * ce).mean()


def criterion(logits, targets):
    return 0.25 * F.cross_entropy(logits, targets) + 0.5 * dice_loss(logits, targets) + 0.25 * focal_loss(logits, targets)


def dice_coef(logits, targets, n_fg):   # the seed's per-epoch validation score (lesion classes)
    p = logits.argmax(1); ds = []
    for c in range(n_fg):
        a, b = p == c, targets == c
        s = a.sum() + b.sum()
        if s > 0: ds.append(float(2 * (a & b).sum() / s))
    return float(np.mean(ds)) if ds else float('nan')


def seed_loop(src, train_items, valid_items, n_classes, n_fg, arch, size, bs, epochs, lr, seed, steps, hist, out):
    """The seed-style training loop on `src` items, as a generator that yields after every optimiser step (so a
    harness can interleave it with another run); appends step times to `steps`, epochs to `hist`, and puts the
    trained model (best epoch by the seed's own val dice) and its preprocessing into `out`."""
    import segmentation_models_pytorch as smp
    torch.manual_seed(seed); np.random.seed(seed)
    lo, hi = src.window
    def load(items):   # the seed loads every slice into RAM once: window, resize
        ims = np.stack([resize_img((np.clip(src.read_image(it), lo, hi) - lo) / (hi - lo), size) for it in items])
        ms = np.stack([resize_mask(src.read_mask(it), size) for it in items])
        return ims.astype(np.float32), ms
    Xtr, Ytr = load(train_items); Xva, Yva = load(valid_items)
    mean, std = float(Xtr.mean()), float(Xtr.std())
    weights = np.where((Ytr < n_fg).any((1, 2)), 3.0, 1.0)
    sampler = WeightedRandomSampler(torch.tensor(weights, dtype=torch.double), num_samples=len(Xtr), replacement=True)
    train_loader = DataLoader(CovidDataset(Xtr, Ytr, mean, std, train_transforms), batch_size=bs, sampler=sampler, drop_last=True)
    valid_loader = DataLoader(CovidDataset(Xva, Yva, mean, std), batch_size=bs, shuffle=False)
    arch_cls, enc = ARCHS[arch]
    model = getattr(smp, arch_cls)(encoder_name=enc, encoder_weights=None, in_channels=1, classes=n_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=len(train_loader))
    out.update(model=model, mean=mean, std=std, seed_valid_images=Xva, steps_per_epoch=len(train_loader))
    yield 'ready'
    best, best_state = -1, None
    for epoch in range(epochs):
        model.train(); tl = []
        it = iter(train_loader)
        for _ in range(len(train_loader)):
            t, c = time.perf_counter(), time.process_time()
            x, y = next(it)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward(); optimizer.step(); scheduler.step()
            tl.append(loss.item())
            steps.append((time.perf_counter() - t, time.process_time() - c))
            yield 'step'
        model.eval(); ds = []
        with torch.no_grad():
            for x, y in valid_loader: ds.append(dice_coef(model(x), y, n_fg))
        vd = float(np.nanmean(ds)) if not all(math.isnan(d) for d in ds) else float('nan')
        hist.append({'epoch': epoch, 'train_loss': float(np.mean(tl)), 'val_dice': vd})
        if vd > best: best, best_state = vd, {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None: model.load_state_dict(best_state)


ARCHS = {'unetpp-effb3': ('UnetPlusPlus', 'efficientnet-b3'), 'unetpp-effb2': ('UnetPlusPlus', 'efficientnet-b2'),
         'unet-effb3': ('Unet', 'efficientnet-b3'), 'unet-resnet18': ('Unet', 'resnet18'), 'unet-resnet34': ('Unet', 'resnet34')}


# =====================================================================================================
# medvision: the recipe through `medvision.recipes.core.train`
# =====================================================================================================
def medvision_run(src, arch, size, bs, epochs, lr, seed, out, other=None):
    """The medvision recipe via `medvision.recipes.core.train`; `other` (a generator) gets one step after each of
    medvision's training steps, outside medvision's timed intervals, so both runs see the same machine load."""
    from fastai.callback.core import Callback
    from medvision.recipes.core import train, get_recipe
    class StepTimer(Callback):
        order = 100
        def before_fit(self): self.steps = []
        def before_train(self): self.t, self.c = time.perf_counter(), time.process_time()
        def after_batch(self):
            if not self.training: return
            self.steps.append((time.perf_counter() - self.t, time.process_time() - self.c))
            if other is not None: next(other, None)
            self.t, self.c = time.perf_counter(), time.process_time()
    timer = StepTimer()
    r = get_recipe('covid-unetpp-b3')
    r = r.replace(arch=arch, size=size, bs=bs, epochs=epochs, lr=lr, seed=seed, pretrained=False, amp=False,
                  extra={**r.extra, 'num_workers': 0, 'n_overlays': 4})
    res = train(r, src, out, show_progress=False, cbs=[timer])
    if other is not None:
        for _ in other: pass            # the seed loop's last validation and best-epoch restore
    return res, timer.steps


# =====================================================================================================
# The shared scoring
# =====================================================================================================
@torch.no_grad()
def score(model, images, src, items, classes, n_fg, bs=8):
    "Set-level metrics (medvision.metrics) of `model` on preprocessed `images`, against the original masks."
    from medvision.metrics import seg_confusion, seg_summary, seg_scores
    model.eval(); conf = torch.zeros(len(classes), len(classes), dtype=torch.int64)
    for i in range(0, len(items), bs):
        xb = images[i:i + bs]
        lg = model(xb).float()
        for j, it in enumerate(items[i:i + bs]):
            m = torch.from_numpy(src.read_mask(it).astype(np.int64))
            p = F.interpolate(lg[j:j + 1], tuple(m.shape), mode='bilinear', align_corners=False).argmax(1)
            conf += seg_confusion(p, m[None], len(classes))
    s = seg_summary(conf.numpy(), n_fg)
    tab = seg_scores(conf.numpy(), classes)
    return {'fg_dice': s['fg_dice'], 'miou': s['miou'], 'mean_dice': s['mean_dice'],
            'dice_per_class': {c: (None if np.isnan(v) else round(float(v), 4)) for c, v in tab['dice'].items()}}


def medvision_valid_images(dls):
    "The medvision validation batches' images (standardised, resized), in item order."
    return torch.cat([x.as_subclass(torch.Tensor).cpu() for x, _ in dls.valid])


# =====================================================================================================
# Peak RSS over one loading epoch of a Kaggle-sized npy set (child process: ru_maxrss is a lifetime peak)
# =====================================================================================================
def write_big_npy(d, n_med=100, n_rp=829, size=512, seed=0):
    "A synthetic set with the real Kaggle arrays' shapes/dtypes (float32 HU images, float32 one-hot masks)."
    from numpy.lib.format import open_memmap
    from medvision.synth import synth_ct_slice, kaggle_onehot
    d = Path(d); d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = [synth_ct_slice(size, rng) for _ in range(8)]
    for name, n in (('medseg', n_med), ('radiopedia', n_rp)):
        if (d / f'masks_{name}.npy').exists(): continue
        im = open_memmap(d / f'images_{name}.npy', 'w+', np.float32, (n, size, size, 1))
        mk = open_memmap(d / f'masks_{name}.npy', 'w+', np.float32, (n, size, size, 4))
        for i in range(n):
            h, m = base[i % len(base)]
            im[i, ..., 0] = h + rng.normal(0, 5, h.shape).astype(np.float32)
            mk[i] = kaggle_onehot(m)
        im.flush(); mk.flush(); del im, mk
    return d


def rss_child(d, mode, size, bs):
    from medvision.data.segmentation import seg_dataloaders
    n_rp = np.load(Path(d) / 'images_radiopedia.npy', mmap_mode='r').shape[0]
    t = time.time()
    dls = seg_dataloaders(d, size=size, bs=bs, lesion_weight=3.0, device='cpu', num_workers=0,
                          source_kw={'mmap': mode == 'mmap', 'rp_boundaries': list(range(92, n_rp, 92))})
    n = 0
    for x, y in dls.train: n += len(x)
    for x, y in dls.valid: n += len(x)
    # VmHWM: the peak RSS of this process image. ru_maxrss is not usable here: Linux carries the forking parent's
    # high-water mark (which wrote the 4.9 GB files through a memmap) across fork + exec into the child.
    hwm = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')] if Path('/proc/self/status').exists() else []
    peak = int(hwm[0].split()[1]) * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({'mode': mode, 'slices': n, 'peak_rss_gb': round(peak / 1e9, 3), 'epoch_s': round(time.time() - t, 1)}))


def rss_bench(size, bs, keep):
    d = Path(os.environ.get('MEDVISION_RSS_DIR', Path(tempfile.gettempdir()) / 'medvision-rss-npy'))
    t = time.time(); write_big_npy(d); write_s = time.time() - t
    on_disk = sum(f.stat().st_size for f in d.glob('*.npy'))
    res = {'data': 'synthetic, Kaggle shapes: 100 + 829 slices, 512x512 float32 images + float32 one-hot masks',
           'bytes_on_disk_gb': round(on_disk / 1e9, 2), 'size': size, 'bs': bs, 'write_s': round(write_s, 1),
           'seed_style_in_ram_gb': round(on_disk / 1e9, 2)}
    for mode in ('read', 'mmap'):
        p = subprocess.run([sys.executable, __file__, '--rss-child', str(d), mode, '--size', str(size), '--bs', str(bs)],
                           capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '2')})
        line = [l for l in p.stdout.splitlines() if l.startswith('{')]
        res[mode] = json.loads(line[-1]) if line else {'error': p.stderr[-2000:]}
    if not keep:
        for f in d.glob('*.npy'): f.unlink()
    return res


# =====================================================================================================
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--quick', action='store_true', help='tiny synthetic covid-npy data, < 1 min')
    ap.add_argument('--data', default=None, help='dataset folder (default: shared covid-ct-png, else synthetic)')
    ap.add_argument('--arch', default=None, help=f"one of {list(ARCHS)} (default: unetpp-effb3; --quick: unet-resnet18)")
    ap.add_argument('--size', type=int, default=None); ap.add_argument('--epochs', type=int, default=None)
    ap.add_argument('--bs', type=int, default=8); ap.add_argument('--lr', type=float, default=1e-3)
    ap.add_argument('--stride', type=int, default=None, help='use every stride-th slice (CPU-sized subset)')
    ap.add_argument('--seed', type=int, default=42); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--sequential', action='store_true', help='run the two trainings one after the other (default: interleaved step by step)')
    ap.add_argument('--rss', action='store_true', help='also measure peak RSS over one loading epoch of a Kaggle-sized npy set')
    ap.add_argument('--keep-rss-data', action='store_true')
    ap.add_argument('--rss-child', nargs=2, metavar=('DIR', 'MODE'), help=argparse.SUPPRESS)
    ap.add_argument('--out', default=str(ROOT / 'bench' / 'results' / 'segmentation.json'))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.rss_child: return rss_child(a.rss_child[0], a.rss_child[1], a.size or 384, a.bs)

    from medvision.core import shared_data, seed_everything
    from medvision.data.seg_layouts import open_source
    from medvision.data.segmentation import seg_split
    from medvision.synth import write_covid_npy, covid_npy_arrays
    tmp = Path(tempfile.mkdtemp(prefix='mv-bench-seg-'))
    shared = None if (a.quick or a.data) else shared_data('covid-ct-png')
    if a.quick:
        kind, arch, size, epochs, stride = 'synthetic', a.arch or 'unet-resnet18', a.size or 64, a.epochs or 2, a.stride or 1
        path = write_covid_npy(tmp / 'covid', n=16, size=64, n_radiopedia=48, seed=0)
        src = open_source(path, rp_boundaries=np.cumsum(covid_npy_arrays(16, 64, 0, 48)['rp_volumes'])[:-1].tolist())
    elif a.data or shared is not None:
        path = Path(a.data) if a.data else shared
        kind = 'shared' if shared is not None else str(path)
        # UNet++/EfficientNet-B3 from scratch learns nothing in a CPU budget (measured: fg Dice 0.03 vs 0.002 after 6
        # epochs at 128 px, both chance); a U-Net/ResNet-18 does. `--arch unetpp-effb3` on a GPU for the seed's own network.
        arch, size, epochs, stride = a.arch or 'unet-resnet18', a.size or 128, a.epochs or 8, a.stride or 4
        src = open_source(path)
    else:
        kind, arch, size, epochs, stride = 'synthetic', a.arch or 'unetpp-effb3', a.size or 128, a.epochs or 4, a.stride or 1
        path = write_covid_npy(tmp / 'covid', n=48, size=128, n_radiopedia=192, seed=0)
        src = open_source(path, rp_boundaries=np.cumsum(covid_npy_arrays(48, 128, 0, 192)['rp_volumes'])[:-1].tolist())
    if stride > 1: src.items = src.items[::stride]      # a CPU-sized subset; volume ids are kept, so splits stay by volume
    tr, va, split_name = seg_split(src.items, src.default_split)
    train_items, valid_items = [src.items[i] for i in tr], [src.items[i] for i in va]
    classes, n_fg = list(src.classes), src.n_fg
    print(f"data {kind} ({src.layout}): {len(train_items)} train / {len(valid_items)} valid slices, split {split_name!r}; "
          f"{arch} at {size}px, {epochs} epochs, bs {a.bs}, {a.threads} threads", flush=True)

    # --- both runs, one step each in turn (same machine load for both); --sequential runs them one after the other
    ssteps, shist, sx = [], [], {}
    seed_everything(a.seed)
    gen = seed_loop(src, train_items, valid_items, len(classes), n_fg, arch, size, a.bs, epochs, a.lr, a.seed, ssteps, shist, sx)
    next(gen)                                   # load the arrays, build model/optimiser
    t = time.time()
    if a.sequential:
        for _ in gen: pass
        print(f"seed loop: {len(ssteps)} steps in {time.time() - t:.0f}s", flush=True)
    res, msteps = medvision_run(src, arch, size, a.bs, epochs, a.lr, a.seed, tmp / 'mv-model', None if a.sequential else gen)
    both_wall = time.time() - t
    print(f"medvision {len(msteps)} steps, seed loop {len(ssteps)} steps; {both_wall:.0f}s", flush=True)
    smodel = sx['model']
    from medvision.recipes.core import load_model_dir
    from medvision.recipes.segmentation import build_dls, COVID_UNETPP_B3
    _, learn = load_model_dir(tmp / 'mv-model')
    recipe = COVID_UNETPP_B3.replace(arch=arch, size=size, bs=a.bs, seed=a.seed, extra={**COVID_UNETPP_B3.extra, 'num_workers': 0})
    dls = build_dls(recipe, src, device='cpu', stats=res_stats(tmp / 'mv-model'))
    assert [str(i) for i in dls.valid_items] == [str(i) for i in valid_items], "medvision and the seed loop must validate on the same slices"

    # --- the same scoring for both
    seed_imgs = torch.from_numpy((sx['seed_valid_images'] - sx['mean']) / sx['std'])[:, None].float()
    sres = score(smodel, seed_imgs, src, valid_items, classes, n_fg, a.bs)
    mres = score(learn.model, medvision_valid_images(dls), src, valid_items, classes, n_fg, a.bs)
    med = lambda s, k=0: float(np.median([x[k] for x in s])) if s else float('nan')
    mean = lambda s, k=0: float(np.mean([x[k] for x in s])) if s else float('nan')
    out = {
        'data': 'shared' if kind == 'shared' else kind, 'layout': src.layout, 'split': split_name,
        'settings': {'arch': arch, 'size': size, 'epochs': epochs, 'bs': a.bs, 'lr': a.lr, 'stride': stride,
                     'n_train': len(train_items), 'n_valid': len(valid_items), 'threads': a.threads,
                     'pretrained': False, 'loss': 'CE 0.25 + Dice 0.5 + Focal 0.25', 'sampler': 'lesion x3',
                     'quick': a.quick, 'classes': classes, 'fg_classes': classes[:n_fg]},
        'scoring': 'medvision.metrics seg_confusion/seg_summary over the whole validation set; logits upsampled to each '
                   'slice\'s original size and compared with the original masks; best epoch of each run (seed: its own '
                   'val dice; medvision: fg_dice)',
        'seed': {**{k: round(v, 4) for k, v in sres.items() if k != 'dice_per_class'}, 'dice_per_class': sres['dice_per_class'],
                 's_per_step': round(med(ssteps), 4), 's_per_step_mean': round(mean(ssteps), 4),
                 'cpu_s_per_step': round(med(ssteps, 1), 4), 'steps': len(ssteps),
                 'train_s': round(sum(x[0] for x in ssteps), 1), 'history': shist},
        'medvision': {**{k: round(v, 4) for k, v in mres.items() if k != 'dice_per_class'}, 'dice_per_class': mres['dice_per_class'],
                      's_per_step': round(med(msteps), 4), 's_per_step_mean': round(mean(msteps), 4),
                      'cpu_s_per_step': round(med(msteps, 1), 4), 'steps': len(msteps),
                      'train_s': round(sum(x[0] for x in msteps), 1),
                      'history': [{k: h.get(k) for k in ('epoch', 'train_loss', 'valid_loss', 'fg_dice')} for h in res['history']]},
        'timing': ('s_per_step: median wall seconds per training step (data loading + forward + backward + optimiser); '
                   'the two runs alternate step by step so both see the same load' if not a.sequential else
                   's_per_step: median wall seconds per training step; runs one after the other') + '; cpu_s_per_step: process CPU seconds',
        'both_wall_s': round(both_wall, 1),
        'machine': {'cpu_count': os.cpu_count(), 'torch': torch.__version__, 'python': platform.python_version(),
                    'loadavg_at_end': [round(x, 2) for x in os.getloadavg()]},
    }
    out['targets'] = {'fg_dice_ge_seed': out['medvision']['fg_dice'] >= out['seed']['fg_dice'],
                      's_per_step_le_1.05x_seed': out['medvision']['s_per_step'] <= 1.05 * out['seed']['s_per_step']}
    if a.rss: out['rss'] = rss_bench(384, a.bs, a.keep_rss_data)
    txt = json.dumps(out, indent=2)
    print(txt)
    if not a.quick or a.out != str(ROOT / 'bench' / 'results' / 'segmentation.json'):
        Path(a.out).parent.mkdir(parents=True, exist_ok=True); Path(a.out).write_text(txt + '\n')
    else:
        q = Path(a.out).with_name('segmentation_quick.json'); q.write_text(txt + '\n')


def res_stats(model_dir):
    meta = json.loads((Path(model_dir) / 'recipe.json').read_text())
    return tuple(meta['data_info']['stats'])


if __name__ == '__main__':
    main()
