"`medvision demo` through the real entry point: the quick smoke version (fast) and the full demo (slow)."
import json, os, subprocess, sys, time
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_privacy import phi_values, leaks, output_text

REPO = Path(__file__).resolve().parents[1]


def run_demo(out, *args, timeout=1800):
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    t0 = time.time()
    r = subprocess.run([sys.executable, '-m', 'medvision.cli', 'demo', '--out', str(out), *args], capture_output=True,
                       text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    assert 'Traceback' not in r.stderr
    return r.stdout + r.stderr, time.time() - t0


def check_outputs(out, log):
    "The demo wrote its report, metrics, plots and models, printed the tables, and leaked no PHI."
    m = json.loads((out/'demo_metrics.json').read_text())
    assert set(m['tasks']) == {'segmentation', 'classification'}
    rep = (out/'report.md').read_text()
    for f in ['segmentation/model.pth', 'segmentation/recipe.json', 'segmentation/loss.png', 'classification/confusion.png',
              'classification/model.pth', 'classification/predictions/predictions.csv']:
        assert (out/f).exists(), f
    ov = sorted((out/'segmentation'/'overlays').glob('*.png'))
    assert ov and f"]({ov[0].relative_to(out).as_posix()})" in rep
    assert '](classification/confusion.png)' in rep
    assert 'fg_dice' in log and 'macro_f1' in log and 'medvision demo done' in log
    values = phi_values(sorted((out/'data'/'unifesp-dicom').rglob('*.dcm')))
    assert values
    texts = {f: t for f, t in output_text(out).items() if not f.startswith(str(out/'data'))}
    texts['log'] = log
    found = {f: v for f, v in ((f, leaks(t, values)) for f, t in texts.items()) if v}
    assert not found, f"PHI values in demo outputs: {found}"
    return m


def test_demo_quick(tmp_path):
    out = tmp_path/'demo'
    log, _ = run_demo(out, '--quick')
    m = check_outputs(out, log)
    assert m['quick'] is True
    for t in m['tasks'].values(): assert 0 <= t['value'] <= 1 and 0 < t['chance'] < 1


@pytest.mark.slow
def test_demo_learns(tmp_path):
    "The full demo (what the README's first command runs) learns both tasks well above chance."
    out = tmp_path/'demo'
    log, wall = run_demo(out)
    m = check_outputs(out, log)
    seg, cls = m['tasks']['segmentation'], m['tasks']['classification']
    print(f"demo wall {wall:.0f} s; seg fg_dice {seg['value']:.3f} (chance {seg['chance']:.3f}); "
          f"cls macro_f1 {cls['value']:.3f} (chance {cls['chance']:.3f})")
    assert seg['metric'] == 'fg_dice' and seg['value'] > max(0.3, 5*seg['chance'])
    assert cls['metric'] == 'macro_f1' and cls['value'] > max(0.6, 3*cls['chance'])
