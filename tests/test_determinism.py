"""Every notebook and test draws its random numbers from a seeded source, so a run gives the same numbers on any
machine, whatever ran before: a notebook cell (not exported) that draws from a global random generator (torch,
numpy, `random`, a randomly initialised module, or an exported function or class that draws one without seeding it
first) must set a seed earlier in the same cell, or pass a `generator=`. Tests start from seeded generators
(`conftest.py`)."""
import ast, functools, json, random, re
from pathlib import Path
import numpy as np
import torch

from test_notebooks import NBS, _directives

# draws from a global generator (a `generator=` on the same line draws from that one instead)
DRAW = re.compile(r"""
    \btorch\.(?:randn|rand|randint|randperm|normal|bernoulli|multinomial|poisson|randn_like|rand_like|randint_like)\(
  | \.(?:normal_|uniform_|random_|bernoulli_|exponential_|cauchy_|geometric_|log_normal_)\(
  | \bnp\.random\.(?!RandomState\b|default_rng\b|Generator\b|seed\b)\w+\(
  | (?<![\w.])random\.(?:random|randint|choice|choices|shuffle|sample|uniform|gauss|randrange|normalvariate)\(
  | \bnn\.(?:Linear|Embedding|Bilinear|Conv[123]d|LSTM|GRU|RNN|MultiheadAttention)\(
  | \bnn\.init\.\w+\(
  | \.from_config\(
""", re.X)
# what sets the global generators (`tiny_model` seeds before it builds its model)
SEED = re.compile(r'\bmanual_seed\(|\bnp\.random\.seed\(|(?<![\w.])random\.seed\(|\bset_seed\(|\btiny_model\(')


def _cells(nb_path):
    "(index, source, exported) of each code cell that nbdev_test runs (`#| eval: false` cells are not run)."
    for i, c in enumerate(json.loads(Path(nb_path).read_text(encoding='utf-8'))['cells']):
        src = ''.join(c['source'])
        flags = _directives(src)
        if c['cell_type'] != 'code' or '#| eval: false' in flags: continue
        yield i, src, any(f.startswith(('#| export', '#| exporti', '#| exports')) for f in flags)


def _unseeded_draw(src, names):
    "First position in `src` of a draw (a `DRAW` pattern or a call of one of `names`) not preceded by a seed."
    pat = re.compile(DRAW.pattern + (r'|\b(?:' + '|'.join(map(re.escape, names)) + r')\(' if names else ''), re.X)
    for line in src.splitlines():
        code = line.split('#')[0]
        d = pat.search(code)
        if d and 'generator=' in code: d = None
        s = SEED.search(code)
        if d and not (s and s.start() < d.start()): return line.strip()
        if s: return None
    return None


@functools.lru_cache(maxsize=None)
def drawing_names(nb_paths=tuple(NBS)):
    "Exported functions and classes that draw from a global generator without seeding it first (transitively)."
    defs = {}
    for nb in nb_paths:
        for _, src, exported in _cells(nb):
            if not exported: continue
            tree = ast.parse(src)
            for n in tree.body:
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)): defs[n.name] = ast.get_source_segment(src, n)
    names, grew = set(), True
    while grew:
        new = {k for k, s in defs.items() if k not in names and _unseeded_draw(s, frozenset(names - {k}))}
        names |= new
        grew = bool(new)
    return frozenset(names)


def unseeded_cells(nb_path, names):
    "Non-exported cells of a notebook that draw before they seed: (index, line)."
    out = []
    for i, src, exported in _cells(nb_path):
        if exported: continue
        line = _unseeded_draw(src, names)
        if line: out.append((i, line))
    return out


def test_finds_drawing_names():
    names = drawing_names()
    assert {'GradientEditor', 'ConditionedWeight'} <= names, names
    assert 'tiny_model' not in names and 'apply_mend_to_model' not in names


def test_every_notebook_cell_seeds_what_it_draws():
    names = drawing_names()
    bad = {nb.name: u for nb in NBS if (u := unseeded_cells(nb, names))}
    assert bad == {}, f"cells that draw random numbers without seeding first (add torch.manual_seed(0)): {bad}"


def test_detects_an_unseeded_cell(tmp_path):
    cell = lambda s: dict(cell_type='code', metadata={}, outputs=[], execution_count=None, source=s)
    srcs = ['x = torch.randn(3)', 'torch.manual_seed(0)\nx = torch.randn(3)', 'g = torch.Generator().manual_seed(0)\n'
            'x = torch.rand(2, generator=g)', 'm = tiny_model("gpt2")\nv = torch.randn(4)', 'lin = nn.Linear(2, 2)',
            '#| eval: false\nx = torch.randn(3)', 'rng = random.Random(0)\nrng.shuffle(a)', 'random.shuffle(a)',
            'e = Editor(3)', 'x = np.random.randn(3)', 'x = np.random.RandomState(0).randn(3)']
    nb = dict(cells=[cell(s) for s in srcs], metadata={}, nbformat=4, nbformat_minor=5)
    (tmp_path / 'a.ipynb').write_text(json.dumps(nb))
    assert [i for i, _ in unseeded_cells(tmp_path / 'a.ipynb', {'Editor'})] == [0, 4, 7, 8, 9]


def test_tests_start_seeded():
    "conftest.py seeds torch, numpy and `random` before every test, so a test's draws do not depend on the order."
    assert torch.initial_seed() == 0
    a = torch.randn(3)
    torch.manual_seed(0)
    assert torch.equal(a, torch.randn(3))
    assert np.random.get_state()[1][0] == np.random.RandomState(0).get_state()[1][0]
    assert random.getstate() == random.Random(0).getstate()


TIMING = re.compile(r'\b(?:time\.time|time\.perf_counter|time\.monotonic|perf_counter|monotonic)\(\)|\.speedup\b')


def timing_assertions(nb_path):
    "Assertions in a notebook's non-exported cells on a time or a speed (which depends on the machine's load)."
    out = []
    for i, src, exported in _cells(nb_path):
        if exported: continue
        src = '\n'.join('' if l.lstrip().startswith(('%', '!')) else l for l in src.splitlines())
        for n in ast.walk(ast.parse(src)):
            is_test = isinstance(n, ast.Call) and getattr(n.func, 'id', '').startswith('test_')
            if (isinstance(n, ast.Assert) or is_test) and TIMING.search(seg := ast.get_source_segment(src, n)):
                out.append((i, seg))
    return out


def test_no_timing_assertions_in_notebooks():
    bad = {nb.name: t for nb in NBS if (t := timing_assertions(nb))}
    assert bad == {}, f"assertions on time or speed fail on a loaded machine; check what the time stands for: {bad}"
