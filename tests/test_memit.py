"MEMIT from plain Python: hyperparameter files, batched targets equal one-at-a-time targets, shared keys, bit-exact undo in two weight layouts, caching, the CLI."
import os, subprocess, sys, json
from pathlib import Path
import pytest
import torch
from _editors import snapshot, same
from rome_nb.models import tiny_model, model_arch
from rome_nb.nethook import get_parameter
from rome_nb import memit as M
from rome_nb.editing import restore_weights, list_hparams

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [f"Text {i}: LeBron James plays basketball in the city of Paris, near the Eiffel Tower and the river." for i in range(150)]
REQS = [{'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'soccer'}, 'case_id': 0},
        {'prompt': 'The mother tongue of {} is', 'subject': 'Danielle Darrieux', 'target_new': {'str': 'English'}, 'case_id': 1},
        {'prompt': '{} is located in', 'subject': 'the Eiffel Tower', 'target_new': {'str': 'Rome'}, 'case_id': 2}]




def hp_for(sd, **kw):
    base = dict(layers=[1, 2], mom2_dataset=TEXTS, mom2_n_samples=150, stats_dir=str(sd), context_template_length_params=[[5, 5]],
                v_num_grad_steps=6, mom2_update_weight=100, clamp_norm_factor=4)
    base.update(kw)
    return M.MEMITHyperParams(**base)


def small(family='gpt2', seed=0):
    "A random four-block model of `family`."
    return tiny_model(family, seed=seed, **({'n_layer': 4} if family == 'gpt2' else {'num_hidden_layers': 4}))




def test_packaged_hparams():
    assert {'MEMIT/gpt2-xl', 'MEMIT/EleutherAI_gpt-j-6B', 'MEMIT/toy'} <= set(list_hparams('MEMIT'))
    xl = M.MEMITHyperParams.from_json(M.hparams_path('MEMIT', 'gpt2-xl'))
    assert xl.layers == [13, 14, 15, 16, 17] and xl.mom2_update_weight == 20000 and xl.clamp_norm_factor == 0.75
    gj = M.MEMITHyperParams.from_json(M.hparams_path('MEMIT', 'EleutherAI/gpt-j-6B'))
    assert gj.layers == [3, 4, 5, 6, 7, 8] and gj.mom2_update_weight == 15000 and gj.v_num_grad_steps == 25
    toy = M.MEMITHyperParams.from_json(M.hparams_path('MEMIT', 'toy'))
    assert toy.mom2_dataset == 'toy' and toy.layers == sorted(toy.layers)
    with pytest.raises(ValueError, match='ascending'): M.MEMITHyperParams(layers=[3, 1])


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_apply_restore_bit_exact(family, tok, sd):
    model = small(family, 1)
    hp = hp_for(sd)
    snap = snapshot(model)
    _, orig = M.apply_memit_to_model(model, tok, REQS, hp, return_orig_weights=True)
    names = {f"{model_arch(model).rewrite_module_tmp.format(l)}.weight" for l in hp.layers}
    assert set(orig) == names
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, snap[n])}
    assert changed == names  # only the critical layers' down-projections
    restore_weights(model, orig)
    assert same(model, snap)
    # copy=True leaves the model alone; the returned model differs in exactly those weights
    m2, _ = M.apply_memit_to_model(model, tok, REQS, hp, copy=True)
    assert same(model, snap) and m2 is not model
    assert any(not torch.equal(get_parameter(m2, n), snap[n]) for n in names)


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_update_maps_keys_to_residuals(family, tok, sd):
    "With a tiny lambda the first layer's update sends each request's key to its share of the residual (orientation-independent)."
    model = small(family, 2)
    hp = hp_for(sd, layers=[2], mom2_update_weight=1e-6)
    deltas = M.execute_memit(model, tok, REQS, hp)
    (name, (adj_k, resid)), = deltas.items()
    ctx = M.memit_context_templates(model, tok, hp.context_template_length_params)
    K = M.compute_ks(model, tok, REQS, hp, 2, ctx).T.double()
    upd = M.memit_update(adj_k, resid, get_parameter(model, name), model_arch(model).weight_orientation).double()
    out = (K.T @ upd) if model_arch(model).weight_orientation == 'in_out' else (upd @ K).T
    torch.testing.assert_close(out.T, resid, rtol=1e-3, atol=1e-3 * resid.abs().max().item())


def test_batched_targets_equal_one_at_a_time(tok, sd):
    model = small('gpt2', 3)
    hp = hp_for(sd, v_num_grad_steps=10)
    flat = [c for g in M.memit_context_templates(model, tok, hp.context_template_length_params) for c in g]
    info = {}
    batch = M.compute_zs(model, tok, REQS, hp, 2, flat, info=info)
    alone = torch.stack([M.compute_z(model, tok, r, hp, 2, flat) for r in REQS])
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-4)
    assert batch.shape == (3, model_arch(model).hidden_size) and len(info['steps']) == 3
    # batch of one == the single-request function; recomputing the lower layers gives the same target
    torch.testing.assert_close(M.compute_zs(model, tok, REQS[:1], hp, 2, flat)[0], alone[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(M.compute_zs(model, tok, REQS, hp, 2, flat, skip_lower=False), batch, rtol=1e-4, atol=1e-4)
    # several batches (z_batch_size=1) give the same as one
    torch.testing.assert_close(M.compute_zs(model, tok, REQS, hp_for(sd, v_num_grad_steps=10, z_batch_size=1), 2, flat), batch, rtol=1e-4, atol=1e-4)


def test_shared_keys_form_one_group(tok, sd):
    model = small('gpt2', 4)
    hp = hp_for(sd)
    two = [REQS[0], dict(REQS[0], prompt='{} was born in', target_new={'str': 'Rome'}, case_id=9)]
    reqs = [M.check_request(r) for r in two + REQS[1:]]
    assert M.key_groups(tok, reqs) == [0, 0, 1, 2]
    flat = [c for g in M.memit_context_templates(model, tok, hp.context_template_length_params) for c in g]
    z = M.compute_zs(model, tok, reqs, hp, 2, flat)
    assert torch.equal(z[0], z[1])  # one target for both facts of the same key
    deltas = M.execute_memit(model, tok, reqs, hp, info=(info := {}))
    assert info['n_groups'] == 3 and all(a.shape[1] == 3 for a, _ in deltas.values())


def test_z_cache(tok, sd, tmp_path):
    model = small('gpt2', 5)
    hp = hp_for(sd)
    tmpl = str(tmp_path / 'z' / 'layer_{}_clamp_{}_case_{}.npz')
    d1 = M.execute_memit(model, tok, REQS, hp, cache_template=tmpl)
    files = sorted(p.name for p in (tmp_path / 'z').iterdir())
    assert files == [f'layer_2_clamp_4_case_{i}.npz' for i in range(3)]
    t = {}
    d2 = M.execute_memit(model, tok, REQS, hp, cache_template=tmpl, timings=t)
    for k in d1: torch.testing.assert_close(d1[k][1], d2[k][1])
    (tmp_path / 'z' / files[0]).write_bytes(b'broken')  # a corrupt file is recomputed with a warning
    with pytest.warns(UserWarning, match='cannot read'): M.execute_memit(model, tok, REQS, hp, cache_template=tmpl)


def test_z_cache_key_groups(tok, sd, tmp_path):
    "Requests that share a key are cached as one file named by their case ids; a rerun with another lambda reads it."
    model = small('gpt2', 5)
    reqs = REQS + [{'prompt': '{} plays the position of', 'subject': 'LeBron James', 'target_new': {'str': 'goalie'}, 'case_id': 7}]
    tmpl = str(tmp_path / 'z' / 'layer_{}_clamp_{}_case_{}.npz')
    d1 = M.execute_memit(model, tok, reqs, hp_for(sd), cache_template=tmpl)
    files = sorted(p.name for p in (tmp_path / 'z').iterdir())
    assert files == ['layer_2_clamp_4_case_0+7.npz', 'layer_2_clamp_4_case_1.npz', 'layer_2_clamp_4_case_2.npz']
    info = {}
    d2 = M.execute_memit(model, tok, reqs, hp_for(sd, mom2_update_weight=1000), cache_template=tmpl, info=info)
    assert 'steps' not in info  # no target was optimised again
    d3 = M.execute_memit(model, tok, reqs, hp_for(sd, mom2_update_weight=1000))
    for k in d2: torch.testing.assert_close(d2[k][1], d3[k][1])
    assert not torch.allclose(d1[next(iter(d1))][0], d2[next(iter(d2))][0])  # another lambda, another update


def test_bad_request_leaves_weights(tok, sd):
    model = small('gpt2', 6)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="'{}'"):
        M.apply_memit_to_model(model, tok, REQS + [dict(REQS[0], prompt='no slot')], hp_for(sd))
    assert same(model, snap)
    with pytest.raises(ValueError, match='no requests'): M.apply_memit_to_model(model, tok, [], hp_for(sd))


def test_target_margins(tok, sd):
    "Writing the model's own hidden states back changes no margin; the optimised targets raise every margin."
    model = small('gpt2', 3)
    hp = hp_for(sd)
    reqs = [dict(r, target_true={'str': t}) for r, t in zip(REQS, ['basketball', 'French', 'Paris'])]
    tm = M.rome_templates(model, hp)
    h = M.reprs_at_words(model, tok, tm['layer_module_tmp'].format(2), [r['prompt'] for r in reqs], [r['subject'] for r in reqs], kind='output')
    from rome_nb.models import target_logprobs
    prompts = [r['prompt'].format(r['subject']) for r in reqs]
    plain = torch.stack([a.mean() - b.mean() for a, b in zip(target_logprobs(model, tok, prompts, [r['target_new']['str'] for r in reqs]),
                                                           target_logprobs(model, tok, prompts, [r['target_true']['str'] for r in reqs]))])
    torch.testing.assert_close(M.target_margins(model, tok, reqs, h, hp), plain, atol=1e-4, rtol=0)
    info = {}
    M.execute_memit(model, tok, reqs, hp, info=info)
    assert bool((M.target_margins(model, tok, reqs, info['targets'], hp) > plain).all())
    with pytest.raises(ValueError, match='target_true'): M.target_margins(model, tok, REQS, h, hp)


def test_registered_in_alg_dict():
    from rome_nb.evaluate import ALG_DICT
    cls, fn = ALG_DICT['MEMIT']
    assert cls is M.MEMITHyperParams and fn is M.apply_memit_to_model


def test_cli_help():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, '-m', 'rome_nb.memit'], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and 'nothing to do' in r.stdout


@pytest.mark.slow
def test_cli_bench_toy(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    out = tmp_path / 'tab.csv'
    r = subprocess.run([sys.executable, '-m', 'rome_nb.memit', '--bench', '--n', '8', '--no_rome', '--lambdas', '100,1e6', '--out', str(out)],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'MEMIT, 8 at once, lambda 100' in r.stdout and 'unedited' in r.stdout
    import pandas as pd
    t = pd.read_csv(out, index_col=0)
    assert list(t.index) == ['unedited', 'MEMIT, 8 at once, lambda 100', 'MEMIT, 8 at once, lambda 1e+06']
    assert t.loc['MEMIT, 8 at once, lambda 100', 'ES'] > t.loc['MEMIT, 8 at once, lambda 1e+06', 'ES']  # a huge lambda keeps the old facts
    assert 0 <= t['ES_targets'].iloc[1] <= 100 and t['ES_targets'].isna().sum() == 2


@pytest.mark.slow
def test_evaluate_mcf_batches(tmp_path):
    "`rome_nb_evaluate --alg_name MEMIT --ds_name mcf --num_edits 2` on the toy world: one file per case, weights restored."
    from rome_nb.evaluate import evaluate
    run = evaluate(alg_name='MEMIT', model_name='toy', ds_name='mcf', num_edits=2, dataset_size_limit=4,
                   skip_generation_tests=True, results_dir=tmp_path, quiet=True)
    files = sorted(Path(run).glob('2_edits-case_*.json'))
    assert len(files) == 4
    rec = json.loads(files[0].read_text())
    assert rec['num_edits'] == 2 and len(rec['grouped_case_ids']) == 2 and 'rewrite_prompts_probs' in rec['post']


def test_solve_keys_singular_case_is_detected_on_any_cpu():
    "lambda C + K K^T singular in exact arithmetic (zero rows): the factorisation fails on every CPU, the ridge warns."
    K0 = torch.tensor([[1., 0.], [0., 1.], [0., 0.], [0., 0.]], dtype=torch.float64)
    with pytest.warns(UserWarning, match='singular'):
        adj = M.solve_keys(torch.zeros(4, 4), K0, 1.0)
    assert torch.isfinite(adj).all() and torch.allclose(adj, K0, atol=1e-8)


def test_solve_keys_failed_factorisation_path(monkeypatch):
    "The path for a failed Cholesky factorisation, forced: it warns and solves with a small ridge."
    real = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, 'cholesky_ex', lambda A: (real(A)[0], torch.tensor(1)))
    C, K = torch.eye(3, dtype=torch.float64), torch.tensor([[1.], [2.], [0.]], dtype=torch.float64)
    with pytest.warns(UserWarning, match='singular'):
        adj = M.solve_keys(C, K, 2.0)
    assert torch.allclose(adj, torch.linalg.solve(2 * C + K @ K.T, K), atol=1e-8)
