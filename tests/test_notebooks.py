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


def test_docs_home_page_is_the_readme():
    "`nbs/index.ipynb` (the docs site's home page, nbdev's `readme_nb`) says what README.md says, section for section."
    cells = json.loads((NBS/'index.ipynb').read_text())['cells']
    home = '\n\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'markdown')
    readme = (NBS.parent/'README.md').read_text()
    assert home.strip() == readme.strip(), "README.md and nbs/index.ipynb differ: edit both (one markdown cell per ## section)"
