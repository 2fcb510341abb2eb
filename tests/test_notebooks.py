"The notebooks as nbdev's docs processor reads them: it executes every cell that imports, so such cells must hold only imports."
import ast, json, re
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


# Saved outputs must not show where the notebooks were run: a folder of the build machine (the project's folder or
# one above it, the home folder, the temporary folder, the Python installation) or any absolute path under a
# top-level folder of this machine (`/work/...`, `/tmp/...`, `/home/...`) or of a usual one elsewhere.
_ABS = re.compile(r'(?<![\w:/.~<>\\-])(?:/[\w.~+-]+){2,}|(?<![\w])[A-Za-z]:\\{1,2}[\w.~ -]+\\')
_USUAL_ROOTS = {'home', 'Users', 'tmp', 'var', 'private', 'root', 'opt', 'usr', 'mnt', 'media', 'srv', 'data', 'scratch',
                'work', 'workspace', 'content', 'builds', 'github', 'runner', 'nix', 'Library', 'Volumes', 'etc'}


def _machine_folders():
    "Absolute folders of this machine whose appearance in an output gives the build machine away."
    import site, sys, tempfile
    root = Path(__file__).resolve().parents[1]
    dirs = {root, *root.parents, Path.home(), Path(tempfile.gettempdir()), Path(sys.prefix), Path(sys.base_prefix),
            *map(Path, site.getsitepackages())}
    return sorted({str(d) for d in dirs if len(d.parts) > 1}, key=len, reverse=True)


def _output_texts(o):
    "The text of one saved output: stream text, error name, value and traceback, and every text-like mimetype."
    if o.get('output_type') == 'stream': yield ''.join(o.get('text', ''))
    if o.get('output_type') == 'error': yield '\n'.join([o.get('ename', ''), o.get('evalue', ''), *o.get('traceback', [])])
    for k, v in o.get('data', {}).items():
        if k.startswith('image/') and not k.startswith('image/svg'): continue
        yield ''.join(v) if isinstance(v, list) else json.dumps(v)


def absolute_paths_in_outputs(nb_path, roots=None):
    "(cell index, path) for each absolute path of a build machine in a notebook's saved outputs (widget state included)."
    import os
    roots = set(roots if roots is not None else (_USUAL_ROOTS | {p for p in os.listdir('/') if p}))
    folders = _machine_folders()
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    found = []
    def scan(i, text):
        for m in _ABS.finditer(text):
            p = m.group(0)
            if p[1:2] == ':' or p.split('/')[1] in roots: found.append((i, p))
        for f in folders:
            if re.search(r'(?<![\w.~/-])' + re.escape(f) + r'(?![\w.~-])', text) and not any(f in p for _, p in found):
                found.append((i, f))
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []):
            for t in _output_texts(o): scan(i, t)
    scan('widgets', json.dumps(nb.get('metadata', {}).get('widgets', {})))
    return found


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.stem)
def test_no_absolute_paths_in_outputs(nb):
    found = absolute_paths_in_outputs(nb)
    assert found == [], f"{nb.name}: saved outputs show folders of the machine they ran on (print a relative path or a name): {found}"


def test_detects_absolute_paths(tmp_path):
    def nb(*outputs, widgets=None):
        cell = dict(cell_type='code', metadata={}, execution_count=None, source='x', outputs=list(outputs))
        return dict(cells=[cell], metadata={'widgets': widgets or {}}, nbformat=4, nbformat_minor=5)
    stream = lambda t: dict(output_type='stream', name='stdout', text=[t])
    plain = lambda t: dict(output_type='execute_result', data={'text/plain': [t]}, metadata={}, execution_count=None)
    cases = {'/tmp/tmpab12cd/ROME/run_000': stream, "PosixPath('/work/shared/data')": plain,
             'see /home/someone/proj/nbs': lambda t: dict(output_type='display_data', data={'text/html': [t]}, metadata={}),
             'FileNotFoundError: /Users/me/x.json': lambda t: dict(output_type='error', ename='E', evalue=t, traceback=[]),
             'C:\\Users\\me\\proj\\x.json': stream, str(Path(__file__).resolve().parents[1]) + '/x': stream,
             sys_prefix_file(): stream, str(Path.home()): stream}
    for text, make in cases.items():
        (tmp_path / 'a.ipynb').write_text(json.dumps(nb(make(text))))
        assert absolute_paths_in_outputs(tmp_path / 'a.ipynb'), text
    (tmp_path / 'w.ipynb').write_text(json.dumps(nb(widgets={'state': {'m': {'outputs': [{'text': 'at /tmp/tmpx/y'}]}}})))
    assert absolute_paths_in_outputs(tmp_path / 'w.ipynb')
    ok = ['data/counterfact.json does not exist', '../../shared/data', 'https://rome.baulab.info/data/dsets/idf.npy',
          'http://127.0.0.1:9/cf.json', '<div></div><td>1</td>', 'ES/PS/NS: 1/2/3', '12 tokens/s', 'transformer.h.{}.mlp']
    (tmp_path / 'b.ipynb').write_text(json.dumps(nb(*map(stream, ok))))
    assert absolute_paths_in_outputs(tmp_path / 'b.ipynb') == []


def sys_prefix_file():
    import sys
    return str(Path(sys.prefix) / 'lib' / 'python3' / 'site-packages' / 'torch' / 'x.py')


def shown_widget_outputs(nb_path):
    "Outputs held by the Output widgets that a notebook's saved outputs display (through their saved widget state)."
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    state = nb.get('metadata', {}).get('widgets', {}).get('application/vnd.jupyter.widget-state+json', {}).get('state', {})
    todo = [o['data']['application/vnd.jupyter.widget-view+json']['model_id'] for c in nb['cells'] for o in c.get('outputs', [])
            if 'application/vnd.jupyter.widget-view+json' in o.get('data', {})]
    seen, outs = set(), []
    while todo:
        m = todo.pop()
        if m in seen or m not in state: continue
        seen.add(m)
        todo += re.findall(r'IPY_MODEL_([0-9a-f]{32})', json.dumps(state[m]))
        if state[m].get('model_name') == 'OutputModel': outs += state[m]['state'].get('outputs', [])
    return outs


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.stem)
def test_shown_widgets_hold_no_errors(nb):
    "A widget shown in the saved notebook shows what its cell set up, not a mistake a later check made with it."
    texts = [t for o in shown_widget_outputs(nb) for t in _output_texts(o)]
    assert not [t for t in texts if 'cannot ' in t or 'Error' in t or 'Traceback' in t], texts


def test_trace_explorer_is_saved_with_its_trace():
    outs = shown_widget_outputs(next(p for p in NBS if p.stem == '10_tracing'))
    assert any('image/png' in o.get('data', {}) for o in outs), "the explorer in 10_tracing is saved without its heatmap"
