"The shared editing core: ROME and MEMIT use one set of pieces, old import paths still work, and the steps of the value optimisation compose to `compute_v`."
import ast, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from rome_nb import edit_core as C, rome as R, memit as M
from rome_nb.models import tiny_model

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"Text {i}: LeBron James plays basketball in the city of Paris, near the Eiffel Tower and the river." for i in range(150)]
REQ = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'soccer'}}
MOVED = ['MLPEditHyperParams', 'FACT_TOKENS', 'rome_templates', 'fill', 'fact_lookup_idx', 'CONTEXT_PROMPTS',
         'get_context_templates', 'compute_keys', 'MAX_COND', 'regularized_inverse', 'get_inv_cov', 'KL_PROMPTS',
         'skip_lower_layers', 'upd_matrix_match_shape', 'rank_one_update']


@pytest.mark.parametrize('name', MOVED)
def test_rome_names_that_moved_still_import(name):
    # the old path `from rome_nb.rome import <name>` gives the core's object
    assert getattr(R, name) is getattr(C, name)


@pytest.mark.parametrize('name', ['solve_keys', 'memit_update', 'get_cov', 'MLPEditHyperParams', 'rome_templates',
                                  'fill', 'fact_lookup_idx', 'get_context_templates', 'skip_lower_layers'])
def test_memit_names_that_moved_still_import(name):
    assert getattr(M, name) is getattr(C, name)


def test_reference_names_of_rome_and_memit():
    from rome_nb.rome import (ROMEHyperParams, apply_rome_to_model, compute_u, compute_v, execute_rome,  # noqa: F401
                              check_request, RomeEdit, compute_key, apply_deltas)
    from rome_nb.memit import (MEMITHyperParams, apply_memit_to_model, execute_memit, compute_z, compute_zs,  # noqa: F401
                               compute_ks, reprs_at_words, key_groups, target_margins)
    from rome_nb.editing import check_request as cr
    assert check_request is cr


def test_timing_parts_have_distinct_names():
    assert R.ROME_TIMING_PARTS != M.MEMIT_TIMING_PARTS
    assert R.TIMING_PARTS is R.ROME_TIMING_PARTS  # the older name, used by 22_rome_in_use
    assert not hasattr(M, 'TIMING_PARTS')


def test_memit_stands_on_the_core_not_on_rome():
    code = "import sys, rome_nb.memit; print('rome_nb.rome' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == 'False'


def test_core_functions_are_short():
    # the core is read as lessons: no function longer than 40 lines
    tree = ast.parse((ROOT / 'rome_nb' / 'edit_core.py').read_text())
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 40]
    assert not long, long


def test_timer():
    model, tim = tiny_model('gpt2', n_layer=2), {}
    for _ in range(3):
        with C.Timer(tim, 'a', model): pass
    assert list(tim) == ['a'] and tim['a'] >= 0
    with C.Timer(None, 'a', model): pass


def test_frozen_params_restores_flags_on_error():
    model = tiny_model('gpt2', n_layer=2)
    model.transformer.wte.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError):
        with C.frozen_params(model):
            assert not any(p.requires_grad for p in model.parameters())
            raise RuntimeError('inside')
    assert [p.requires_grad for p in model.parameters()] == flags


def test_value_steps_compose_to_compute_v(tok, sd):
    # compute_v is its steps, in order: the same vector, bit for bit
    model = tiny_model('gpt2', n_layer=3)
    hp = R.ROMEHyperParams(layers=[1], mom2_dataset=TEXTS, mom2_n_samples=150, stats_dir=str(sd),
                           context_template_length_params=[[5, 5]], v_num_grad_steps=4)
    req = R.check_request(REQ)
    ctx = R.get_context_templates(model, tok, hp.context_template_length_params)
    k = R.compute_key(model, tok, req, hp, 1, ctx)
    u = R.compute_u(model, tok, req, hp, 1, ctx, key=k)
    v = R.compute_v(model, tok, req, hp, 1, u, ctx, key=k)
    sites = R.value_sites(model, hp, 1)
    vb = R.value_batch(tok, req, ctx, hp.fact_token, 'cpu')
    clean = R.value_clean_pass(model, vb, sites)
    delta, losses = R.optimize_value(model, vb, sites, clean, hp)
    right, _ = R.right_vector(delta, u, clean.keys, vb.n_rw, k, hp.key_mode)
    assert torch.equal(right, v) and len(losses) == 4


def test_memit_update_matches_solve(tok):
    Cm = torch.eye(6, dtype=torch.float64)
    K = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Rr = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    adj = C.solve_keys(Cm, K, 2.0)
    upd = C.memit_update(adj, Rr, torch.zeros(6, 4, dtype=torch.float64), 'in_out')
    # Delta^T = adj_k R^T with Delta = R [(lambda C + K K^T)^-1 K]^T
    assert torch.allclose(upd, (Rr @ torch.linalg.solve(2.0 * Cm + K @ K.T, K).T).T, atol=1e-10)
