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
    assert len([f for f in texts if '/anon/' in f and f.endswith('.dcm')]) == len(list(data.rglob('*.dcm')))
    texts.update({f'log{i}': t for i, t in enumerate(logs)})
    found = {f: leaks(t, values) for f, t in texts.items()}
    found = {f: v for f, v in found.items() if v}
    assert not found, f"PHI values in outputs: {found}"



# ---- PS3.15 Table E.1-1 de-identification (issue 17) --------------------------------------------------------------
# A DICOM carrying a distinctive value in every Table E.1-1 attribute pydicom's dictionary knows, at the top level and
# nested in a sequence the table does not list, goes through `medvision anonymize`; then no planted value may remain in
# any element, file or folder name, the audit log or `dicom-info` output, and each attribute's action is the table's.

def run(*args, timeout=300):
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    env.pop('MEDVISION_DEID_KEY', None)
    return subprocess.run([sys.executable, '-m', 'medvision.cli', *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def cli(capsys, monkeypatch):
    "Run the `medvision` command in this process (`medvision.cli.main`): `(exit status, stdout, stderr)`."
    from medvision.cli import main
    monkeypatch.delenv('MEDVISION_DEID_KEY', raising=False)
    def _run(*args):
        rc = main([str(a) for a in args])
        o = capsys.readouterr()
        return subprocess.CompletedProcess(args, rc, o.out, o.err)
    return _run


def _table_tags():
    "(tag, row) of every Table E.1-1 row with a fixed tag that pydicom's dictionary knows (not command/meta groups)."
    from pydicom.datadict import dictionary_has_tag
    from medvision.dicom import deid_table
    out = []
    for r in deid_table().to_dict('records'):
        if any(c in r['tag'] for c in 'xg'): continue
        t = int(r['tag'][1:5] + r['tag'][6:10], 16)
        if dictionary_has_tag(t) and t >> 16 not in (0x0000, 0x0002): out.append((t, r))
    return out


def _value(vr, n, uids):
    "A distinctive value of VR `vr` for attribute number `n`."
    import datetime
    from pydicom.dataset import Dataset
    day = (datetime.date(2011, 1, 1) + datetime.timedelta(days=n)).strftime('%Y%m%d')
    if vr == 'SQ':
        item = Dataset(); item.PatientName = f'Nested{n:04d}^Secret'; item.ReferencedSOPInstanceUID = uids(n + 90000)
        return [item]
    return {'PN': f'Secret{n:04d}^Person{n:04d}', 'DA': day, 'TM': f'1{n % 10}{n % 6}{n % 10}00.{n:06d}',
            'DT': f'{day}101010.{n:06d}', 'AS': f'{n % 900 + 100:03d}W', 'CS': f'SECRET{n:04d}', 'SH': f'SH-SECRET-{n:04d}',
            'AE': f'AESECRET{n:04d}', 'UR': f'http://secret.example/{n}', 'UI': uids(n), 'DS': f'{9000 + n}.5',
            'IS': str(700000 + n), 'US': 1000 + n, 'SS': 1000 + n, 'UL': 100000 + n, 'SL': 100000 + n, 'UV': 100000 + n,
            'SV': 100000 + n, 'FL': 1000.25 + n, 'FD': 1000.25 + n, 'AT': 0x00091000 + n,
            }.get(vr, b'SECRETBYTES%05d' % n if vr in ('OB', 'OW', 'OF', 'OD', 'OL', 'OV', 'UN') else f'LO secret value {n:04d}')


def _planted(i, base='1.2.826.0.1.3680043.8.498.77'):
    "File `i` of one study: every table attribute planted at the top level and in ReferencedSeriesSequence[0]."
    import numpy as np
    from pydicom.dataset import Dataset
    from pydicom.dataelem import DataElement
    from pydicom.datadict import dictionary_VR
    from medvision.dicom import dicom_from_array
    uids = lambda n: f'{base}.{n}' + (f'.{i}' if n in (0, 5000) else '')   # n 0 / 5000: SOP Instance UID, per file
    ds = dicom_from_array(np.arange(16, dtype=np.int16).reshape(4, 4) + i, slope=1, intercept=-1024)
    nested = Dataset()
    planted = {}
    for n, (t, r) in enumerate(_table_tags(), start=1):
        vr = dictionary_VR(t).split(' or ')[0]
        for where, d, m in (('', ds, n), ('ReferencedSeriesSequence[0].', nested, n + 5000)):
            if where and t in (0xFFFCFFFC, 0xFFFAFFFA): continue
            v = _value(vr, m, uids) if t != 0x00080018 else uids(5000 if where else 0)
            d.add(DataElement(t, vr, v)); planted[(where, r['keyword'])] = (vr, v)
    ds.ReferencedSeriesSequence = [nested]
    block = ds.private_block(0x0011, 'ACME', create=True); block.add_new(0x01, 'LO', 'PRIVATE SECRET 0001')
    ds.add(DataElement(0x60003000, 'OW', b'OVERLAYSECRET001')); ds.add(DataElement(0x60000010, 'US', 4))
    return ds, planted


def _get(ds, where, keyword):
    if where:
        seq = ds.get('ReferencedSeriesSequence')
        ds = seq[0] if seq else None
    return None if ds is None or keyword not in ds else ds[keyword]


def _is_empty(el): return el.value is None or (len(el.value) == 0 if el.VR != 'PN' else str(el.value) == '')


def _planted_strings(planted):
    "The planted values to look for as text: every non-numeric one (UIDs, dates, names, codes, bytes as latin-1)."
    out = set()
    for vr, v in planted.values():
        if vr == 'SQ' or isinstance(v, (int, float)): continue
        out.add(v.decode('latin-1') if isinstance(v, bytes) else str(v))
    return out | {'Nested0', 'PRIVATE SECRET', 'OVERLAYSECRET'}


def _leaks(text, values):
    return sorted(v for v in values if re.search(rf'(?<![\d.]){re.escape(v)}(?!\d)', text))


def test_table_agrees_with_pydicom_dictionary():
    from pydicom.datadict import keyword_for_tag, dictionary_description
    from medvision.dicom import deid_table, DEID_OPTIONS, PHI_TAGS, PS315_EDITION
    t = deid_table()
    assert len(t) >= 650 and PS315_EDITION == '2026d' and list(t.columns[6:]) == list(DEID_OPTIONS)
    assert t.tag.is_unique and set(t.basic_profile) <= {'X', 'Z', 'D', 'U', 'K', 'C', 'X/Z', 'X/D', 'Z/D', 'X/Z/D', 'X/Z/U*'}
    for o in DEID_OPTIONS: assert set(t[o]) <= {'', 'K', 'C'}, o
    norm = lambda s: re.sub(r'[^a-z0-9]', '', s.lower())
    known = 0
    for r in t.to_dict('records'):
        if any(c in r['tag'] for c in 'xg'): continue
        tag = int(r['tag'][1:5] + r['tag'][6:10], 16)
        if keyword_for_tag(tag):
            known += 1
            assert r['keyword'] == keyword_for_tag(tag), r
            assert norm(r['name']) == norm(dictionary_description(tag)), r
        assert PHI_TAGS[r['keyword']] == r['basic_profile']
    assert known >= 620   # the rest are attributes newer than pydicom's dictionary
    # the attributes issue 17 found leaking are all in the table
    for kw in ('ConsultingPhysicianName', 'ReasonForTheRequestedProcedure', 'ReasonForTheImagingServiceRequest',
               'ReasonForVisit', 'PatientInstitutionResidence', 'PersonTelecomInformation', 'StartAcquisitionDateTime',
               'ContentSequence', 'ReferencedPatientPhotoSequence'):
        assert kw in PHI_TAGS, kw


def test_every_table_attribute_is_deidentified_through_the_cli(tmp_path, cli):
    from medvision.dicom import deid_action, open_dicom
    src = tmp_path/'in'/'case'; src.mkdir(parents=True)
    files = []
    for i in range(2):
        ds, planted = _planted(i)
        ds.save_as(src/f'{i}.dcm', enforce_file_format=True); files.append(src/f'{i}.dcm')
    values = _planted_strings(planted)
    assert len(planted) > 1200 and len(values) > 1000
    r = run('anonymize', tmp_path/'in', tmp_path/'out', '--key', 'test-key')
    assert r.returncode == 0, r.stderr
    assert '2 files anonymized' in r.stdout
    outs = sorted((tmp_path/'out').rglob('*.dcm'))
    audit = tmp_path/'out'/'deid-audit.jsonl'
    assert len(outs) == 2 and audit.exists()
    rows = dict(_table_tags())
    by_kw = {row['keyword']: row for row in rows.values()}
    new = [open_dicom(f) for f in outs]
    for (where, kw), (vr, v) in planted.items():
        act = deid_action(by_kw[kw])
        got = [_get(o, where, kw) for o in new]
        for el in got:
            if act == 'X': assert el is None, (where, kw, act)
            elif act == 'Z': assert el is not None and _is_empty(el), (where, kw, act, el)
            elif act == 'D':
                assert el is not None and not _is_empty(el), (where, kw, act)
                if vr == 'SQ': assert len(el.value) == 1 and len(el.value[0]) == 0, (where, kw)
                else: assert el.value != v, (where, kw)
            elif act == 'U':
                assert el is not None, (where, kw)
                if vr == 'UI': assert str(el.value).startswith('2.25.') and el.value != v, (where, kw)
                else: assert str(el.value[0].ReferencedSOPInstanceUID).startswith('2.25.') and str(el.value[0].PatientName) == ''
            else: raise AssertionError(f'{kw}: basic profile action {act}')
        if act == 'U' and vr == 'UI' and kw != 'SOPInstanceUID':        # one old UID -> one new UID in every file
            assert got[0].value == got[1].value, (where, kw)
    for o in new:
        assert o.PatientIdentityRemoved == 'YES' and o.file_meta.MediaStorageSOPInstanceUID == o.SOPInstanceUID
        assert not any(el.tag.is_private or el.tag.group == 0x6000 for el in o.iterall())
        assert o.LongitudinalTemporalInformationModified == 'REMOVED'
    assert new[0].SOPInstanceUID != new[1].SOPInstanceUID and new[0].StudyInstanceUID == new[1].StudyInstanceUID
    info = [cli('dicom-info', tmp_path/'in', '--all-cols', '--csv', tmp_path/'info-in.csv'),
            cli('dicom-info', tmp_path/'out', '--all-cols', '--csv', tmp_path/'info-out.csv')]
    assert all(x.returncode == 0 for x in info), [x.stderr for x in info]
    texts = {'paths': '\n'.join(str(p.relative_to(tmp_path)) for p in (tmp_path/'out').rglob('*')),
             'audit': audit.read_text(), 'info-in': info[0].stdout + (tmp_path/'info-in.csv').read_text(),
             'info-out': info[1].stdout + (tmp_path/'info-out.csv').read_text(),
             **{f'out{i}': f.read_bytes().decode('latin-1') for i, f in enumerate(outs)}}
    texts['info-in'] = texts['info-in'].replace(str(tmp_path), '')      # the input's own (neutral) file names
    found = {k: _leaks(t, values) for k, t in texts.items()}
    assert not any(found.values()), {k: v[:10] for k, v in found.items() if v}
    assert 'Secret' not in texts['audit'] and '1.2.826.0.1.3680043.8.498.77' not in texts['audit'] + texts['paths']
    assert 'case' not in texts['paths'] and '0.dcm' not in texts['paths']


def test_two_calls_with_one_key_keep_a_study_together(tmp_path, cli):
    import numpy as np
    from pydicom.uid import generate_uid
    from medvision.dicom import dicom_from_array, open_dicom
    study, series = generate_uid(), generate_uid()
    for half in ('a', 'b'):
        (tmp_path/half).mkdir()
        for i in range(2):
            dicom_from_array(np.zeros((4, 4), np.int16), tmp_path/half/f'{i}.dcm', StudyInstanceUID=study,
                             SeriesInstanceUID=series, PatientID='MRN-77', PatientName='Doe^John')
    for half, key in (('a', 'k1'), ('b', 'k1'), ('b', 'other')):
        r = cli('anonymize', tmp_path/half, tmp_path/f'out-{half}-{key}', '--key', key)
        assert r.returncode == 0, r.stderr
    out = {k: [open_dicom(f) for f in sorted((tmp_path/k).rglob('*.dcm'))] for k in ('out-a-k1', 'out-b-k1', 'out-b-other')}
    ids = {k: {(str(o.StudyInstanceUID), str(o.SeriesInstanceUID), o.PatientID) for o in v} for k, v in out.items()}
    assert len(ids['out-a-k1']) == 1 and ids['out-a-k1'] == ids['out-b-k1'] != ids['out-b-other']
    folders = {k: {p.relative_to(tmp_path/k).parts[:2] for p in (tmp_path/k).rglob('*.dcm')} for k in out}
    assert folders['out-a-k1'] == folders['out-b-k1'] and study not in str(folders)
    r = cli('anonymize', tmp_path/'a', tmp_path/'out-random')                      # no key: random, and it says so
    assert r.returncode == 0 and 'no --key' in r.stdout


def test_burned_in_annotation_is_refused(tmp_path, cli):
    import numpy as np
    from medvision.dicom import dicom_from_array, open_dicom
    dicom_from_array(np.zeros((4, 4), np.uint8), tmp_path/'us.dcm', modality='US', PatientName='Doe^John')
    dicom_from_array(np.zeros((4, 4), np.int16), tmp_path/'ct.dcm', BurnedInAnnotation='YES')
    for f, why in (('us.dcm', 'BurnedInAnnotation is absent on a US image'), ('ct.dcm', 'BurnedInAnnotation is YES')):
        r = cli('anonymize', tmp_path/f, tmp_path/f'anon-{f}')
        assert r.returncode == 1 and why in r.stderr and f in r.stderr and '--allow-burned-in' in r.stderr, r.stderr
        assert not (tmp_path/f'anon-{f}').exists()
    r = cli('anonymize', tmp_path/'us.dcm', tmp_path/'anon-us.dcm', '--allow-burned-in')
    assert r.returncode == 0, r.stderr
    o = open_dicom(tmp_path/'anon-us.dcm')
    assert o.PatientIdentityRemoved == 'NO' and 'NOT removed' in o.DeidentificationMethod and str(o.PatientName) == ''


def test_anonymize_fails_when_nothing_is_written(tmp_path, cli):
    import numpy as np
    from medvision.dicom import dicom_from_array
    (tmp_path/'in').mkdir(); (tmp_path/'afile').write_text('x')
    dicom_from_array(np.zeros((4, 4), np.int16), tmp_path/'in'/'1.dcm')
    r = run('anonymize', tmp_path/'in', tmp_path/'afile'/'out')                  # DST under a file
    assert r.returncode == 1 and 'is a file, not a folder' in r.stderr, r.stderr
    r = cli('anonymize', tmp_path/'in', tmp_path/'afile')
    assert r.returncode == 1 and 'is a file' in r.stderr
    (tmp_path/'junk').mkdir(); (tmp_path/'junk'/'a.txt').write_text('not dicom')
    r = cli('anonymize', tmp_path/'junk', tmp_path/'out')
    assert r.returncode == 1 and 'no file anonymized' in r.stderr, r.stderr


def test_options_change_exactly_their_columns(tmp_path):
    "Each option keeps (K) or cleans (C) the attributes its Table E.1-1 column names, and is declared in CID 7050 codes."
    from medvision.dicom import DEID_OPTIONS, anonymize_dataset, deid_action
    by_kw = {r['keyword']: r for _, r in _table_tags()}
    for opt, (code, _) in DEID_OPTIONS.items():
        if opt == 'retain_safe_private': continue
        ds, planted = _planted(0)
        anonymize_dataset(ds, key='k', options=[opt])
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ['113100', code]
        for (where, kw), (vr, v) in planted.items():
            act, el = deid_action(by_kw[kw], [opt]), _get(ds, where, kw)
            if by_kw[kw][opt] == 'K': assert el is not None and el.value == v or vr == 'SQ', (opt, where, kw)
            elif by_kw[kw][opt] == 'C': assert el is not None, (opt, where, kw)
            else: assert act == deid_action(by_kw[kw]), (opt, kw)
    import pytest as _pt
    from medvision.core import MedvisionError
    with _pt.raises(MedvisionError, match='mutually exclusive'):
        anonymize_dataset(_planted(0)[0], options=['retain_full_dates', 'retain_modified_dates'])
    with _pt.raises(MedvisionError, match="did you mean 'retain_uids'"):
        anonymize_dataset(_planted(0)[0], options=['retain_uid'])


def test_dicom_info_csv_path_errors(tmp_path, cli):
    import numpy as np
    from medvision.dicom import dicom_from_array
    dicom_from_array(np.zeros((4, 4), np.int16), tmp_path/'a.dcm')
    (tmp_path/'afile').write_text('x')
    r = cli('dicom-info', tmp_path/'a.dcm', '--csv', tmp_path)                       # --csv at a folder
    assert r.returncode == 1 and 'is a folder: --csv needs a file name' in r.stderr and 'unexpected' not in r.stderr
    r = cli('dicom-info', tmp_path/'a.dcm', '--csv', tmp_path/'afile'/'x.csv')       # --csv under a file
    assert r.returncode == 1 and 'is a file, not a folder' in r.stderr and 'unexpected' not in r.stderr
