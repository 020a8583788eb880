"""Robustness of the DICOM reader: run `read_dicom` over every file of the shared DICOM corpus (when present) and
over all of pydicom's own test files. Every file must either decode or raise `MedvisionError`; any other exception
is a bug. Writes bench/results/robustness.json (and prints it).

    python bench/robustness.py
"""
import json, re, sys, time, traceback, warnings
from collections import Counter
from pathlib import Path

from pydicom.data.data_manager import DATA_ROOT

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from medvision.core import MedvisionError, atomic_write_text, shared_data
from medvision.dicom import read_dicom


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
    out = Path(__file__).parent / 'results' / 'robustness.json'
    atomic_write_text(json.dumps(res, indent=2) + '\n', out)
    print(json.dumps(res, indent=2))
    return 1 if res['other_exceptions'] else 0


if __name__ == '__main__':
    sys.exit(main())
