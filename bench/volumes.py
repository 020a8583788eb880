#!/usr/bin/env python
"""Whole-volume prediction: a synthetic 512 × 512 × 300 chest CT (a DICOM series written by `medvision synth
ct-volume-dicom`, 0.7 × 0.7 × 2.5 mm, non-identity affine) through `medvision predict --format nifti,dicom-seg`
on the CPU, in a fresh subprocess whose peak RSS (VmHWM from /proc/self/status; ru_maxrss would carry the forking
parent's pages) is recorded.

The model is an UNTRAINED `covid-tiny` network (U-Net ResNet-18, 64 px input, 4 classes, 1 input slice): the
point is speed and memory of the volume path (read, reorient, slab-wise inference, resize back, NIfTI + DICOM-SEG),
not mask quality; the masks' geometry is checked exactly by the oracle tests in tests/test_recipes_volumes.py.

    python bench/volumes.py                 # 512 x 512 x 300 (writes bench/results/volumes.json)
    python bench/volumes.py --quick         # 128 x 128 x 40 smoke run (bench/results/volumes_quick.json)
"""
from __future__ import annotations
import argparse, json, os, platform, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def vm_hwm() -> int:
    "Peak resident set size of this process in bytes (VmHWM)."
    line = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')][0]
    return int(line.split()[1])*1024


def child(model, series, out, res):
    "Run `medvision predict` in this (fresh) process; write wall time and peak RSS to `res`."
    from medvision.cli import main
    t0 = time.perf_counter()
    rc = main(['predict', '--model', str(model), str(series), '--out', str(out), '--format', 'nifti,dicom-seg'])
    wall = time.perf_counter() - t0
    Path(res).write_text(json.dumps({'rc': rc, 's_per_volume': wall, 'peak_rss_bytes': vm_hwm()}))


def model_folder(d, size=64):
    "An untrained covid-tiny model folder (recipe.json + model.pth)."
    import torch
    from medvision.core import SEG_CLASSES
    from medvision.recipes.core import get_recipe, get_task, ModelDls, write_json
    from medvision.callbacks import save_weights
    r = get_recipe('covid-tiny').replace(size=size)
    info = {'window': [-1500, 500], 'stats': [0.3, 0.2], 'size': size, 'context': 0, 'units': 'HU', 'n_fg': 2,
            'layout': 'covid-npy'}
    meta = {'format': 'medvision-model-1', 'recipe': r.to_dict(), 'classes': SEG_CLASSES, 'data_info': info}
    d.mkdir(parents=True, exist_ok=True); write_json(meta, d/'recipe.json')
    torch.manual_seed(0)
    save_weights(get_task('segmentation').build_model(r, ModelDls(meta)), d/'model.pth')
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--quick', action='store_true')
    ap.add_argument('--child', nargs=4, metavar=('MODEL', 'SERIES', 'OUT', 'RES'))
    a = ap.parse_args()
    if a.child: return child(*a.child)
    size,depth = (128, 40) if a.quick else (512, 300)
    import numpy as np, nibabel as nib, highdicom as hd
    from medvision.synth import write_ct_volume_dicom
    from medvision.io import read_dicom_series
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t0 = time.perf_counter(); write_ct_volume_dicom(d/'data', n=1, size=size, depth=depth, seed=0)
        t_write = time.perf_counter() - t0
        series = d/'data'/'series_0'
        model = model_folder(d/'model')
        env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
        p = subprocess.run([sys.executable, __file__, '--child', str(model), str(series), str(d/'out'), str(d/'res.json')],
                           env=env, capture_output=True, text=True)
        if p.returncode != 0 or not (d/'res.json').exists(): sys.exit(f"child failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        r = json.loads((d/'res.json').read_text())
        if r['rc'] != 0: sys.exit(f"predict failed (exit {r['rc']}):\n{p.stderr[-3000:]}")
        _, src_aff, hs = read_dicom_series(series)
        lab = nib.load(d/'out'/'series_0_labels.nii.gz')
        diff = float(np.abs(lab.affine - src_aff).max())
        seg = hd.seg.segread(d/'out'/'series_0_seg.dcm')
        refs = sorted(u[2] for u in seg.get_source_image_uids())
        readback = seg.number_of_segments == 3 and refs == sorted(str(h.SOPInstanceUID) for h in hs)
        res = {'shape': [size, size, depth], 's_per_volume': round(r['s_per_volume'], 2),
               'peak_rss_gb': round(r['peak_rss_bytes']/2**30, 3),
               'affine_equal': bool(lab.shape == (size, size, depth) and diff <= 1e-4),
               'dicom_seg_readback': bool(readback),
               'affine_max_abs_diff_mm': diff, 'dicom_seg_frames': int(seg.NumberOfFrames),
               'model': 'untrained covid-tiny (U-Net ResNet-18, 64 px input, 1 slice, 4 classes)',
               'formats': 'nifti,dicom-seg', 'input': f'synthetic DICOM CT series ({depth} files, 0.7x0.7x2.5 mm)',
               'peak_rss_measured': 'VmHWM of a fresh subprocess running `medvision predict` (imports included)',
               's_per_volume_covers': 'medvision.cli.main(predict ...) in that subprocess: read series, infer, write NIfTI + DICOM-SEG',
               'synth_write_s': round(t_write, 1), 'device': 'cpu', 'torch_threads': None,
               'machine': f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", 'python': platform.python_version()}
    import torch; res['torch_threads'] = torch.get_num_threads()
    out = ROOT/'bench'/'results'/('volumes_quick.json' if a.quick else 'volumes.json')
    out.write_text(json.dumps(res, indent=2) + '\n')
    print(json.dumps(res, indent=2))


if __name__ == '__main__': main()
