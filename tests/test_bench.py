"""`rome_nb_bench` (rome_nb.bench): the quick run through `main` and through the installed command (exit 0, every
key of the JSON report), the plain statistics loop against `layer_stats`, a failing benchmark kept in its place and
reported by a non-zero exit, and bad input (an unknown shape, CUDA where there is none) as one line and exit 2."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from rome_nb import bench
from rome_nb.bench import main, plain_second_moment, bench_rows, bench_table

BIN = Path(sys.executable).parent
KEYS = {'machine', 'profile', 'sizes', 'results', 'rows', 'wall_s'}
PIECES = {'tracing', 'statistics', 'rome', 'memit'}


def run_cmd(*args, cwd):
    "The installed `rome_nb_bench` with `args`, one thread, no downloads; skips when it is not installed."
    exe = BIN / 'rome_nb_bench'
    if not exe.exists(): pytest.skip(f'rome_nb_bench is not installed beside {sys.executable}')
    env = dict(os.environ, OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')
    env.pop('ROME_NB_DEBUG', None)
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def assert_one_line_error(r, want):
    "Exit 2 and exactly one stderr line `rome_nb_bench: error: ...` holding `want`, no traceback."
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(err) == 1 and err[0].startswith('rome_nb_bench: error: ') and want in err[0], err
    assert 'Traceback' not in r.stderr and r.stdout == ''


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
    "The quick run through `main` (the toy and the tiny model): its return value and the JSON it wrote."
    f = tmp_path_factory.mktemp('bench') / 'bench.json'
    rep = main(quick=True, json=str(f))
    return rep, json.loads(f.read_text())


def test_quick_main_writes_every_key(quick):
    rep, saved = quick
    assert set(saved) == KEYS and saved['profile'] == 'quick'
    assert list(saved['results']) == ['toy', 'tiny']
    assert set(saved['results']['toy']) == PIECES | {'evaluation'}
    assert set(saved['results']['tiny']) == PIECES
    for shape, pieces in saved['results'].items():
        for name, figs in pieces.items(): assert 'error' not in figs, (shape, name, figs)
    toy = saved['results']['toy']
    assert {'engine_s', 'plain_s', 'speedup', 'max_abs_diff', 'cells'} <= set(toy['tracing'])
    assert {'fp64_tok_s', 'fp32_tok_s', 'plain_tok_s', 'fp32_rel_err', 'plain_rel_err'} <= set(toy['statistics'])
    assert {'statistics_s', 'first_edit_s', 'warm_edit_s', 'plain_warm_edit_s', 'warm_speedup'} <= set(toy['rome'])
    assert {'cases', 'cases_per_s', 'ES', 'PS', 'NS'} <= set(toy['evaluation'])
    assert {'edits', 'seconds', 'peak_mb', 'extra_mb'} <= set(toy['memit'])
    assert saved['rows'] == json.loads(json.dumps(rep['rows']))  # the report as returned is what was written


def test_quick_figures_are_sound(quick):
    "The two tracing paths agree; C of the fast and the plain path is float64's to float32 rounding."
    res = quick[1]['results']
    for shape in ('toy', 'tiny'):
        assert res[shape]['tracing']['max_abs_diff'] < 1e-5, res[shape]['tracing']
        st = res[shape]['statistics']
        assert st['fp32_rel_err'] < 1e-5 and st['plain_rel_err'] < 1e-5, st
    assert res['toy']['evaluation']['cases'] == 2 and res['toy']['memit']['edits'] == 4
    assert res['tiny']['memit']['edits'] == 2


def test_plain_loop_reads_what_layer_stats_reads(tmp_path):
    from rome_nb.models import tiny_model, tiny_tokenizer
    from rome_nb.stats import layer_stats
    model, tok = tiny_model('gpt2', n_layer=2), tiny_tokenizer()
    texts = [f"Text {i} about Paris and {i % 5} bridges{' more' * (i % 4)}." for i in range(30)]
    name = 'transformer.h.1.mlp.c_proj'
    C, n = plain_second_moment(model, tok, name, texts, maxlen=16, batch_tokens=64)
    st = layer_stats(model, tok, name, tmp_path, texts, precision='float64', maxlen=16, batch_tokens=64,
                     download=False, progress=None)
    assert n == st.count
    ref = st.mom2.moment()
    assert ((C.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_a_failing_benchmark_is_kept_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    def boom(*a, **k): raise MemoryError('no room for the edits')
    monkeypatch.setattr(bench, 'bench_memit', boom)
    f = tmp_path / 'b.json'
    with pytest.raises(RuntimeError, match='1 benchmark.s. failed: tiny/memit'):
        main(shapes='tiny', quick=True, json=str(f))
    saved = json.loads(f.read_text())
    assert saved['results']['tiny']['memit'] == {'error': 'MemoryError: no room for the edits'}
    assert 'tracing' in saved['results']['tiny'] and 'error' not in saved['results']['tiny']['tracing']
    assert 'no room for the edits' in capsys.readouterr().out  # the table shows it


def test_table_has_a_row_per_figure():
    rows = bench_rows({'x': {'memit': {'error': 'out of memory'}}})
    assert rows == [dict(shape='x', benchmark='memit', figure='failed', value=None, plain=None, ratio=None,
                         check='out of memory')]
    assert bench_table(rows).splitlines()[1].split()[:3] == ['x', 'memit', 'failed']


def test_installed_command_quick(tmp_path):
    r = run_cmd('--quick', '--shapes', 'tiny', '--json', tmp_path / 'b.json', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    saved = json.loads((tmp_path / 'b.json').read_text())
    assert set(saved) == KEYS and set(saved['results']['tiny']) == PIECES
    assert r.stdout.splitlines()[0].split() == ['shape', 'benchmark', 'figure', 'value', 'plain', 'ratio', 'check']
    assert 'Traceback' not in r.stderr and 'rome_nb_bench: tiny (quick sizes)' in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name != 'b.json']  # nothing else left behind


BAD = [(('--shapes', 'nope'), "unknown shape 'nope'"),
       (('--shapes', 'toy,gpt2-large'), "unknown shape 'gpt2-large'"),
       (('--device', 'gpu'), '--device must be cpu, cuda or cuda:N'),
       (('--json', '{tmp}/no/such/folder/b.json'), 'no folder'),
       (('--bogus',), 'unrecognized arguments: --bogus')]


@pytest.mark.parametrize('args,want', BAD, ids=['shape', 'shape-list', 'device', 'json-folder', 'option'])
def test_bad_input_is_one_line(tmp_path, args, want):
    r = run_cmd('--quick', *[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)
    assert_one_line_error(r, want)


@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA device is here')
def test_cuda_without_cuda_is_one_line(tmp_path):
    r = run_cmd('--device', 'cuda', cwd=tmp_path)
    assert_one_line_error(r, 'no CUDA device here')
    with pytest.raises(ValueError, match='no CUDA device here'): main(device='cuda:0', quick=True)
