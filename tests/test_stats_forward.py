"""Statistics with a lower-precision forward (`layer_stats(forward_dtype=...)`, `--forward_dtype`): the weights
are untouched, the result has its own cache file, it is close to but not the same as the default's, and the
command rejects an unknown dtype with one line."""
import os, subprocess, sys
from pathlib import Path
import pytest
import torch
from rome_nb.models import tiny_model, tiny_tokenizer
from rome_nb.stats import layer_stats, forward_context, forward_keyed, check_forward_dtype
from rome_nb.stats_convergence import precision_table, moment_agreement, request_keys

TEXTS = [f"Text {i} tells of Paris, the Seine and {i % 7} bridges{' and more' * (i % 5)}." for i in range(200)]


@pytest.fixture(scope='module')
def mt():
    torch.manual_seed(0)
    return tiny_model('gpt2', n_layer=3, n_embd=32), tiny_tokenizer()


def test_weights_untouched_and_separate_files(mt, tmp_path):
    model, tok = mt
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = layer_stats(model, tok, 1, tmp_path, TEXTS, precision='float32', progress=None)
    low = layer_stats(model, tok, 1, tmp_path, TEXTS, precision='float32', progress=None, forward_dtype='bfloat16')
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    names = sorted(p.name for p in tmp_path.rglob('*.npz'))
    assert len(names) == 2 and sum('_fwd-bfloat16' in n for n in names) == 1, names
    assert ref.count == low.count
    err = moment_agreement(low.mom2.moment().double(), ref.mom2.moment().double())['c_rel_frob']
    assert 0 < err < 0.05, err
    # the cached file is found again under its own key
    again = layer_stats(model, tok, 1, tmp_path, TEXTS, precision='float32', progress=None, forward_dtype='bfloat16')
    assert torch.equal(again.mom2.mom2, low.mom2.mom2)


def test_default_is_the_models_dtype(mt, tmp_path):
    model, tok = mt
    a = layer_stats(model, tok, 1, tmp_path / 'a', TEXTS, precision='float64', progress=None)
    b = layer_stats(model, tok, 1, tmp_path / 'b', TEXTS, precision='float64', progress=None, forward_dtype=None)
    assert torch.equal(a.mom2.mom2, b.mom2.mom2)
    assert not list(tmp_path.rglob('*_fwd-*'))


def test_bad_dtype(mt, tmp_path):
    model, tok = mt
    for bad in ('int8', 'fp16', 'float32'):
        with pytest.raises(ValueError, match='forward_dtype must be one of'):
            layer_stats(model, tok, 1, tmp_path, TEXTS, progress=None, forward_dtype=bad)
    assert check_forward_dtype(None) is None and check_forward_dtype('float16') is torch.float16
    assert forward_keyed({}, Path('x.npz'), 'float16')[1].name == 'x_fwd-float16.npz'


def test_autocast_scope(mt):
    model, _ = mt
    lin = torch.nn.Linear(2, 2)
    with forward_context(lin, 'bfloat16'):
        assert lin(torch.ones(1, 2)).dtype == torch.bfloat16
    assert lin(torch.ones(1, 2)).dtype == torch.float32  # autocast ends with the context


def test_precision_table(mt):
    model, tok = mt
    keys = request_keys(model, tok, 1, [{'prompt': '{} tells of', 'subject': 'Text 5'}])
    rows = precision_table(model, tok, 1, TEXTS, keys=keys)
    assert [(r['forward'], r['products']) for r in rows] == [('float32', 'float64'), ('float32', 'float32'),
                                                             ('float16', 'float32'), ('bfloat16', 'float32')]
    assert rows[0]['c_rel_frob'] == 0.0 and rows[0]['speedup'] == 1.0
    assert rows[1]['c_rel_frob'] < 1e-6 and rows[1]['update_cos_min'] > 0.999
    assert all(r['tokens'] == rows[0]['tokens'] for r in rows)


def _cmd():
    f = Path(sys.executable).parent / 'rome_nb_layer_stats'
    if not f.exists(): pytest.skip('rome_nb_layer_stats is not installed')
    return str(f)


def test_cli_forward_dtype(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')
    ok = subprocess.run([_cmd(), '--model_name', 'toy', '--dataset', 'toy', '--layers', '0', '--sample_size', '20',
                         '--forward_dtype', 'bfloat16', '--stats_dir', str(tmp_path), '--device', 'cpu'],
                        capture_output=True, text=True, env=env, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert len(list(tmp_path.rglob('*_fwd-bfloat16.npz'))) == 1
    bad = subprocess.run([_cmd(), '--model_name', 'toy', '--dataset', 'toy', '--layers', '0', '--sample_size', '20',
                          '--forward_dtype', 'int8', '--stats_dir', str(tmp_path), '--device', 'cpu'],
                         capture_output=True, text=True, env=env, timeout=600)
    err = [l for l in bad.stderr.splitlines() if l.strip()]
    assert bad.returncode == 2 and len(err) == 1 and 'forward_dtype must be one of' in err[0], bad.stderr[-2000:]
