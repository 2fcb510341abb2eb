"""The sequential-editing harness (`rome_nb.sequential`, `rome_nb_sequential`): batches never undone, `seq_state`
kept and checkpointed, a run stopped (or killed with SIGKILL) and started again gives the uninterrupted curve
exactly, the run folder refuses other settings, and the command's exit codes."""
import dataclasses, json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from rome_nb.evaluate import ALG_DICT
from rome_nb.sequential import sequential, Originals, put_deltas, load_checkpoint, CURVE_COLUMNS
from rome_nb.toyworld import load_toy

BIN = Path(sys.executable).parent
W = 'transformer.h.0.mlp.c_proj.weight'


@dataclasses.dataclass
class KeepHyperParams:
    scale: float = 1e-3


def apply_keep_to_model(model, tok, requests, hparams, copy=False, return_orig_weights=False, seq_state=None):
    "A stand-in stateful method: a rank-one change that depends on the keys kept in `seq_state` across batches."
    seq_state = {} if seq_state is None else seq_state
    w = model.get_parameter(W)
    orig = {W: w.detach().clone()}
    g = torch.Generator().manual_seed(sum(r['case_id'] for r in requests) + 1)
    a, b = torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g)
    keys = seq_state.get('keys', torch.zeros(0, w.shape[0]))
    with torch.no_grad(): w += hparams.scale * (1 + keys.sum().abs().item()) * torch.outer(a, b)
    seq_state['keys'] = torch.cat([keys, a[None]])
    seq_state['count'] = seq_state.get('count', 0) + len(requests)
    return model, (orig if return_orig_weights else {})


ALG_DICT['KEEP'] = (KeepHyperParams, apply_keep_to_model)


@pytest.fixture(scope='module')
def mt():
    return load_toy()[0]


def run(mt, out, **kw):
    "A quick run of the stand-in method on the toy, leaving the model unedited afterwards."
    orig = Originals(mt.model)
    args = dict(n=6, batch=2, every=1, n_texts=5, quiet=True, hparams=KeepHyperParams(), mt=mt,
                out=None if out is None else str(out))
    try: return sequential('KEEP', **{**args, **kw})
    finally: put_deltas(mt.model, orig, {})


def test_seq_state_kept_and_resumed(mt, tmp_path):
    full = run(mt, tmp_path / 'full')
    assert list(full.index) == [0, 2, 4, 6]
    assert full.loc[0, 'dW_rel'] == 0 and (full['dW_rel'].iloc[1:] > 0).all()
    ck = load_checkpoint(tmp_path / 'full')
    assert ck['finished'] and ck['seq_state']['count'] == 6 and ck['seq_state']['keys'].shape[0] == 3
    part = run(mt, tmp_path / 'part', stop_after=2)
    assert list(part.index) == [0, 2, 4] and not load_checkpoint(tmp_path / 'part')['finished']
    resumed = run(mt, tmp_path / 'part')
    assert resumed.equals(full)  # the state's keys scale the later updates: a lost state would differ
    a, b = load_checkpoint(tmp_path / 'full'), load_checkpoint(tmp_path / 'part')
    assert torch.equal(a['deltas'][W], b['deltas'][W]) and torch.equal(a['seq_state']['keys'], b['seq_state']['keys'])
    assert set(CURVE_COLUMNS[1:]) <= set(full.columns) and f'dW_rel[{W}]' in full


def test_finished_run_read_back(mt, tmp_path):
    first = run(mt, tmp_path / 'r')
    calls = []
    def counting(*a, **k):
        calls.append(1)
        return apply_keep_to_model(*a, **k)
    ALG_DICT['KEEP'] = (KeepHyperParams, counting)
    try: again = run(mt, tmp_path / 'r')
    finally: ALG_DICT['KEEP'] = (KeepHyperParams, apply_keep_to_model)
    assert again.equals(first) and calls == []


def test_other_settings_refused_and_numbered_folders(mt, tmp_path):
    run(mt, tmp_path / 'r', stop_after=1)
    with pytest.raises(ValueError, match=r'other settings \(batch 2 -> 3\)'):
        run(mt, tmp_path / 'r', batch=3)
    kw = dict(results_dir=str(tmp_path / 'results'), stop_after=1)
    a = run(mt, None, **kw).attrs['run_dir']
    b = run(mt, None, **kw).attrs['run_dir']      # the same settings: the same folder, resumed
    c = run(mt, None, n=4, **kw).attrs['run_dir']  # other settings: a new one
    assert Path(a).name == Path(b).name == 'seq_000' and Path(c).name == 'seq_001'


def test_ft_edits_pile_up(mt, tmp_path):
    "A real method of ALG_DICT (FT-L on the toy): the cumulative change grows batch after batch."
    from rome_nb.editing import hparams_path
    hp = ALG_DICT['FT'][0].from_json(hparams_path('FT', 'toy_constr'))
    orig = Originals(mt.model)
    try: c = sequential('FT', mt=mt, hparams=hp, n=4, batch=2, every=1, n_texts=5, quiet=True, out=str(tmp_path / 'ft'))
    finally: put_deltas(mt.model, orig, {})
    assert c.loc[0, 'dW_rel'] == 0 and 0 < c.loc[2, 'dW_rel'] < c.loc[4, 'dW_rel']
    assert c['ppl'].notna().all() and c['recall_unedited'].notna().all() and c['ES'].iloc[1:].notna().all()


# ---- the installed command

def exe():
    f = BIN / 'rome_nb_sequential'
    if not f.exists(): pytest.skip(f'{f.name} is not installed beside {sys.executable}')
    return str(f)


def env(stats):
    e = dict(os.environ, OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1', ROME_NB_STATS_DIR=str(stats))
    e.pop('ROME_NB_DEBUG', None)
    return e


def cmd(out):
    return [exe(), '--alg_name', 'ROME', '--n', '6', '--batch', '1', '--every', '2', '--n_texts', '5', '--quiet',
            '--out', str(out)]


@pytest.mark.parametrize('args,want', [(['--alg_name', 'NOPE'], 'unknown editing method'),
                                       (['--n', '0'], 'n must be >= 1'), (['--batch', '0'], 'batch must be >= 1'),
                                       (['--every', 'x'], 'every'), (['--texts_file', 'missing.txt'], 'no such texts file')])
def test_cli_bad_input(tmp_path, args, want):
    r = subprocess.run([exe(), *args], capture_output=True, text=True, cwd=tmp_path, env=env(tmp_path), timeout=300)
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(err) == 1 and err[0].startswith('rome_nb_sequential: error: ') and want in err[0], err


def _wait_for_position(f, position, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try: ck = json.loads(f.read_text())
        except (OSError, ValueError): ck = None
        if ck and ck['position'] >= position: return ck
        if proc.poll() is not None: pytest.fail(f'the run ended before position {position}: {proc.stderr.read()[-2000:]}')
        time.sleep(0.05)
    pytest.fail('no checkpoint in time')


def test_cli_sigkill_resume(tmp_path):
    "ROME one edit at a time: a run killed with SIGKILL after its first checkpoints, run again, gives the curve of a run never killed."
    stats = tmp_path / 'stats'
    full = subprocess.run(cmd(tmp_path / 'full'), capture_output=True, text=True, cwd=tmp_path, env=env(stats),
                          timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    assert 'ES' in full.stdout and 'dW_rel' in full.stdout
    p = subprocess.Popen(cmd(tmp_path / 'killed'), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=tmp_path, env=env(stats))
    ck = _wait_for_position(tmp_path / 'killed' / 'checkpoint.json', 2, p)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    assert p.returncode == -signal.SIGKILL and not ck['finished']
    again = subprocess.run(cmd(tmp_path / 'killed'), capture_output=True, text=True, cwd=tmp_path, env=env(stats),
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    a = json.loads((tmp_path / 'full' / 'checkpoint.json').read_text())
    b = json.loads((tmp_path / 'killed' / 'checkpoint.json').read_text())
    assert a['finished'] and b['finished'] and a['curve'] == b['curve'] and a['update_norms'] == b['update_norms']
    assert [r['edits'] for r in a['curve']] == [0, 2, 4, 6]
    assert full.stdout.splitlines()[1:] == again.stdout.splitlines()[1:]  # the table (the first line names the folder)
    # other settings in the same folder: one line, exit 2
    r = subprocess.run(cmd(tmp_path / 'killed')[:-2] + ['--batch', '2', '--out', str(tmp_path / 'killed')],
                       capture_output=True, text=True, cwd=tmp_path, env=env(stats), timeout=300)
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(err) == 1 and 'other settings' in err[0], r.stderr[-2000:]


def test_memit_keeps_the_unedited_statistics(mt, tmp_path, monkeypatch):
    "MEMIT reads C of the unedited model through a run (the reference's), unless `recompute_stats`."
    import rome_nb.edit_core as ec
    from rome_nb.memit import MEMITHyperParams
    from rome_nb.editing import hparams_path
    hp = MEMITHyperParams.from_json(hparams_path('MEMIT', 'toy'))
    calls = []
    real = ec.layer_stats
    monkeypatch.setattr(ec, 'layer_stats', lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    counts = {}
    for recompute in (False, True):
        monkeypatch.setattr(ec, '_COV_CACHE', {})
        calls.clear()
        orig = Originals(mt.model)
        try:
            sequential('MEMIT', n=4, batch=2, every=2, n_texts=3, quiet=True, hparams=hp, mt=mt,
                       out=str(tmp_path / f'r{recompute}'), recompute_stats=recompute)
        finally: put_deltas(mt.model, orig, {})
        counts[recompute] = list(calls)
    assert sorted(counts[False]) == sorted(f'transformer.h.{l}.mlp.c_proj' for l in hp.layers)
    assert len(counts[True]) > len(hp.layers)  # the layers above an edited one, again after the first batch
    assert json.loads((tmp_path / 'rTrue' / 'seq_info.json').read_text())['recompute_stats'] is True
    assert 'recompute_stats' not in json.loads((tmp_path / 'rFalse' / 'seq_info.json').read_text())


def test_alphaedit_state_checkpointed_and_resumed(mt, tmp_path):
    "AlphaEdit keeps dicts of tensors (projectors, cumulative K K^T by layer): a stopped run resumes exactly."
    from rome_nb.editing import hparams_path
    hp = ALG_DICT['AlphaEdit'][0].from_json(hparams_path('AlphaEdit', 'toy'))
    def go(out, **kw):
        orig = Originals(mt.model)
        try: return sequential('AlphaEdit', mt=mt, hparams=hp, n=4, batch=2, every=1, n_texts=5, quiet=True,
                               out=str(tmp_path / out), **kw)
        finally: put_deltas(mt.model, orig, {})
    full = go('full')
    go('part', stop_after=1)
    saved = load_checkpoint(tmp_path / 'part')['seq_state']
    assert set(saved) >= {'projectors', 'cum_kkt', 'n_keys'} and saved['n_keys'] > 0
    assert set(saved['cum_kkt']) == set(saved['projectors']) and len(saved['cum_kkt']) == len(hp.layers)
    assert go('part').equals(full)
    a, b = (load_checkpoint(tmp_path / d)['seq_state'] for d in ('full', 'part'))
    for n in a['cum_kkt']: assert torch.equal(a['cum_kkt'][n], b['cum_kkt'][n])
