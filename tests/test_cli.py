"The `medvision` command through its real entry point (a subprocess): every subcommand and the bad-input cases."
import importlib.util, json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest

SEG_RECIPE, CLS_RECIPE = 'covid-tiny', 'bodypart-tiny'
REPO = Path(__file__).resolve().parents[1]
COMMANDS = ['recipes', 'demo', 'train', 'evaluate', 'predict', 'synth', 'dicom-info', 'anonymize', 'weights']


def mv(*args, cwd=None, timeout=600, env=None):
    "Run `python -m medvision.cli *args` (extra environment `env`); returns the CompletedProcess (text stdout/stderr)."
    env = {**os.environ, **(env or {}), 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'),
           'PYTHONWARNINGS': 'ignore::DeprecationWarning',
           'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    env.pop('MEDVISION_DEBUG', None)
    return subprocess.run([sys.executable, '-m', 'medvision.cli', *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def ok(r):
    "Assert `r` succeeded, showing its stderr when not."
    assert r.returncode == 0, f"exit {r.returncode}\nSTDOUT:\n{r.stdout[-3000:]}\nSTDERR:\n{r.stderr[-5000:]}"
    assert 'Traceback' not in r.stderr
    return r


def fails(r, *contains, code=None):
    "Assert `r` failed with exactly one `medvision: error:` line on stderr (containing `contains`) and no traceback."
    assert r.returncode != 0, f"expected failure\nSTDOUT:\n{r.stdout[-2000:]}"
    if code is not None: assert r.returncode == code, (r.returncode, r.stderr)
    assert 'Traceback' not in r.stderr + r.stdout, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith('medvision: warning:')]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith('medvision: error: '), lines[0]
    for c in contains: assert c in lines[0], (c, lines[0])
    return lines[0]


# ---- help, dispatch, usage errors -------------------------------------------------------------------------------

def test_top_level_help_and_version():
    r = ok(mv('--help'))
    for c in COMMANDS + ['tune']: assert f"\n  {c} " in r.stdout, c
    assert ok(mv()).stdout == r.stdout
    assert ok(mv('--version')).stdout.startswith('medvision ')


@pytest.mark.parametrize('cmd', COMMANDS)
def test_subcommand_help(cmd):
    r = ok(mv(cmd, '--help'))
    assert r.stdout.startswith(f'usage: medvision {cmd}'), r.stdout
    assert 'show this help message' in r.stdout


def test_unknown_command_and_bad_options():
    fails(mv('trian'), "unknown command 'trian'", "did you mean 'train'", code=2)
    fails(mv('train', SEG_RECIPE, '--out', 'x'), '--data', code=2)
    fails(mv('train', SEG_RECIPE, '--data', '.', '--out', 'x', '--epochs', 'two'), '--epochs', code=2)
    fails(mv('synth'), 'layout', code=2)


def test_debug_shows_traceback(tmp_path):
    r = mv('--debug', 'anonymize', tmp_path/'missing', tmp_path/'out')
    assert r.returncode == 1 and 'Traceback' in r.stderr and 'source not found' in r.stderr


def test_tune_hook():
    if importlib.util.find_spec('medvision.tune') is None:
        fails(mv('tune'), 'medvision.tune')
    else:
        r = ok(mv('tune', '--help'))
        assert r.stdout.startswith('usage: medvision tune')


# ---- recipes ----------------------------------------------------------------------------------------------------

def test_recipes():
    r = ok(mv('recipes'))
    for name in ['covid-unetpp-b2', 'covid-unetpp-b3', 'bodypart-densenet121', SEG_RECIPE, CLS_RECIPE]:
        assert name in r.stdout, name
    for col in ['name', 'task', 'model', 'size', 'loss', 'schedule', 'reproduces']: assert col in r.stdout.splitlines()[0]
    seg = ok(mv('recipes', '--task', 'segmentation', '--markdown')).stdout
    assert seg.startswith('| name | task |') and 'covid-unetpp-b3' in seg and 'bodypart-densenet121' not in seg
    fails(mv('recipes', '--task', 'nope'), "unknown task 'nope'")


# ---- synth ------------------------------------------------------------------------------------------------------

LAYOUT_FILES = {'covid-npy': 'images_medseg.npy', 'covid-png': 'ct', 'medseg-nifti': 'tr_im.nii.gz', 'dicom-ct': None,
                'unifesp-dicom': 'train.csv', 'unifesp-png': 'train_df.csv', 'chestct': 'train', 'mri-folders': None,
                'mri-nifti': None, 'ct-volume-nifti': 'vol_0.nii.gz', 'ct-volume-dicom': 'series_0'}

@pytest.mark.parametrize('layout', list(LAYOUT_FILES))
def test_synth(layout, tmp_path):
    r = ok(mv('synth', layout, '--out', tmp_path/layout, '--n', 6, '--size', 32, '--seed', 1))
    assert f'{layout}: ' in r.stdout and 'files written' in r.stdout
    files = [f for f in (tmp_path/layout).rglob('*') if f.is_file()]
    assert files
    if LAYOUT_FILES[layout]: assert (tmp_path/layout/LAYOUT_FILES[layout]).exists()


def test_synth_bad_layout(tmp_path):
    fails(mv('synth', 'covid-jpeg', '--out', tmp_path/'x'), "unknown layout 'covid-jpeg'", 'covid-npy')


# ---- dicom-info and anonymize -----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def dicoms(tmp_path_factory):
    "A synthetic CT series and a small UNIFESP DICOM set (both carry the fake PHI of `medvision.synth.FAKE_PHI`)."
    from medvision.synth import synth
    d = tmp_path_factory.mktemp('dicoms')
    return synth('dicom-ct', d/'ct', n=4, size=32), synth('unifesp-dicom', d/'unifesp', n=12, size=32)


def test_dicom_info(dicoms, tmp_path):
    from medvision.synth import FAKE_PHI
    ct, unifesp = dicoms
    files = sorted(f for f in ct.rglob('*') if f.is_file())
    r = ok(mv('dicom-info', ct, '--csv', tmp_path/'info.csv'))
    head = r.stdout.splitlines()[0]
    for c in ['fname', 'Modality', 'Rows', 'Columns']: assert c in head, head
    rows = [l for l in r.stdout.splitlines()[1:] if l.strip()]
    assert len(rows) >= len(files) and sum(' CT ' in l for l in rows) == len(files), r.stdout
    import pandas as pd
    df = pd.read_csv(tmp_path/'info.csv')
    assert len(df) == len(files) and set(df['Modality']) == {'CT'}
    assert 'PatientName' not in df.columns and 'PatientID' not in df.columns
    txt = r.stdout + (tmp_path/'info.csv').read_text()
    for v in ['SYNTHETIC^JANE^Q', FAKE_PHI['PatientID'], FAKE_PHI['InstitutionName']]: assert v not in txt
    r = ok(mv('dicom-info', *files[:2], '--all-cols'))
    assert len(r.stdout.strip().splitlines()) == 3
    ok(mv('dicom-info', unifesp))


def test_dicom_info_bad(dicoms, tmp_path):
    bad = tmp_path/'bad.dcm'; bad.write_text('this is not a DICOM file\n')
    fails(mv('dicom-info', bad), 'bad.dcm')
    fails(mv('dicom-info', tmp_path/'missing.dcm'), 'missing.dcm', 'not found')
    trunc = tmp_path/'trunc.dcm'
    good = next(f for f in dicoms[0].rglob('*') if f.is_file())
    trunc.write_bytes(good.read_bytes()[:300])
    mixed = tmp_path/'mixed'; mixed.mkdir()
    (mixed/'ok.dcm').write_bytes(good.read_bytes()); (mixed/'bad.dcm').write_bytes(b'garbage' * 50)
    r = mv('dicom-info', mixed)   # prints the readable rows, then one error line naming the bad file
    fails(r, '1 of 2 files unreadable', 'bad.dcm')
    assert 'ok.dcm' in r.stdout


def test_anonymize(dicoms, tmp_path):
    import pydicom
    from medvision.synth import FAKE_PHI
    ct = dicoms[0]
    src = sorted(f for f in ct.rglob('*') if f.is_file())
    r = ok(mv('anonymize', ct, tmp_path/'anon'))
    assert f'{len(src)} files anonymized' in r.stdout
    inst = lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber)
    out = sorted((tmp_path/'anon').rglob('*.dcm'), key=inst)
    src = sorted(src, key=inst)
    assert len(out) == len(src) and (tmp_path/'anon'/'deid-audit.jsonl').exists()
    assert not any(a.name in str(b) or 'ct-series' in str(b) for a, b in zip(src, out))   # names from the new UIDs only
    series = set()
    for a, b in zip(src, out):
        da, db = pydicom.dcmread(a), pydicom.dcmread(b)
        assert str(db.get('PatientName', '')) != FAKE_PHI['PatientName']
        assert db.get('InstitutionName', '') != FAKE_PHI['InstitutionName']
        assert db.SOPInstanceUID != da.SOPInstanceUID
        assert np.array_equal(da.pixel_array, db.pixel_array)
        series.add(db.SeriesInstanceUID)
    assert len(series) == 1   # UIDs replaced consistently across the series
    one = ok(mv('anonymize', src[0], tmp_path/'one.dcm'))
    assert '1 file anonymized' in one.stdout and (tmp_path/'one.dcm').exists()
    fails(mv('anonymize', tmp_path/'nope', tmp_path/'x'), 'source not found')
    fails(mv('anonymize', ct, ct), 'destination must differ')


# ---- train / evaluate / predict ---------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def seg_run(tmp_path_factory):
    "Synthetic Kaggle-npy CT, and the tiny segmentation recipe trained for 1 epoch on it through the CLI."
    d = tmp_path_factory.mktemp('seg')
    ok(mv('synth', 'covid-npy', '--out', d/'data', '--n', 8, '--size', 32))
    r = ok(mv('train', SEG_RECIPE, '--data', d/'data', '--out', d/'model', '--epochs', 1, '--size', 32, '--bs', 4,
              '--no-pretrained', '--seed', 1))
    return d, r


def test_train_segmentation(seg_run):
    d, r = seg_run
    for f in ['model.pth', 'recipe.json', 'metrics.json', 'loss.png']: assert (d/'model'/f).exists(), f
    m = json.loads((d/'model'/'metrics.json').read_text())
    assert m['recipe'] == SEG_RECIPE and m['epochs_run'] == 1 and len(m['history']) == 1 and m['split']
    assert isinstance(m['final'], dict) and m['final']
    rec = json.loads((d/'model'/'recipe.json').read_text())['recipe']
    assert rec['size'] == 32 and rec['epochs'] == 1 and rec['pretrained'] is False and rec['seed'] == 1
    assert 'final metrics' in r.stdout


def test_evaluate_segmentation(seg_run, tmp_path):
    d, _ = seg_run
    r = ok(mv('evaluate', '--model', d/'model', '--data', d/'data', '--split', 'valid', '--out', tmp_path/'ev'))
    m = json.loads((tmp_path/'ev'/'metrics.json').read_text())
    assert m['recipe'] == SEG_RECIPE and m['final'] and 'metrics on' in r.stdout
    assert any(f.suffix == '.png' for f in (tmp_path/'ev').rglob('*'))


def test_predict_segmentation(seg_run, tmp_path):
    from PIL import Image
    d, _ = seg_run
    img = np.load(d/'data'/'test_images_medseg.npy')[0, ..., 0]
    np.save(tmp_path/'slice.npy', img)
    r = ok(mv('predict', '--model', d/'model', tmp_path/'slice.npy', '--out', tmp_path/'pred', '--csv', tmp_path/'p.csv'))
    assert (tmp_path/'p.csv').exists()
    pngs, npys = list((tmp_path/'pred').rglob('*.png')), list((tmp_path/'pred').rglob('*.npy'))
    assert pngs and npys, list((tmp_path/'pred').rglob('*'))
    m = np.load(npys[0])
    assert m.shape == img.shape and m.dtype == np.uint8, (m.shape, img.shape, m.dtype)
    assert set(np.unique(m)) <= set(range(4))                 # the four seed classes
    import pandas as pd
    assert len(pd.read_csv(tmp_path/'p.csv')) == 1


def test_predict_segmentation_unique_names_and_bad_inputs(seg_run, tmp_path):
    "Issue 17: masks are named after the input's relative path (no two inputs share one); NaN/Inf/complex inputs are error rows."
    import pandas as pd
    d, _ = seg_run
    img = np.load(d/'data'/'test_images_medseg.npy')[0, ..., 0]
    inp = tmp_path/'in'; (inp/'a').mkdir(parents=True); (inp/'b').mkdir()
    good = {'a/scan.npy': img, 'b/scan.npy': img[::-1], '1.2.840.1.npy': img, '1.2.840.2.npy': img.T}
    for k, a in good.items(): np.save(inp/k, np.ascontiguousarray(a))
    for k, v in (('nan.npy', np.nan), ('inf.npy', np.inf)):
        a = img.copy(); a[2, 2] = v; np.save(inp/k, a)
    np.save(inp/'complex.npy', img.astype(np.complex64))
    r = ok(mv('predict', '--model', d/'model', inp, '--out', tmp_path/'pred', '--csv', tmp_path/'p.csv'))
    assert '3 of 7 input(s) could not be predicted' in r.stderr
    df = pd.read_csv(tmp_path/'p.csv').set_index('input')
    ok_rows = df[df['error'].isna()]
    assert sorted(ok_rows.index) == sorted(good) and len(set(ok_rows['mask_npy'])) == 4
    for k in good:   # each mask file traces back to its input and holds that input's prediction
        assert Path(ok_rows.loc[k, 'mask_npy']) == tmp_path/'pred'/f"{k}.mask.npy" and np.load(ok_rows.loc[k, 'mask_npy']).shape == img.shape
    assert 'NaN' in df.loc['nan.npy', 'error'] and 'Inf' in df.loc['inf.npy', 'error'] and 'complex' in df.loc['complex.npy', 'error']
    fails(mv('predict', '--model', d/'model', inp/'nan.npy', inp/'inf.npy', '--out', tmp_path/'p2'), 'none of the 2 input(s)', 'nan.npy')
    fails(mv('predict', '--model', d/'model', inp/'a'/'scan.npy', '--out', tmp_path/'p.csv'), 'is a file', '--out')


def test_predict_segmentation_default_out(seg_run, tmp_path):
    "Without --out, segmentation masks go to ./predictions (a class table needs no folder)."
    d, _ = seg_run
    ok(mv('predict', '--model', d/'model', d/'data'/'test_images_medseg.npy', cwd=tmp_path))
    assert list((tmp_path/'predictions').glob('*.npy')) and list((tmp_path/'predictions').glob('*.png'))


def test_resume_after_finished_run(seg_run, tmp_path):
    d, _ = seg_run
    fails(mv('train', SEG_RECIPE, '--data', d/'data', '--out', tmp_path/'never', '--resume'), 'nothing to resume')


@pytest.fixture(scope='module')
def cls_run(tmp_path_factory):
    "Synthetic UNIFESP DICOMs, and the tiny classification recipe trained for 1 epoch on them through the CLI."
    d = tmp_path_factory.mktemp('cls')
    ok(mv('synth', 'unifesp-dicom', '--out', d/'data', '--n', 24, '--size', 32))
    r = ok(mv('train', CLS_RECIPE, '--data', d/'data', '--out', d/'model', '--epochs', 1, '--size', 32, '--bs', 8,
              '--no-pretrained'))
    return d, r


def test_train_predict_classification(cls_run, tmp_path):
    import pandas as pd
    d, _ = cls_run
    m = json.loads((d/'model'/'metrics.json').read_text())
    assert m['task'] == 'classification' and m['classes'] and len(m['history']) == 1
    files = sorted((d/'data'/'test').rglob('*.dcm'))
    assert files
    r = ok(mv('predict', '--model', d/'model', d/'data'/'test', '--csv', tmp_path/'pred.csv'))
    df = pd.read_csv(tmp_path/'pred.csv')
    assert len(df) == len(files)
    assert any(c in r.stdout for c in m['classes'])


# ---- errors a user can cause ------------------------------------------------------------------------------------

def test_train_errors(seg_run, cls_run, tmp_path):
    sd, cd = seg_run[0], cls_run[0]
    fails(mv('train', 'covid-unetpp-b9', '--data', sd/'data', '--out', tmp_path/'o'), "unknown recipe 'covid-unetpp-b9'")
    fails(mv('train', SEG_RECIPE, '--data', tmp_path/'no-such-data', '--out', tmp_path/'o'), 'no-such-data', 'not found')
    # wrong layout: a segmentation recipe on a classification dataset
    fails(mv('train', SEG_RECIPE, '--data', cd/'data', '--out', tmp_path/'o', '--epochs', 1, '--size', 32, '--no-pretrained'),
          'not a known segmentation layout', "recipe 'covid-tiny' is a segmentation recipe")
    # and the reverse
    fails(mv('train', CLS_RECIPE, '--data', sd/'data', '--out', tmp_path/'o2', '--epochs', 1, '--size', 32, '--no-pretrained'),
          'train.csv', "recipe 'bodypart-tiny' is a classification recipe")


def test_model_errors(seg_run, cls_run, tmp_path):
    sd, cd = seg_run[0], cls_run[0]
    fails(mv('evaluate', '--model', tmp_path/'none', '--data', sd/'data', '--out', tmp_path/'e'), 'model folder not found')
    fails(mv('evaluate', '--model', sd/'data', '--data', sd/'data', '--out', tmp_path/'e'), 'not a medvision model folder')
    fails(mv('predict', '--model', sd/'data', sd/'data'/'images_medseg.npy'), 'not a medvision model folder')
    # model/recipe mismatch: a segmentation model on classification data, and the reverse
    fails(mv('evaluate', '--model', sd/'model', '--data', cd/'data', '--split', 'valid', '--out', tmp_path/'e'),
          'is a segmentation model', SEG_RECIPE)
    fails(mv('evaluate', '--model', cd/'model', '--data', sd/'data', '--split', 'valid', '--out', tmp_path/'e2'),
          'is a classification model', CLS_RECIPE)
    fails(mv('predict', '--model', sd/'model', tmp_path/'missing.png'), 'missing.png', 'not found')
    # weights that do not fit the recipe
    bad = tmp_path/'badmodel'; bad.mkdir()
    (bad/'recipe.json').write_text((sd/'model'/'recipe.json').read_text())
    (bad/'model.pth').write_bytes((cd/'model'/'model.pth').read_bytes())
    fails(mv('predict', '--model', bad, sd/'data'/'test_images_medseg.npy'), 'model.pth')


# ---- pickled fastai exports: refused unless --trust-pickle --------------------------------------------------------

def test_predict_fastai_export_needs_trust_pickle(tmp_path):
    "A fastai `export()` .pkl is only unpickled with --trust-pickle; the refusal says why, and with it the table is right."
    import torch.nn as nn
    from fastai.vision.all import ImageDataLoaders, Learner, Resize
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls, lvl in (('dark', 40), ('bright', 210)):
        (tmp_path/'imgs'/cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.clip(lvl + rng.normal(0, 10, (16, 16)), 0, 255).astype(np.uint8)).save(tmp_path/'imgs'/cls/f'{i}.png')
    dls = ImageDataLoaders.from_folder(tmp_path/'imgs', valid_pct=0.25, seed=0, item_tfms=Resize(16), bs=4, num_workers=0)
    learn = Learner(dls, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)), path=tmp_path)
    learn.export(tmp_path/'export.pkl')
    img = tmp_path/'imgs'/'bright'/'0.png'
    line = fails(mv('predict', '--model', tmp_path/'export.pkl', img), 'export.pkl', 'pickled fastai export', '--trust-pickle')
    assert 'arbitrary code' in line
    r = ok(mv('predict', '--model', tmp_path/'export.pkl', img, '--trust-pickle', '--csv', tmp_path/'p.csv'))
    import pandas as pd
    df = pd.read_csv(tmp_path/'p.csv')
    assert list(df.columns) == ['file', 'input', 'class', 'prob_bright', 'prob_dark'] and len(df) == 1 and df['input'][0] == '0.png'
    assert df['class'][0] in ('bright', 'dark') and abs(df.prob_bright[0] + df.prob_dark[0] - 1) < 1e-5
    assert not (tmp_path/'predictions').exists()
