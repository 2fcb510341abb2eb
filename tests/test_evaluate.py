"The evaluation run from the command line: result files, restarts after a SIGKILL, sharding, error messages."
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import standin_alg

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def env():
    # one thread per process: on a shared 2-core machine several threads per process thrash
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')


def cli_args(b, *extra):
    return [sys.executable, str(b['cli']), '--alg_name', 'STEP', '--model_name', str(b['model']), '--hparams_fname', str(b['hparams']),
            '--data_dir', str(b['data']), '--results_dir', str(b['results']), '--device', 'cpu', *extra]


def run(args, timeout=600):
    return subprocess.run(args, capture_output=True, text=True, env=env(), timeout=timeout)


def read_cases(run_dir):
    out = {}
    for f in run_dir.glob('*case_*.json'):
        data = json.loads(f.read_text())  # every file is valid JSON
        assert f.name == f"case_{data['case_id']}.json"
        out[data['case_id']] = data
    return out


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    return standin_alg.make_bench(tmp_path_factory.mktemp('bench'), n=20)


def test_cli_run_writes_reference_files(bench, tmp_path):
    b = dict(bench, results=tmp_path / 'results')
    r = run(cli_args(b, '--dataset_size_limit', '3', '--quiet'))
    assert r.returncode == 0, r.stderr
    run_dir = b['results'] / 'STEP' / 'run_000'
    assert sorted(p.name for p in run_dir.iterdir()) == ['case_0.json', 'case_1.json', 'case_2.json', 'params.json', 'run_info.json']
    c = json.loads((run_dir / 'case_1.json').read_text())
    assert list(c) == ['case_id', 'requested_rewrite', 'time', 'post', 'pre']
    for k in ('rewrite_prompts_probs', 'paraphrase_prompts_probs', 'neighborhood_prompts_probs', 'attribute_prompts_probs',
              'ngram_entropy', 'reference_score', 'text'):
        assert k in c['post'] and k in c['pre']
    assert len(c['post']['paraphrase_prompts_probs']) == 2 and set(c['post']['rewrite_prompts_probs'][0]) == {'target_new', 'target_true'}
    # the stand-in edit works: the new object's NLL after the rewrite prompt falls
    assert c['post']['rewrite_prompts_probs'][0]['target_new'] < c['pre']['rewrite_prompts_probs'][0]['target_new'] - 0.3
    assert json.loads((run_dir / 'params.json').read_text()) == json.loads(b['hparams'].read_text())
    # a second run gets the next run directory
    r = run(cli_args(b, '--dataset_size_limit', '1', '--quiet', '--skip_generation_tests'))
    assert r.returncode == 0, r.stderr
    c = json.loads((b['results'] / 'STEP' / 'run_001' / 'case_0.json').read_text())
    assert 'text' not in c['post'] and 'rewrite_prompts_probs' in c['post']


def test_sigkill_then_continue(bench, tmp_path):
    "Kill an evaluation mid-run; the restarted run finishes it, every case exactly once, valid JSON, nothing redone."
    b = dict(bench, results=tmp_path / 'results')
    run_dir = b['results'] / 'STEP' / 'run_000'
    p = subprocess.Popen(cli_args(b, '--skip_generation_tests', '--quiet'), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while len(list(run_dir.glob('case_*.json'))) < 3:
        assert p.poll() is None, p.stderr.read().decode()
        assert time.time() - t0 < 300, 'no case files after 300 s'
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    done_before = {f.name: (f.stat().st_mtime_ns, f.read_bytes()) for f in run_dir.glob('case_*.json')}
    assert 3 <= len(done_before) < 20, f'{len(done_before)} cases were done when the run was killed'
    r = run(cli_args(b, '--skip_generation_tests', '--quiet', '--continue_from_run', 'run_000'))
    assert r.returncode == 0, r.stderr
    cases = read_cases(run_dir)
    assert sorted(cases) == list(range(20))
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([f'case_{i}.json' for i in range(20)] + ['params.json', 'run_info.json'])
    for name, (mtime, content) in done_before.items():  # finished cases were not evaluated again
        assert (run_dir / name).stat().st_mtime_ns == mtime and (run_dir / name).read_bytes() == content
    assert not (b['results'] / 'STEP' / 'run_001').exists()


def test_errors_name_what_to_fix(bench, tmp_path, monkeypatch):
    "Unknown hyperparameter files, malformed records, missing data and runs: errors that say what to fix."
    from rome_nb.evaluate import main
    from rome_nb.dsets import MalformedRecordError, DataFileMissing
    monkeypatch.setenv('ROME_NB_OFFLINE', '1')
    kw = dict(alg_name='STEP', model_name=str(bench['model']), hparams_fname=str(bench['hparams']), data_dir=str(bench['data']),
              results_dir=str(tmp_path / 'results'), device='cpu', quiet=True, skip_generation_tests=True)
    with pytest.raises(FileNotFoundError, match=r"no hyperparameters file 'gpt2-medium.json' for STEP .*available:"):
        main(**dict(kw, hparams_fname='gpt2-medium.json'))
    bad = tmp_path / 'bad'; bad.mkdir()
    recs = [standin_alg.make_record(i) for i in range(3)]
    del recs[2]['neighborhood_prompts']
    (bad / 'counterfact.json').write_text(json.dumps(recs))
    with pytest.raises(MalformedRecordError, match=r"record 2 \(case_id 2\): field 'neighborhood_prompts' is missing"):
        main(**dict(kw, data_dir=str(bad)))
    with pytest.raises(DataFileMissing, match='counterfact.json is not in .* put it at'):
        main(**dict(kw, data_dir=str(tmp_path / 'nothing')))
    with pytest.raises(FileNotFoundError, match="cannot continue run 'run_042'"):
        main(**dict(kw, continue_from_run='run_042'))
    # from the command line, the message reaches the user
    r = run([sys.executable, '-m', 'rome_nb.evaluate', '--alg_name', 'NOPE', '--results_dir', str(tmp_path)])
    assert r.returncode != 0 and "unknown editing method 'NOPE'" in r.stderr


@pytest.mark.slow
def test_sharded_with_torchrun(bench, tmp_path):
    "Two processes started by torchrun share one run directory and write every case exactly once."
    torchrun = Path(sys.executable).parent / 'torchrun'
    if not torchrun.exists(): pytest.skip('torchrun not installed')
    b = dict(bench, results=tmp_path / 'results')
    args = cli_args(b, '--skip_generation_tests', '--quiet', '--dataset_size_limit', '8')
    r = run([str(torchrun), '--nproc_per_node', '2', '--master_port', '29533', *args[1:]])
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (b['results'] / 'STEP').iterdir()) == ['run_000']
    assert sorted(read_cases(b['results'] / 'STEP' / 'run_000')) == list(range(8))
