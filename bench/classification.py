"""Classification workflows: a seed-style plain PyTorch loop vs the medvision recipe, same split, same budget (issue 4).

For each workflow (`bodypart`, `chestct`, `mri`) both methods get, in one run:
- the same item table (the same split: UNIFESP grouped by StudyInstanceUID, chest CT's official train/valid folders,
  MRI NIfTI slices grouped by case) and the same validation images;
- the same network (`medvision.models.create_model(arch, pretrained=False)`: no weights can be downloaded here),
  the same image size, batch size and number of epochs, each epoch = one pass of `len(train split)` images
  (oversampling may not buy extra steps), the same threads, no DataLoader workers;
- the same selection rule: the epoch with the best validation macro F1 (Keras `ModelCheckpoint` / fastai
  `SaveModelCallback` style) and the same scoring (sklearn `f1_score(average='macro', zero_division=0)`).

seed-style loop (what the seed notebooks do, in plain PyTorch + torchvision): PIL → `Resize((s, s))` (squash; chest CT:
seed 003's aspect-preserving resize with zero padding, `ImageOps.pad`), the seed's augmentations through torchvision, `Adam(lr=1e-3)` at a constant rate, cross-entropy;
  bodypart (seed 000): percentile window (1, 99) → RGB, ImageNet normalisation, RandomResizedCrop(0.6), flips,
                        rotation 30°, lighting 0.4, RandomOverSampler on the training split;
  chestct  (seed 003): gray, rescale 1/255, horizontal flip, rotation 10°, brightness/contrast 0.1;
  mri      (seed 002): gray, rescale 1/255, shear/zoom 0.2, horizontal flip, Gaussian noise σ=0.1.
medvision: `medvision.recipes.core.train(recipe, item_table, ...)` with the recipe's own data pipeline
  (aspect-preserving pad for chest CT, fastai augmentation presets, class-balanced sampling for body part via
  the weighted sampler — the equal-budget form of oversampling), AdamW with the recipe's schedule (body part:
  one-cycle at 2e-3; chest CT and MRI: the seeds' rate 1e-3 held, then cosine-annealed — fastai's `flat_cos`).

Writes bench/results/classification.json (and prints it). Real data from ../shared/data when present (else that
workflow runs on a synthetic layout and says so); `--quick` runs all three on small synthetic layouts (< 1 min).
Usage: python bench/classification.py [--quick] [--only bodypart,chestct,mri] [--epochs N] [--size S]
"""
import argparse, json, os, platform, sys, tempfile, time, warnings
from pathlib import Path
import numpy as np, pandas as pd, torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medvision.core import shared_data, seed_everything, atomic_write_text
from medvision.models import create_model
from medvision.data.classification import read_unifesp, read_chestct, split_name
from medvision.data.mri import read_mri
from medvision.recipes.core import get_recipe, train
from medvision.learner import FROZEN_FIRST

# Budget per workflow (full run: real data, ~15 min in all on 2 free CPU cores; --quick: synthetic, < 1 min).
FULL = {'bodypart': dict(recipe='bodypart-tiny', size=64, epochs=8, bs=32, sampler='weighted'),
        'chestct':  dict(recipe='chestct-cnn', size=96, epochs=8, bs=32),
        'mri':      dict(recipe='mri-cnn', size=96, epochs=5, bs=32)}
QUICK = {'bodypart': dict(recipe='bodypart-tiny', size=48, epochs=2, bs=16, sampler='weighted'),
         'chestct':  dict(recipe='chestct-tiny', size=48, epochs=2, bs=16),
         'mri':      dict(recipe='mri-tiny', size=32, epochs=2, bs=16)}
SYNTH = {'bodypart': ('unifesp-png', dict(n=48, size=64)), 'chestct': ('chestct', dict(n=10, size=64)),
         'mri': ('mri-nifti', dict(n=3, size=32))}
REAL = {'bodypart': 'bodypart-unifesp', 'chestct': 'chest-ct', 'mri': 'mri-brats'}


def items(workflow, quick, tmp):
    "The item table of `workflow` (real data unless `quick` or absent) and a description of the data."
    root = None if quick else shared_data(REAL[workflow])
    if root is None:
        from medvision.synth import synth
        lay, kw = SYNTH[workflow]
        root, desc = synth(lay, Path(tmp)/workflow, seed=0, **kw), f"synthetic {lay} ({kw})"
    else: desc = f"real: ../shared/data/{REAL[workflow]}"
    if workflow == 'bodypart': df = read_unifesp(root, check=False, seed=0)
    elif workflow == 'chestct': df = read_chestct(root)
    else: df = read_mri(root, seed=0)
    return df, desc


# ---------------------------------------------------------------- the seed-style loop
class SeedDataset(torch.utils.data.Dataset):
    "A seed notebook's dataset: open with PIL, squash-resize, torchvision augmentations."
    def __init__(self, paths, labels, size, workflow, train):
        import torchvision.transforms as T
        self.paths, self.labels, self.workflow = list(paths), list(labels), workflow
        aug = {'bodypart': [T.RandomResizedCrop(size, scale=(0.6, 1.0)), T.RandomHorizontalFlip(), T.RandomVerticalFlip(),
                            T.RandomRotation(30), T.ColorJitter(brightness=0.4, contrast=0.4)],
               'chestct': [T.RandomHorizontalFlip(), T.RandomRotation(10), T.ColorJitter(brightness=0.1, contrast=0.1)],
               'mri': [T.RandomAffine(0, shear=11.3, scale=(0.8, 1.2)), T.RandomHorizontalFlip()]}[workflow]
        norm = [T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])] if workflow == 'bodypart' else []
        resize = [] if workflow == 'chestct' else [T.Resize((size, size))]   # chest CT: padded in __getitem__ (seed 003)
        self.tfm = T.Compose([*resize, *(aug if train else []), T.ToTensor(), *norm])
        self.train, self.size = train, size
    def __len__(self): return len(self.paths)
    def __getitem__(self, i):
        from PIL import Image
        im = Image.open(self.paths[i])
        if self.workflow == 'bodypart':   # seed 000: percentile window (1, 99) on the pixels, then RGB
            a = np.asarray(im.convert('L') if im.mode not in ('I', 'I;16', 'F') else im, dtype=np.float32)
            lo, hi = np.percentile(a, (1, 99))
            a = (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
            im = Image.fromarray(a).convert('RGB')
        else: im = im.convert('L')
        if self.workflow == 'chestct':
            from PIL import ImageOps
            im = ImageOps.pad(im, (self.size, self.size), color=0)   # keep the aspect ratio, pad with black
        x = self.tfm(im)
        if self.workflow == 'mri' and self.train: x = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)   # GaussianNoise(0.1)
        return x, self.labels[i]


def _macro(y, p):
    from sklearn.metrics import f1_score
    return float(f1_score(y, p, average='macro', zero_division=0))


def seed_loop(df, classes, workflow, arch, n_in, size, epochs, bs, seed=0):
    "Train the seed-style loop; returns the best epoch's validation scores and the time per epoch."
    seed_everything(seed)
    lut = {c: i for i, c in enumerate(classes)}
    tr, va = df[df.split == 'train'], df[df.split == 'valid']
    if workflow == 'bodypart':   # seed 000: RandomOverSampler on the training split only
        from imblearn.over_sampling import RandomOverSampler
        idx, _ = RandomOverSampler(random_state=seed).fit_resample(np.arange(len(tr)).reshape(-1, 1), tr.label.values)
        tr_os = tr.iloc[idx.ravel()]
    else: tr_os = tr
    dtr = SeedDataset(tr_os.path, tr_os.label.map(lut), size, workflow, True)
    dva = SeedDataset(va.path, va.label.map(lut), size, workflow, False)
    g = torch.Generator().manual_seed(seed)
    # one epoch = len(train split) images, whether or not the list was oversampled (equal budget)
    sampler = torch.utils.data.RandomSampler(dtr, replacement=False, num_samples=len(tr), generator=g)
    ltr = torch.utils.data.DataLoader(dtr, bs, sampler=sampler, num_workers=0, drop_last=True)
    lva = torch.utils.data.DataLoader(dva, bs, num_workers=0)
    model = create_model(arch, n_in=n_in, n_out=len(classes), pretrained=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best, times, hist = None, [], []
    for ep in range(epochs):
        t0 = time.time(); model.train()
        for xb, yb in ltr:
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(); loss.backward(); opt.step()
        model.eval(); preds = []
        with torch.no_grad():
            for xb, _ in lva: preds.append(model(xb).argmax(1))
        times.append(time.time() - t0)
        p, y = torch.cat(preds).numpy(), va.label.map(lut).values
        sc = dict(macro_f1=_macro(y, p), accuracy=float((p == y).mean()), epoch=ep)
        hist.append(round(sc['macro_f1'], 4))
        if best is None or sc['macro_f1'] > best['macro_f1']: best = sc
    return dict(macro_f1=round(best['macro_f1'], 4), accuracy=round(best['accuracy'], 4), s_per_epoch=round(float(np.mean(times)), 2),
                best_epoch=best['epoch'], valid_macro_f1_per_epoch=hist)


# ---------------------------------------------------------------- the medvision recipe
def _mean_runs(runs, seeds):
    "One run's dict, or the mean of the scores over several seeds with the per-seed values kept."
    if len(runs) == 1: return runs[0]
    keys = ('macro_f1', 'accuracy', 's_per_epoch')
    return {**{k: round(float(np.mean([r[k] for r in runs])), 4) for k in keys}, 'seeds': seeds,
            'per_seed': [{k: r[k] for k in ('macro_f1', 'accuracy', 's_per_epoch', 'best_epoch')} for r in runs]}


def medvision_run(df, cfg, out, seed=0):
    r = get_recipe(cfg['recipe'])
    # the recipe's own schedule; a frozen phase (fine_tune, head_then_last) needs a pretrained body, so from scratch
    # it becomes one-cycle
    kw = dict(size=cfg['size'], epochs=cfg['epochs'], bs=cfg['bs'], pretrained=False,
              schedule='one_cycle' if r.schedule in FROZEN_FIRST else r.schedule, seed=seed)
    if 'sampler' in cfg: kw['sampler'] = cfg['sampler']
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        res = train(r, df, out, show_progress=False, **kw)
    f = res['final']
    hist = [round(h.get('macro_f1', float('nan')), 4) for h in res['history']]
    return dict(macro_f1=round(f['macro_f1'], 4), accuracy=round(f['accuracy'], 4),
                s_per_epoch=round(res['train_time_s'] / max(1, res['epochs_run']), 2), best_epoch=res['best_epoch'],
                valid_macro_f1_per_epoch=hist, **({'volumes': f['volumes']} if 'volumes' in f else {})), r, kw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='small synthetic layouts, < 1 min')
    ap.add_argument('--only', default='bodypart,chestct,mri')
    ap.add_argument('--epochs', type=int); ap.add_argument('--size', type=int)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--seeds', default='0', help='comma-separated seeds; scores are averaged over them (valid sets are small)')
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent/'results'/'classification.json'))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    conf = QUICK if a.quick else FULL
    t_all = time.time()
    res = {'bench': 'classification', 'quick': a.quick, 'threads': a.threads, 'cpu_count': os.cpu_count(),
           'loadavg_start': [round(x, 1) for x in os.getloadavg()],
           'torch': torch.__version__, 'python': platform.python_version(), 'pretrained': False,
           'budget': 'same split, network, image size, batch size and epochs (one epoch = len(train split) images) for both',
           'selection': 'epoch with the best validation macro F1, for both', 'workflows': {}}
    with tempfile.TemporaryDirectory() as tmp:
        for wf in a.only.split(','):
            cfg = dict(conf[wf])
            if a.epochs: cfg['epochs'] = a.epochs
            if a.size: cfg['size'] = a.size
            t0 = time.time()
            df, desc = items(wf, a.quick, tmp)
            r = get_recipe(cfg['recipe'])
            classes = list(df.attrs['classes'])
            print(f"[{wf}] {desc}: {split_name(df)}; {(df.split=='train').sum()} train / {(df.split=='valid').sum()} valid", flush=True)
            seeds, mvs = [], []
            for sd in [int(x) for x in a.seeds.split(',')]:
                seeds.append(seed_loop(df, classes, wf, r.arch, r.n_in, cfg['size'], cfg['epochs'], cfg['bs'], seed=sd))
                print(f"[{wf}] seed {sd} seed-style: {seeds[-1]}", flush=True)
                mv, r2, kw = medvision_run(df, cfg, Path(tmp)/f"{wf}-model-{sd}", seed=sd)
                mvs.append(mv)
                print(f"[{wf}] seed {sd} medvision : {mv}", flush=True)
            seed, mv = _mean_runs(seeds, a.seeds), _mean_runs(mvs, a.seeds)
            res['workflows'][wf] = {
                'data': desc, 'split': split_name(df),
                'n_train': int((df.split == 'train').sum()), 'n_valid': int((df.split == 'valid').sum()), 'classes': classes,
                'settings': dict(arch=r.arch, n_in=r.n_in, size=cfg['size'], bs=cfg['bs'], epochs=cfg['epochs'], pretrained=False,
                                 seed_loop='Adam lr 1e-3 constant, ' + ('aspect-preserving pad' if wf == 'chestct' else 'squash') +
                                           ' resize, seed augmentations (torchvision)',
                                 medvision=f"recipe {r.name} with overrides {kw}: augs {r.augs}, resize {r.extra.get('resize', 'crop')}, "
                                           f"sampler {kw.get('sampler', r.sampler)}, {kw['schedule']} AdamW lr {r.lr}"),
                'seed': seed, 'medvision': mv, 'medvision_ge_seed': mv['macro_f1'] >= seed['macro_f1'],
                'wall_s': round(time.time() - t0, 1)}
    res['total_s'] = round(time.time() - t_all, 1)
    res['loadavg_end'] = [round(x, 1) for x in os.getloadavg()]   # other processes on the machine inflate s_per_epoch
    txt = json.dumps(res, indent=2)
    if not a.quick or a.out != ap.get_default('out'):
        atomic_write_text(txt + '\n', a.out)
    else:
        atomic_write_text(txt + '\n', Path(a.out).with_name('classification-quick.json'))
    print(txt)
    return res


if __name__ == '__main__': main()
