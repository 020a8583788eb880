"""Patient privacy: no patient-identifying DICOM value reaches any output of any medvision command.

The synthetic DICOMs of `medvision synth` carry known fake PHI (`medvision.synth.FAKE_PHI`, plus per-study
PatientIDs). We run the command line on them — `dicom-info`, `train`, `evaluate`, `predict`, `anonymize` — and
grep every file those commands wrote, and their stdout/stderr, for each value.

What is checked: the values of every PS3.15 profile tag (`medvision.dicom.PHI_TAGS`) found in the input files
except UIDs (the UNIFESP layout itself names folders and files by Study/Series/SOP Instance UID, and the
real competition CSV lists them, so file paths necessarily contain them) and values too short or too generic
to be identifying (`F`, `XRAY`, `1000`). Numeric values (dates, times) only match as whole numbers, so a random
digit run inside a UID or a float is not a false alarm. The inputs written by `medvision synth` are the test's
fixture, not an output under test.
"""
import os, re, subprocess, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]


def mv(*args, timeout=600):
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'),
           'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    r = subprocess.run([sys.executable, '-m', 'medvision.cli', *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout + r.stderr


def phi_values(files) -> set:
    "Identifying values found in the PS3.15-profile tags of the DICOM `files` (see the module docstring)."
    import pydicom
    from medvision.dicom import PHI_TAGS
    vals = set()
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for el in ds.iterall():
            if el.keyword not in PHI_TAGS or PHI_TAGS[el.keyword] == 'U' or el.VR in ('UI', 'SQ'): continue
            for v in (el.value if isinstance(el.value, (list, pydicom.multival.MultiValue)) else [el.value]):
                s = str(v).strip()
                if len(s) >= 6 or (len(s) >= 5 and not s.isdigit()): vals.add(s)
    # person names also as they might be printed: 'SYNTHETIC^JANE^Q' -> 'SYNTHETIC JANE Q'
    vals |= {v.replace('^', ' ').strip() for v in vals if '^' in v}
    return vals


def leaks(text:str, values) -> list:
    "The `values` found in `text` (numbers only as whole numbers)."
    found = []
    for v in values:
        pat = rf'(?<!\d)(?<!\d\.){re.escape(v)}(?!\d)(?!\.\d)' if v.replace('.', '').isdigit() else re.escape(v)
        if re.search(pat, text): found.append(v)
    return found


def output_text(folder) -> dict:
    "Every file under `folder` as text (bytes decoded as latin-1, so binary files are searched too)."
    return {str(f): f.read_bytes().decode('latin-1') for f in Path(folder).rglob('*') if f.is_file()}


def test_leak_detector_finds_planted_values(tmp_path):
    "The grep itself works: a planted value is found, a digit run inside a UID is not."
    vals = {'SYNTHETIC^JANE^Q', '19700101'}
    assert leaks('patient SYNTHETIC^JANE^Q here', vals) == ['SYNTHETIC^JANE^Q']
    assert leaks('1.2.826.0.19700101999', vals) == [] and leaks('born 19700101.', vals) == ['19700101']
    (tmp_path/'x.bin').write_bytes(b'\x00\x01SYN-PID-0042\xff')
    assert leaks(output_text(tmp_path)[str(tmp_path/'x.bin')], {'SYN-PID-0042'}) == ['SYN-PID-0042']


def test_no_phi_in_any_cli_output(tmp_path):
    from medvision.synth import FAKE_PHI
    data, ct, out = tmp_path/'unifesp', tmp_path/'ct', tmp_path/'out'
    mv('synth', 'unifesp-dicom', '--out', data, '--n', 24, '--size', 32)
    mv('synth', 'dicom-ct', '--out', ct, '--n', 3, '--size', 32)
    dcms = sorted(data.rglob('*.dcm')) + sorted(f for f in ct.rglob('*') if f.is_file())
    values = phi_values(dcms)
    # the inputs really carry the fake PHI the test looks for
    for k in ('PatientName', 'InstitutionName', 'ReferringPhysicianName', 'AccessionNumber', 'PatientBirthDate'):
        assert str(FAKE_PHI[k]) in values, k
    assert any(v.startswith(FAKE_PHI['PatientID']) for v in values)

    logs = [mv('dicom-info', data, ct, '--csv', out/'info.csv'),
            mv('dicom-info', *dcms[:2], '--all-cols'),
            mv('train', 'bodypart-tiny', '--data', data, '--out', out/'model', '--epochs', 1, '--size', 32, '--bs', 8,
               '--no-pretrained'),
            mv('evaluate', '--model', out/'model', '--data', data, '--split', 'valid', '--out', out/'eval'),
            mv('predict', '--model', out/'model', data/'test', '--csv', out/'pred.csv', '--out', out/'pred'),
            mv('anonymize', data, out/'anon'),
            mv('anonymize', ct, out/'anon-ct')]
    texts = output_text(out)
    # every command wrote what it should, so there was something to check
    for f in ['info.csv', 'model/metrics.json', 'model/recipe.json', 'model/model.pth', 'model/confusion.png',
              'eval/metrics.json', 'pred.csv']:
        assert str(out/f) in texts, f
    assert len([f for f in texts if '/anon/' in f]) == len(list(data.rglob('*.dcm')))
    texts.update({f'log{i}': t for i, t in enumerate(logs)})
    found = {f: leaks(t, values) for f, t in texts.items()}
    found = {f: v for f, v in found.items() if v}
    assert not found, f"PHI values in outputs: {found}"

