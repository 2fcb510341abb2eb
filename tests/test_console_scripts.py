"""The installed `rome_nb_*` commands (the console-script files beside this Python), run as a shell runs them:
exit 0 on success; on bad input a non-zero exit and exactly one line on stderr, no traceback; `--debug` (or
ROME_NB_DEBUG=1) shows the traceback. Skipped when the commands are not installed."""
import hashlib, json, os, signal, socket, subprocess, sys
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent
COMMANDS = ('demo', 'layer_stats', 'memit', 'evaluate', 'summarize', 'trace', 'toy_train', 'rome_bench',
            'layer_sweep', 'sequential', 'bench')


def exe(cmd):
    "The installed console script `rome_nb_<cmd>`; skips the test when it is not installed."
    f = BIN / f'rome_nb_{cmd}'
    if not f.exists(): pytest.skip(f'{f.name} is not installed beside {sys.executable}')
    return str(f)


def env(**kw):
    "A command's environment: one thread, no downloads, no debug, and `kw` (a None value removes one)."
    e = dict(os.environ, OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')
    e.pop('ROME_NB_DEBUG', None)
    for k, v in kw.items():
        if v is None: e.pop(k, None)
        else: e[k] = v
    return e


def run(cmd, *args, cwd, timeout=600, **kw):
    return subprocess.run([exe(cmd), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env(**kw), timeout=timeout)


def lines(text): return [l for l in text.splitlines() if l.strip()]


def assert_one_line_error(r, cmd, want=None):
    "Exit 2, exactly one non-empty stderr line `rome_nb_<cmd>: error: ...` (with `want`), no traceback."
    err = lines(r.stderr)
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(err) == 1, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr and err[0].startswith(f'rome_nb_{cmd}: error: '), err
    if want: assert want in err[0], err


def test_all_commands_are_tested():
    "Every console script of settings.ini is one of COMMANDS (a new command gets its tests here)."
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / 'settings.ini')
    lines_ = cfg['DEFAULT']['console_scripts'].splitlines()
    scripts = {l.split('=')[0].strip() for l in lines_ if l.strip()}
    assert scripts == {f'rome_nb_{c}' for c in COMMANDS}


# ---- success: exit 0 (the console wrapper does sys.exit(main()): a returned value used to exit 1)

@pytest.fixture(scope='module')
def evaluated(tmp_path_factory):
    "One toy CounterFact case evaluated by `rome_nb_evaluate`: (completed process, results folder)."
    d = tmp_path_factory.mktemp('evaluate')
    # its own statistics folder: a user's cache (e.g. files written before digests) must not change the output
    r = run('evaluate', '--dataset_size_limit', 1, '--skip_generation_tests', '--results_dir', d / 'results',
            '--quiet', cwd=d, ROME_NB_STATS_DIR=str(d / 'stats'))
    return r, d / 'results'


def test_evaluate_exits_0(evaluated):
    r, res = evaluated
    assert r.returncode == 0, r.stderr[-3000:]
    # never an error or a warning; and --quiet silences the statistics' progress bar too (a fresh statistics folder)
    assert 'Traceback' not in r.stderr and 'error' not in r.stderr.lower() and 'Warning' not in r.stderr, r.stderr
    assert 'stats ' not in r.stderr and 'text/s' not in r.stderr, r.stderr[-3000:]
    assert (res / 'ROME' / 'run_000' / 'case_0.json').exists()


def test_summarize_exits_0_with_legend(evaluated, tmp_path):
    _, res = evaluated
    r = run('summarize', '--dir_name', 'ROME', '--results_dir', res, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    out = lines(r.stdout)
    assert 'ES' in out[0] and out[-1].startswith('n: cases; S: score') and 'ES: efficacy' in out[-1]


def test_layer_stats_exits_0(tmp_path):
    r = run('layer_stats', '--model_name', 'toy', '--dataset', 'toy', '--layers', '0', '--sample_size', 20,
            '--stats_dir', tmp_path / 'stats', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'tokens' in r.stdout and list((tmp_path / 'stats').rglob('*.npz'))


def test_trace_exits_0(tmp_path):
    r = run('trace', '--limit', 1, '--samples', 2, '--kinds', 'mlp', '--output_dir', tmp_path / 'tr',
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert list((tmp_path / 'tr').rglob('*.npz'))


def test_memit_exits_0(tmp_path):
    r = run('memit', cwd=tmp_path)  # nothing to do: says so
    assert r.returncode == 0 and 'nothing to do' in r.stdout, r.stderr[-3000:]
    r = run('memit', '--bench', '--n', 2, '--no_rome', '--out', tmp_path / 'memit.csv', cwd=tmp_path,
            ROME_NB_STATS_DIR=str(tmp_path / 'stats'))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'MEMIT, 2 at once' in r.stdout and (tmp_path / 'memit.csv').exists()


def test_rome_bench_exits_0(tmp_path):
    r = run('rome_bench', '--n_cf', 1, '--n_seq', 0, '--n_timing', 1, '--gpt2_small', 0, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'seconds per edit' in r.stdout


def _digest(d):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(Path(d).iterdir()) if f.is_file()}


@pytest.mark.slow
def test_toy_train_exits_0_and_keeps_the_packaged_model(tmp_path):
    from rome_nb.models import TOY_DIR
    before = _digest(TOY_DIR)
    r = run('toy_train', '--steps', 3, '--n_docs', 50, '--quiet', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / 'toy_model' / 'world.json').exists() and _digest(TOY_DIR) == before
    r = run('toy_train', '--steps', 3, '--n_docs', 50, '--quiet', '--out_dir', 'toy_model', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]  # a toy model folder may be replaced


@pytest.mark.slow
def test_demo_exits_0(tmp_path):
    r = run('demo', '--n_cases', 1, '--quiet', '--out_dir', tmp_path / 'out', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'n: cases; S: score' in r.stdout and (tmp_path / 'out' / 'trace.png').exists()


# ---- bad input: exit 2 and one line

EVALUATE_BAD = [(('--alg_name', 'NOPE'), "unknown editing method 'NOPE'"),
                (('--ds_name', 'nope'), "unknown dataset 'nope'"),
                (('--hparams_fname', 'nope.json'), "no hyperparameters file 'nope.json'"),
                (('--data_dir', '{tmp}/nothere/cf.json'), 'no such data file: '),
                (('--dataset_size_limit', 'abc'), "argument --dataset_size_limit: invalid int value: 'abc'"),
                (('--no_such_option',), 'unrecognized arguments: --no_such_option')]


@pytest.mark.parametrize('args,want', EVALUATE_BAD, ids=[a[0] for a, _ in EVALUATE_BAD])
def test_evaluate_bad_input(tmp_path, args, want):
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0] == '--dataset_size_limit': r = run('evaluate', *args, cwd=tmp_path)
    else: r = run('evaluate', *args, '--dataset_size_limit', 1, '--skip_generation_tests',
                  '--results_dir', tmp_path / 'res', cwd=tmp_path)
    assert_one_line_error(r, 'evaluate', want)
    assert not (tmp_path / 'res' / 'ROME' / 'run_000').exists() and not (tmp_path / 'nothere').exists()


def test_evaluate_reads_the_given_data_file_with_the_toy_model(tmp_path):
    "An explicit --data_dir is what gets evaluated, also with the toy model (it used to be ignored)."
    from rome_nb.toyworld import load_world, toy_counterfact
    rec = dict(toy_counterfact(load_world(), 1)[0], case_id=7)
    (tmp_path / 'mine.json').write_text(json.dumps([rec]))
    r = run('evaluate', '--data_dir', tmp_path / 'mine.json', '--skip_generation_tests', '--quiet', '--dataset_size_limit', 1,
            '--results_dir', tmp_path / 'res', cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [f.name for f in (tmp_path / 'res' / 'ROME' / 'run_000').glob('case_*.json')] == ['case_7.json']


LAYER_STATS_BAD = [(('--layers', '99'), 'layer 99 out of range'),
                   (('--layers', 'abc'), "--layers must be comma-separated block numbers"),
                   (('--layers', '0', '--dataset', '{tmp}/nothere.txt'), 'no such file or folder: ')]


@pytest.mark.parametrize('args,want', LAYER_STATS_BAD, ids=['layers-99', 'layers-abc', 'dataset-missing'])
def test_layer_stats_bad_input(tmp_path, args, want):
    args = [a.format(tmp=tmp_path) for a in args]
    r = run('layer_stats', '--model_name', 'toy', '--dataset', 'toy', '--stats_dir', tmp_path / 'stats', *args,
            cwd=tmp_path)
    assert_one_line_error(r, 'layer_stats', want)


def test_summarize_bad_input(tmp_path):
    r = run('summarize', '--dir_name', 'NOPE', cwd=tmp_path)
    assert_one_line_error(r, 'summarize', "no results folder 'NOPE'")


@pytest.fixture
def dead_hub():
    "The address of a hub that refuses connections: a local port bound but not listening."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        yield f'http://127.0.0.1:{s.getsockname()[1]}'


@pytest.fixture
def facts(tmp_path):
    f = tmp_path / 'known.json'
    f.write_text(json.dumps([{'subject': 'Ann', 'prompt': 'Ann plays', 'attribute': 'golf'}]))
    return f


def test_trace_missing_model_fails_fast(tmp_path, facts, dead_hub):
    "A model that is no folder, no alias and not cached, the hub unreachable: one line, no retries."
    r = run('trace', '--model_name', 'nobody/no-such-model', '--fact_file', facts, cwd=tmp_path,
            HF_ENDPOINT=dead_hub, HF_HUB_OFFLINE=None, TRANSFORMERS_OFFLINE=None, HF_HOME=str(tmp_path / 'hf'),
            timeout=120)
    assert_one_line_error(r, 'trace', 'cannot be reached')
    r = run('trace', '--model_name', 'nobody/no-such-model', '--fact_file', facts, cwd=tmp_path,
            HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), timeout=120)
    assert_one_line_error(r, 'trace', 'HF_HUB_OFFLINE')
    r = run('trace', '--model_name', tmp_path / 'no_such_dir', '--fact_file', facts, cwd=tmp_path, timeout=120)
    assert_one_line_error(r, 'trace', 'no model directory')


def test_toy_train_refuses_a_folder_that_is_not_a_toy_model(tmp_path):
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'notes.txt').write_text('keep me')
    r = run('toy_train', '--out_dir', 'mine', cwd=tmp_path)
    assert_one_line_error(r, 'toy_train', 'holds no toy model')
    assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'keep me'
    r = run('toy_train', '--out_dir', 'x', '--overwrite_packaged', cwd=tmp_path)
    assert_one_line_error(r, 'toy_train', 'not both')


# ---- --debug and ROME_NB_DEBUG show the traceback; Ctrl-C is one line and 130

def test_debug_shows_the_traceback(tmp_path):
    r = run('summarize', '--dir_name', 'NOPE', '--debug', cwd=tmp_path)
    assert r.returncode == 2 and 'Traceback' in r.stderr and 'FileNotFoundError' in r.stderr
    assert lines(r.stderr)[-1].startswith('rome_nb_summarize: error: no results folder')
    r = run('layer_stats', '--model_name', 'toy', '--layers', 'abc', cwd=tmp_path, ROME_NB_DEBUG='1')
    assert r.returncode == 2 and 'Traceback' in r.stderr


def _ctrl_c_default():
    "In the child: Ctrl-C as in a terminal (a shell's background job, e.g. `make test &`, inherits it ignored)."
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_exits_130_with_one_line(tmp_path):
    p = subprocess.Popen([exe('demo'), '--quiet', '--out_dir', tmp_path / 'out'], cwd=tmp_path, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(PYTHONUNBUFFERED='1'),
                         preexec_fn=_ctrl_c_default)
    try:
        first = p.stdout.readline()  # printed by main, so the command is running
        assert first.startswith('rome_nb demo'), first
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130 and lines(err) == ['rome_nb_demo: interrupted'], err[-3000:]


_DROPPING = '''
import sys, time
from rome_nb.cli import command
class Drops:
    def __del__(self): raise KeyboardInterrupt  # a Ctrl-C landing in a finaliser
@command('rome_nb_dropping')
def dropping(n:int=1000): # sleeps of 10 ms after the dropped interrupt
    "Drop an interrupt in a finaliser, then work."
    Drops()
    for _ in range(n): time.sleep(0.01)
    print('finished')
'''


def test_interrupt_in_a_finaliser_is_not_lost(tmp_path):
    "Python drops a KeyboardInterrupt raised in `__del__`; a command still stops with 130 and one line."
    (tmp_path / 'dropping.py').write_text(_DROPPING)
    r = subprocess.run([sys.executable, '-m', 'dropping'], capture_output=True, text=True, cwd=tmp_path,
                       env=env(PYTHONPATH=str(tmp_path)), timeout=120, preexec_fn=_ctrl_c_default)
    assert r.returncode == 130 and lines(r.stderr) == ['rome_nb_dropping: interrupted'], r.stderr[-3000:]
    assert 'finished' not in r.stdout
