"Layer statistics on two processes (torchrun, gloo on the CPU) equal those of one process; each rank resumes from its own checkpoint."
import os, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import torch
from rome_nb.models import tiny_model, tiny_tokenizer, layername
from rome_nb import stats as S

TEXTS = [f"Text {i} tells of the city of Paris, the river Seine and {i % 7} bridges{' and more' * (i % 5)}."
         for i in range(61)]


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp('dist')
    torch.manual_seed(0)
    model, tok = tiny_model('gpt2', n_layer=3, n_embd=32), tiny_tokenizer()
    model.save_pretrained(d / 'tiny')
    tok.save_pretrained(d / 'tiny')
    (d / 'texts.txt').write_text('\n'.join(TEXTS) + '\n')
    return d


def _run(args, nproc, cwd):
    env = dict(os.environ, OMP_NUM_THREADS='1', GLOO_SOCKET_IFNAME='lo', MASTER_ADDR='127.0.0.1')
    pre = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}'] if nproc > 1 \
        else [sys.executable]
    r = subprocess.run(pre + ['-m', 'rome_nb.stats', *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _files(d): return sorted(p for p in Path(d).rglob('*.npz'))


def test_two_processes_equal_one(setup):
    d = setup
    common = ['--model_name', str(d / 'tiny'), '--dataset', str(d / 'texts.txt'), '--layers', '1',
              '--to_collect', 'mom2,mean', '--sample_size', 'all', '--precision', 'float64', '--device', 'cpu',
              '--download', '0']
    _run(common + ['--stats_dir', str(d / 'one')], 1, d)
    r = _run(common + ['--stats_dir', str(d / 'two')], 2, d)
    assert r.stdout.count('tokens; mom2') == 1  # rank 0 alone prints
    (f1,), (f2,) = _files(d / 'one'), _files(d / 'two')
    assert f1.relative_to(d / 'one') == f2.relative_to(d / 'two')  # same cache name
    s1, why1 = S.read_stats(f1, ['mom2', 'mean'])
    s2, why2 = S.read_stats(f2, ['mom2', 'mean'])
    assert why1 is None and why2 is None
    assert s1.count == s2.count
    for a, b in ((s1.mom2.mom2, s2.mom2.mom2), (s1.mean.sum, s2.mean.sum)):
        assert (a - b).norm() <= 1e-6 * a.norm()


def test_rank_checkpoints_resume(setup, monkeypatch):
    "A rank's checkpoint is read back by that rank: a simulated rank 1 of 2 resumes from its own file."
    d = setup
    model = tiny_model('gpt2', n_layer=3, n_embd=32)
    tok = tiny_tokenizer()
    lname = layername(model, 1, 'down_proj')
    key = dict(format='x')
    path = d / 'ck' / 'f.npz'
    path.parent.mkdir()
    job = S._Job(lname, path, key, None, 64, 200, torch.float64, None, 0)
    monkeypatch.setattr(S, 'dist_rank_world', lambda: (1, 2))
    monkeypatch.setattr(S, 'reduce_stat', lambda st, w: st)
    full, part = S._compute(model, tok, iter(TEXTS), S.make_stat(['mom2']), job, batch_size=10)
    assert part.name == 'f.partial.rank1of2.npz' and part.exists()
    with np.load(part) as z: assert int(z['rome_nb.texts_done']) == len(TEXTS)
    # resuming from a checkpoint written after the first 20 texts gives the same sums
    job.checkpoint_every = None
    part.unlink()
    head, _ = S._compute(model, tok, iter(TEXTS[:20]), S.make_stat(['mom2']), job, batch_size=10)
    S.save_stats(part, head, key, np.float64, **{'rome_nb.texts_done': 20})
    resumed, _ = S._compute(model, tok, iter(TEXTS), S.make_stat(['mom2']), job, batch_size=10)
    assert resumed.count == full.count
    assert torch.allclose(resumed.mom2.mom2, full.mom2.mom2, rtol=1e-12)
    # rank 1 of 2 read the odd texts only
    n_odd = sum(min(len(tok(t, add_special_tokens=True)['input_ids']), 64) for t in TEXTS[1::2])
    assert full.count == n_odd
