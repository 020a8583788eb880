"The lessons keep their saved outputs (tables, printed results, images) small enough for the docs pages."
import json, re
from pathlib import Path

NBS = Path(__file__).resolve().parents[1]/'nbs'


def test_saved_outputs_stay_small():
    big = [(f.name, c.get('id')) for f in sorted(NBS.glob('*.ipynb')) for c in json.loads(f.read_text())['cells']
           if c['cell_type'] == 'code' and len(json.dumps(c.get('outputs', []))) > 200_000]
    assert not big, f"outputs over 200 kB: {big}"


def test_lessons_keep_outputs():
    "Most lessons show a saved output on their docs page (run `nbdev-test --save NB`, then nbdev-clean, after changing one)."
    nbs = sorted(NBS.glob('[0-9]*.ipynb'))
    with_out = [f.name for f in nbs if any(c.get('outputs') for c in json.loads(f.read_text())['cells'])]
    assert len(with_out) >= 0.8 * len(nbs), sorted(set(f.name for f in nbs) - set(with_out))
