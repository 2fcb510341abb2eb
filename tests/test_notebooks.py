"The notebooks as nbdev's docs processor reads them: it executes every cell that imports, so such cells must hold only imports."
import ast, json
from pathlib import Path
import pytest

NBS = sorted((Path(__file__).resolve().parents[1] / 'nbs').glob('*.ipynb'))


def _directives(src): return [l.strip() for l in src.splitlines() if l.strip().startswith('#|')]


def mixed_cells(nb_path):
    "Code cells (not exported) that contain an import and other statements: (index, first line of the cell)."
    out = []
    for i, c in enumerate(json.loads(Path(nb_path).read_text())['cells']):
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or any(d.startswith(('#| export', '#| exporti', '#| exports', '#| eval: false')) for d in _directives(src)): continue
        tree = ast.parse('\n'.join('' if l.lstrip().startswith(('%', '!')) else l for l in src.splitlines()))
        has_import = any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))
        if has_import and any(not isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body):
            out.append((i, src.strip().splitlines()[0]))
    return out


def test_found_notebooks():
    assert len(NBS) >= 20


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.stem)
def test_imports_in_their_own_cells(nb):
    assert mixed_cells(nb) == [], f"{nb.name}: cells mixing imports with code (nbdev_proc_nbs would execute them)"


def test_detects_a_mixed_cell(tmp_path):
    cell = lambda s: dict(cell_type='code', metadata={}, outputs=[], execution_count=None, source=s)
    nb = dict(cells=[cell('import os'), cell('#| export\nimport os\ndef f(): pass'), cell('#| slow\nimport numpy as np\nx = np.zeros(3)')],
              metadata={}, nbformat=4, nbformat_minor=5)
    (tmp_path / 'a.ipynb').write_text(json.dumps(nb))
    assert mixed_cells(tmp_path / 'a.ipynb') == [(2, '#| slow')]
