"stats_convergence: prefix snapshots from one pass equal layer_stats on the same prefixes; the CLI prints the table."
import os, subprocess, sys
import pytest
import torch
from rome_nb.models import tiny_model, tiny_tokenizer
from rome_nb import stats as S
from rome_nb import stats_convergence as SC

TEXTS = [f"Text {i} tells of Paris, the Seine and {i % 7} bridges{' and more' * (i % 5)}." for i in range(150)]


@pytest.fixture(scope='module')
def mt():
    torch.manual_seed(0)
    return tiny_model('gpt2', n_layer=3, n_embd=32), tiny_tokenizer()


def test_snapshots_equal_layer_stats_on_prefixes(mt, tmp_path):
    model, tok = mt
    snaps = SC.prefix_moments(model, tok, 1, TEXTS, (0.05, 0.4, 1.0))
    for n, count, C in snaps:
        st = S.layer_stats(model, tok, 1, tmp_path, TEXTS[:n], precision='float64', progress=None)
        assert st.count == count
        assert (st.mom2.moment() - C).norm() <= 1e-6 * C.norm()  # batching differs: float32 forward rounding


def test_table_and_update_agreement(mt):
    model, tok = mt
    reqs = SC.probe_requests(TEXTS)
    rows = SC.stats_convergence(model, tok, 1, TEXTS, (0.1, 1.0), requests=reqs)
    assert [r['fraction'] for r in rows] == [0.1, 1.0]
    assert rows[-1]['c_rel_frob'] == 0 and abs(rows[-1]['update_cos_min'] - 1) < 1e-9
    assert 0 < rows[0]['c_rel_frob'] and rows[0]['update_cos_min'] <= 1 + 1e-12
    # the update vector is the ROME update's C-dependent factor: a = C^-1 k / (k . C^-1 k)
    C = SC.prefix_moments(model, tok, 1, TEXTS, (1.0,))[0][2]
    k = torch.linspace(-1, 1, len(C), dtype=torch.float64)[None]
    a = SC.update_vector(C, k)
    assert torch.allclose((a * k).sum(), torch.tensor(1.0, dtype=torch.float64))
    assert 'update_cos_min' in SC.convergence_table(rows)


def test_cli_prints_table(mt, tmp_path):
    model, tok = mt
    model.save_pretrained(tmp_path / 'tiny')
    tok.save_pretrained(tmp_path / 'tiny')
    (tmp_path / 't.txt').write_text('\n'.join(TEXTS) + '\n')
    r = subprocess.run([sys.executable, '-m', 'rome_nb.stats', '--model_name', str(tmp_path / 'tiny'), '--dataset',
                        str(tmp_path / 't.txt'), '--layers', '1', '--sample_size', 'all', '--device', 'cpu',
                        '--convergence', '0.1,1', '--stats_dir', str(tmp_path / 's')],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr
    assert 'c_rel_frob' in r.stdout and 'update_cos_min' in r.stdout
    assert not (tmp_path / 's').exists()  # nothing cached
