"""DICOM → uint8 RGB throughput: medvision vs the naive per-image path, same files, same run (issue 2).

naive (per image):  pydicom.dcmread + .pixel_array + np.percentile(1, 99) + np.clip + scale + uint8
                    + PIL.Image.fromarray(...).convert('RGB')
medvision:          medvision.intensity.dicom_percentile_window (stored integers + one lookup table: bit for bit
                    read_dicom's modality LUT / MONOCHROME1 inversion + percentile_window) + to_rgb
                    → (3,H,W) uint8 (to_rgb of one channel is a broadcast view, no copy)
medvision_pil:      the same, but to_rgb of a PIL image: a PIL RGB image like the naive path's (like for like)
medvision_float:    the two-step path: read_dicom (float32 image in real units) + percentile_window + to_rgb
naive_read, medvision_read: the read step of each path alone (where the time goes)

Files: synthetic 12–16-bit CR radiographs of 2500×2000 (uncompressed, MONOCHROME2) written to a temp dir, a few
4000×3500 ones (the size of the UNIFESP originals), and the real CR/CT files of ../shared/data/dicom-corpus when
present. Each path is timed in its own process (as in a DataLoader worker), after an untimed warm-up pass (files in the page
cache); the processes alternate naive/medvision for several rounds. Outputs are compared pixel for pixel. Usage: python bench/intensity.py [--n 20] [--rounds 3]
"""
import argparse, json, os, platform, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np, pydicom
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from medvision.core import shared_data, atomic_write_text
from medvision.intensity import percentile_window, to_rgb, dicom_percentile_window

try:
    from medvision.dicom import read_dicom
    READER = 'medvision.dicom.read_dicom'
except ImportError:  # fallback named in the brief: pydicom + modality LUT
    from pydicom.pixels import apply_modality_lut
    READER = 'pydicom + apply_modality_lut'
    def read_dicom(fn):
        ds = pydicom.dcmread(fn)
        return apply_modality_lut(ds.pixel_array, ds), {}


def synth_cr(h, w, bits, seed):
    "A radiograph-like 2-D image of `bits`-bit stored values: collimated field, soft tissue, bones, noise."
    import torch, torch.nn.functional as F
    rng = np.random.default_rng(seed)
    gh, gw = h // 40, w // 40
    yy, xx = np.mgrid[0:gh, 0:gw] / np.array([gh, gw])[:, None, None]
    body = np.exp(-(((yy - .5) / .35) ** 2 + ((xx - .5) / rng.uniform(.2, .35)) ** 2))
    bone = sum(np.exp(-(((yy - rng.uniform(.2, .8)) / rng.uniform(.02, .3)) ** 2 + ((xx - rng.uniform(.2, .8)) / rng.uniform(.02, .08)) ** 2))
               for _ in range(rng.integers(2, 6)))
    low = (.08 + .45 * body + .35 * np.clip(bone, 0, 1) + .03 * rng.standard_normal((gh, gw))).astype(np.float32)
    img = F.interpolate(torch.from_numpy(low)[None, None], size=(h, w), mode='bilinear', align_corners=False)[0, 0].numpy()
    img += rng.normal(0, .012, (h, w)).astype(np.float32)
    top = 2 ** bits - 1
    img = np.clip(img * top * rng.uniform(.7, .95), 0, top)
    b = int(rng.integers(h // 30, h // 12)); img[:b] = 0; img[-b:] = 0   # collimator: unexposed borders
    return img.astype(np.uint16)


def write_cr(fn, arr, bits):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    ds = Dataset(); ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.1'   # CR Image Storage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.BodyPartExamined = 'CR', 'CHEST'
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = arr.tobytes()
    ds.save_as(fn, enforce_file_format=True)


def naive(fn):
    a = pydicom.dcmread(fn).pixel_array
    lo, hi = np.percentile(a, (1, 99))
    a = np.clip(a, lo, hi)
    u = ((a - lo) / (hi - lo) * 255).astype(np.uint8)
    return Image.fromarray(u).convert('RGB')


def medvision(fn):
    return to_rgb(dicom_percentile_window(fn, 1, 99))


def medvision_pil(fn):
    return to_rgb(Image.fromarray(dicom_percentile_window(fn, 1, 99)))


def medvision_float(fn):
    a, _ = read_dicom(fn)
    return to_rgb(percentile_window(a, 1, 99, path=fn))


def naive_read(fn): return pydicom.dcmread(fn).pixel_array      # the read step alone, to see where the time goes
def medvision_read(fn): return read_dicom(fn)[0]


PATHS = dict(naive=naive, medvision=medvision, medvision_pil=medvision_pil, medvision_float=medvision_float, naive_read=naive_read,
             medvision_read=medvision_read)


def compare(fn):
    "Pixel comparison of the naive and medvision outputs for `fn`."
    a = np.asarray(naive(fn)).astype(np.int16)
    b = np.moveaxis(np.asarray(medvision(fn)), 0, -1).astype(np.int16)
    assert np.array_equal(np.asarray(medvision_pil(fn)), np.moveaxis(np.asarray(medvision(fn)), 0, -1))
    assert np.array_equal(np.asarray(medvision_float(fn)), np.asarray(medvision(fn)))   # the fast path is exact
    if a.shape != b.shape: return dict(equal=False, note=f"shapes differ: {a.shape} vs {b.shape}")
    d = np.abs(a - b)
    return dict(equal=bool((d == 0).all()), max_abs_diff=int(d.max()), frac_diff=float((d > 0).mean()))


def worker(path, groups):
    "In a fresh process: per group of files, one untimed pass (page cache, allocator state), then time `path` on each file."
    import resource
    f, res = PATHS[path], {}
    for g, files in groups.items():
        for fn in files: f(fn)
        wall = cpu = 0.
        flt = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for fn in files:
            t, c = time.perf_counter(), time.process_time(); f(fn)
            wall += time.perf_counter() - t; cpu += time.process_time() - c
        res[g] = dict(wall=wall, cpu=cpu, faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt, n=len(files))
    return res


NO_TRIM = {'MALLOC_TRIM_THRESHOLD_': str(4 << 30), 'MALLOC_MMAP_THRESHOLD_': str(32 << 20)}


def time_paths(groups, rounds, env=None):
    """Throughput of each path on each group of files. Every path runs in its own process, as in a DataLoader worker,
    so one path's memory pattern cannot slow the other; the processes alternate (order flipped each round)."""
    import subprocess
    fd, lst = tempfile.mkstemp(suffix='.json'); os.close(fd); lst = Path(lst)
    lst.write_text(json.dumps({g: [str(f) for f in fs] for g, fs in groups.items()}))
    tot = {g: {k: dict(wall=0., cpu=0., faults=0, n=0) for k in PATHS} for g in groups}
    for r in range(rounds):
        for k in (list(PATHS) if r % 2 == 0 else list(PATHS)[::-1]):
            out = subprocess.run([sys.executable, __file__, '--worker', k, '--files', str(lst)], capture_output=True, text=True,
                                 env={**os.environ, 'OMP_NUM_THREADS': '1', **(env or {})})
            if out.returncode: raise RuntimeError(out.stderr[-3000:])
            for g, d in json.loads(out.stdout.strip().splitlines()[-1]).items():
                for m in ('wall', 'cpu', 'faults', 'n'): tot[g][k][m] += d[m]
    lst.unlink()
    res = {}
    for g, t in tot.items():
        n = t['naive']['n']
        res[g] = {**{f"{k}_images_per_s": round(v['n'] / v['wall'], 2) for k, v in t.items()},
                  'speedup': round(t['naive']['wall'] / t['medvision']['wall'], 2),
                  'speedup_pil': round(t['naive']['wall'] / t['medvision_pil']['wall'], 2),
                  'ms_per_image': {k: round(1e3 * v['wall'] / v['n'], 2) for k, v in t.items()},
                  'cpu_ms_per_image': {k: round(1e3 * v['cpu'] / v['n'], 2) for k, v in t.items()},  # less sensitive to other load
                  'speedup_cpu_time': round(t['naive']['cpu'] / t['medvision']['cpu'], 2),
                  'page_faults_per_image': {k: round(v['faults'] / v['n']) for k, v in t.items()}, 'n_timed': n}
    return res


def stages(fn, reps=5):
    "Best-of-`reps` wall ms of each step of both paths on one file, in this process (where the time goes)."
    def best(f):
        ts = []
        for _ in range(reps):
            t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
        return round(1e3 * min(ts), 2)
    a = pydicom.dcmread(fn).pixel_array; lo, hi = np.percentile(a, (1, 99))
    u = ((np.clip(a, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)
    x, _ = read_dicom(fn); w = percentile_window(x)
    return dict(naive=dict(read=best(lambda: pydicom.dcmread(fn).pixel_array), percentile=best(lambda: np.percentile(a, (1, 99))),
                           clip_scale_uint8=best(lambda: ((np.clip(a, lo, hi) - lo) / (hi - lo) * 255).astype(np.uint8)),
                           pil_rgb=best(lambda: Image.fromarray(u).convert('RGB'))),
                medvision=dict(dicom_percentile_window=best(lambda: dicom_percentile_window(fn)), to_rgb=best(lambda: to_rgb(w))),
                medvision_float=dict(read_dicom=best(lambda: read_dicom(fn)), percentile_window=best(lambda: percentile_window(x))))


def run(args, tmp):
    "Write the files into `tmp`, time both paths, return the results dict."
    groups = dict(xray=[], large=[])
    for i in range(args.n + args.n_large):
        bits = (12, 12, 14, 16)[i % 4]
        shape = (2500, 2000) if i < args.n else (4000, 3500)
        fn = tmp / f"cr{i:02d}.dcm"; write_cr(fn, synth_cr(*shape, bits, seed=i), bits)
        groups['xray' if i < args.n else 'large'].append(fn)
    corpus, real = shared_data('dicom-corpus'), {}
    if corpus is not None:
        for p in sorted(corpus.rglob('*')):
            if not (p.is_file() and p.suffix.lower() not in ('.txt', '.md') and any(k in p.name for k in ('RG', 'CT', '693'))): continue
            try: a, m = read_dicom(p)
            except Exception as e: real[p.name] = f"skipped: {e}"; continue
            if a.ndim != 2: real[p.name] = f"skipped: shape {a.shape}"; continue
            real[p.name] = dict(shape=list(a.shape), modality=m.get('Modality'), photometric=m.get('PhotometricInterpretation'), **compare(p))
            groups.setdefault('corpus', []).append(p)
    groups = {g: fs for g, fs in groups.items() if fs}

    res = dict(bench='intensity', reader=READER, n_images=len(groups['xray']), shape=[2500, 2000], bits_stored=[12, 14, 16],
               rounds=args.rounds, cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
               load_avg_before=[round(v, 2) for v in os.getloadavg()])
    t = time_paths(groups, args.rounds)
    x = t.pop('xray')
    res.update({k: x.pop(k) for k in ('medvision_images_per_s', 'naive_images_per_s', 'speedup')}, **x)
    res['outputs_equal'] = compare(groups['xray'][0])
    res['outputs_equal_all'] = all(compare(f)['equal'] for f in groups['xray'])
    res['stages_ms'] = stages(groups['xray'][0])
    if 'large' in t: res['large'] = dict(n_images=len(groups['large']), shape=[4000, 3500], **t['large'],
                                         outputs_equal_all=all(compare(f)['equal'] for f in groups['large']))
    if 'corpus' in t: res['corpus'] = dict(files=real, **t['corpus'],
                                           note="MONOCHROME1 files differ on purpose: the naive path does not invert them (medvision "
                                                "shows dense as bright); CT outputs match because a window on the image's own "
                                                "percentiles ignores the rescale intercept")
    res['malloc_no_trim'] = dict(env=NO_TRIM, note="both paths again with glibc's heap trimming off: pydicom's 10 MB read buffers "
                                 "otherwise page-fault on every image in some allocation patterns", **time_paths(
                                     {g: groups[g] for g in ('xray', 'large') if g in groups}, args.rounds, NO_TRIM))
    res['load_avg_after'] = [round(v, 2) for v in os.getloadavg()]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--n', type=int, default=20, help='synthetic 2500×2000 radiographs')
    ap.add_argument('--n-large', type=int, default=4, help='synthetic 4000×3500 radiographs')
    ap.add_argument('--rounds', type=int, default=2, help='processes per path (each times every file once)')
    ap.add_argument('--out', default=str(Path(__file__).resolve().parent / 'results' / 'intensity.json'))
    ap.add_argument('--worker', help=argparse.SUPPRESS); ap.add_argument('--files', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(Path(args.files).read_text())))); return
    tmp = Path(tempfile.mkdtemp(prefix='mv-bench-intensity-'))
    try: res = run(args, tmp)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    txt = json.dumps(res, indent=2)
    print(txt)
    atomic_write_text(txt + '\n', args.out)


if __name__ == '__main__':
    main()
