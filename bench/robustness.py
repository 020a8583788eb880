"""Robustness of the DICOM reader and of de-identification: run `read_dicom`, then `anonymize` (PS3.15 Table E.1-1), over
every file of the shared DICOM corpus (when present) and over all of pydicom's own test files. Every file must either
decode / be anonymized or raise `MedvisionError`; any other exception is a bug. An anonymized copy must hold no private
attribute and none of the input's values (6+ characters) of the table's attributes that the profile does not keep.
Then the hostile cases of issue 17 (crafted files and options, in-process, no training): memory-bomb
DICOMs (refused before decoding: peak RSS growth recorded), NaN/Inf/complex arrays, non-finite learning rates,
colliding prediction names, a second run on a locked output folder, a stale lock, and `--overwrite` with broken
data (the old run must survive). Each must end as its `expect` says; anything else counts as an other exception.
Writes bench/results/robustness.json (and prints it).

    python bench/robustness.py
"""
import json, os, re, resource, sys, tempfile, time, traceback, warnings
from collections import Counter
from pathlib import Path

from pydicom.data.data_manager import DATA_ROOT
from pydicom.uid import PYDICOM_ROOT_UID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medvision.core import MedvisionError, atomic_write_text, shared_data
from medvision.dicom import anonymize, open_dicom, profile_keeps, read_dicom


def corpus_files():
    "(source, path) for every file to try: the shared dicom-corpus (if present) then pydicom's test files."
    out = []
    root = shared_data('dicom-corpus')
    if root is not None: out += [('dicom-corpus', p) for p in sorted(root.rglob('*')) if p.is_file()]
    local = Path(DATA_ROOT)/'test_files'   # the installed test files only: never pydicom's downloads
    out += [('pydicom', p) for p in sorted(local.rglob('*')) if p.is_file() and p.suffix != '.py']
    return out


def _cause(msg):
    "The cause part of a MedvisionError message, without the (details), to group files by."
    head = msg.split(':')[0]
    while re.search(r'\([^()]*\)', head): head = re.sub(r'\s*\([^()]*\)', '', head)
    return head.strip()[:70]


def _strings(el):
    vals = el.value if isinstance(el.value, (list, tuple)) or type(el.value).__name__ == 'MultiValue' else [el.value]
    return {str(v or '').strip() for v in vals} - {''}


def _identifying(f):
    "Values (6+ characters) of `f`'s elements that the profile does not keep, and that no kept element also holds."
    gone, kept = set(), {PYDICOM_ROOT_UID.rstrip('.')}         # the new file meta names pydicom as implementation
    for el in open_dicom(f, header_only=True).iterall():
        if el.VR in ('SQ', 'OB', 'OW', 'UN'): continue
        (kept if profile_keeps(el) else gone).update(_strings(el))
    # not a part of a kept value (a private copy of the manufacturer...), not all zeros (the dummy time is 000000.00)
    return {v for v in gone - kept if len(v) >= 6 and v.strip('0.:') and not any(v in k for k in kept)}


def deid_cases(files, out):
    "Anonymize every file on its own: counts of written / refused (MedvisionError, by cause) / other exceptions / leaks."
    res = dict(files=0, anonymized=0, refused=0, burned_in_refused=0, other_exceptions=0, leaks=0)
    reasons, others, leaks = Counter(), [], []
    for i, (src, p) in enumerate(files):
        res['files'] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                r = anonymize(p, out/f'{i}.dcm', key='robustness')
            res['anonymized'] += 1
            o = open_dicom(r.written[0])
            text = r.written[0].read_bytes().decode('latin-1') + r.audit.read_text()
            bad = [v for v in _identifying(p) if v in text]
            if bad or any(el.tag.is_private for el in o.iterall()) or o.PatientIdentityRemoved != 'YES':
                res['leaks'] += 1; leaks.append(dict(file=f"{src}/{p.name}", values=len(bad)))
        except MedvisionError as e:
            res['refused'] += 1; res['burned_in_refused'] += 'BurnedInAnnotation' in e.msg
            reasons[_cause(e.msg)] += 1
        except Exception as e:
            res['other_exceptions'] += 1
            others.append(dict(file=str(p), exception=type(e).__name__, message=str(e)[:300],
                               where=traceback.format_exc().strip().splitlines()[-3][:200]))
    return {**res, 'refused_reasons': dict(reasons.most_common()), 'other_exception_files': others, 'leak_files': leaks}


def _rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bomb(d, rows, cols, frames=1, rle=True):
    "A tiny DICOM whose header declares `frames` x `rows` x `cols` 16-bit pixels (RLE-compressed 64x64 data, or raw)."
    import numpy as np
    from pydicom.uid import RLELossless
    from medvision.dicom import dicom_from_array
    ds = dicom_from_array(np.zeros((64, 64), np.uint16))
    if rle: ds.compress(RLELossless)
    ds.Rows, ds.Columns = rows, cols
    if frames > 1: ds.NumberOfFrames = frames
    f = d / f"bomb-{rows}x{cols}x{frames}{'-rle' if rle else ''}.dcm"
    ds.save_as(f)
    return f


def hostile_cases(d):
    "(name, expect, callable) for every crafted case; `expect` is 'MedvisionError' or 'ok'."
    import numpy as np
    from medvision.io import read_image
    from medvision.recipes.core import Recipe, input_keys, run_lock, train
    d = Path(d)
    cases = []
    for r, c, n, rle in [(20000, 20000, 1, True), (60000, 60000, 1, True), (512, 512, 4096, True), (20000, 20000, 1, False)]:
        f = _bomb(d, r, c, n, rle)
        cases.append((f"dicom bomb {r}x{c}x{n}{' RLE' if rle else ' raw'} ({f.stat().st_size} B)", 'MedvisionError',
                      lambda f=f: read_dicom(f)))
    for name, val in [('nan', np.nan), ('inf', np.inf), ('-inf', -np.inf)]:
        a = np.zeros((32, 32), np.float32); a[3, 3] = val
        np.save(d / f"{name}.npy", a)
        cases.append((f".npy with {name}", 'MedvisionError', lambda f=d/f"{name}.npy": read_image(f)))
    np.save(d / 'complex.npy', np.zeros((32, 32), np.complex64))
    cases.append(('.npy complex', 'MedvisionError', lambda: read_image(d / 'complex.npy')))
    for lr in (float('inf'), float('nan'), -1.0, 0.0):
        cases.append((f"recipe lr={lr}", 'MedvisionError', lambda lr=lr: Recipe('x', 'classification', lr=lr)))
    cases.append(("recipe wd=inf", 'MedvisionError', lambda: Recipe('x', 'classification', wd=float('inf'))))
    def collide():
        names = ['1.2.840.1.dcm', '1.2.840.2.dcm', 'a/scan.dcm', 'b/scan.dcm', 'scan.dcm', 'scan.png', 'a/b/scan.dcm']
        keys = input_keys([d / 'in' / n for n in names])
        assert len(set(keys)) == len(names) and keys[2] == 'a/scan.dcm', keys
    cases.append(('predict output names: 7 look-alike inputs', 'ok', collide))
    def second_lock():
        with run_lock(d / 'locked'):
            with run_lock(d / 'locked'): pass
    cases.append(('second train on a locked --out', 'MedvisionError', second_lock))
    def stale_lock():
        (d / 'stale').mkdir()
        (d / 'stale' / '.medvision-train.lock').write_text(f"{2**22 + 12345} {os.uname().nodename}\n")  # a pid that does not run
        with run_lock(d / 'stale'): pass
        assert not (d / 'stale' / '.medvision-train.lock').exists()
    cases.append(('stale lock of a dead process', 'ok', stale_lock))
    def overwrite_broken():
        old = d / 'run'; old.mkdir()
        for n in ('model.pth', 'recipe.json', 'metrics.json'): (old / n).write_text('old run')
        (d / 'broken').mkdir()
        try: train('chestct-tiny', d / 'broken', old, overwrite=True, show_progress=False)
        finally:
            assert all((old / n).read_text() == 'old run' for n in ('model.pth', 'recipe.json', 'metrics.json'))
            assert sorted(p.name for p in old.iterdir()) == ['metrics.json', 'model.pth', 'recipe.json']
    cases.append(('--overwrite with broken data keeps the old run', 'MedvisionError', overwrite_broken))
    return cases


def run_hostile():
    "Run every hostile case; returns (rows, number of unexpected outcomes)."
    rows, bad = [], 0
    with tempfile.TemporaryDirectory() as d:
        for name, expect, f in hostile_cases(d):
            rss0, t0 = _rss_mb(), time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')
                    f()
                got, msg = 'ok', ''
            except MedvisionError as e: got, msg = 'MedvisionError', str(e)
            except Exception as e: got, msg = type(e).__name__, f"{e}"[:300]
            rows.append(dict(case=name, expect=expect, got=got, seconds=round(time.perf_counter() - t0, 3),
                             peak_rss_growth_mb=round(_rss_mb() - rss0, 1), message=msg.replace(d, '<tmp>')[:240]))
            bad += got != expect
    return rows, bad


def main():
    files = corpus_files()
    res = dict(files=0, decoded=0, clear_errors=0, other_exceptions=0)
    by_source, reasons, others, decoded = Counter(), Counter(), [], []
    t0 = time.perf_counter()
    for src, p in files:
        res['files'] += 1; by_source[src] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                x, meta = read_dicom(p)
            res['decoded'] += 1
            decoded.append(f"{src}/{p.name} {tuple(x.shape)} {meta['PhotometricInterpretation']}")
        except MedvisionError as e:
            res['clear_errors'] += 1
            reasons[_cause(e.msg)] += 1
        except Exception as e:
            res['other_exceptions'] += 1
            others.append(dict(file=str(p), exception=type(e).__name__, message=str(e)[:300],
                               where=traceback.format_exc().strip().splitlines()[-3][:200]))
    res.update(seconds=round(time.perf_counter() - t0, 2), by_source=dict(by_source),
               clear_error_reasons=dict(reasons.most_common()), other_exception_files=others,
               shared_corpus=str(shared_data('dicom-corpus')))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp: deid = deid_cases(files, Path(tmp))
    res['deid'] = {**deid, 'seconds': round(time.perf_counter() - t0, 2)}
    res['other_exceptions'] += deid['other_exceptions']


    hostile, unexpected = run_hostile()
    res.update(hostile_cases=len(hostile), hostile_as_expected=len(hostile) - unexpected, hostile=hostile)
    res['other_exceptions'] += unexpected
    out = Path(__file__).parent / 'results' / 'robustness.json'
    atomic_write_text(json.dumps(res, indent=2) + '\n', out)
    print(json.dumps(res, indent=2))
    return 1 if res['other_exceptions'] or deid['leaks'] else 0


if __name__ == '__main__':
    sys.exit(main())
