"AlphaEdit (rome_nb.alphaedit): registry, hyperparameters, the projector, MEMIT as its special case, all-or-nothing writes, seq_state, packaged files."
import json, warnings
from dataclasses import replace, fields
import pytest
import torch
from _editors import snapshot, same
from rome_nb.models import tiny_model, tiny_tokenizer, model_arch
from rome_nb.nethook import get_parameter
from rome_nb.editing import hparams_path, list_hparams, restore_weights
from rome_nb.edit_core import rome_templates
from rome_nb import memit as M
from rome_nb import alphaedit as A

TEXTS = [f"Text {i}: LeBron James plays basketball in the city of Paris, near the Eiffel Tower and the river." for i in range(150)]
REQS = [{'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'soccer'}, 'case_id': 0},
        {'prompt': 'The mother tongue of {} is', 'subject': 'Danielle Darrieux', 'target_new': {'str': 'English'}, 'case_id': 1},
        {'prompt': '{} is located in', 'subject': 'the Eiffel Tower', 'target_new': {'str': 'Rome'}, 'case_id': 2}]
SMALL = dict(layers=[1, 2], mom2_dataset=TEXTS, mom2_n_samples=150, context_template_length_params=[[5, 5]],
             v_num_grad_steps=6, clamp_norm_factor=4)


def hp_for(sd, **kw):
    return A.AlphaEditHyperParams(**{**SMALL, 'stats_dir': str(sd), 'L2': 1.0, **kw})


def small(family='gpt2', seed=0):
    return tiny_model(family, seed=seed, **({'n_layer': 4} if family == 'gpt2' else {'num_hidden_layers': 4}))


def weight_names(model, hp):
    return [f"{model_arch(model).rewrite_module_tmp.format(l)}.weight" for l in hp.layers]


def test_registry():
    from rome_nb.evaluate import ALG_DICT
    assert ALG_DICT['AlphaEdit'] == (A.AlphaEditHyperParams, A.apply_AlphaEdit_to_model)


def test_hparam_validation():
    hp = A.AlphaEditHyperParams(layers=[1])
    assert isinstance(hp, M.MEMITHyperParams) and (hp.nullspace_threshold, hp.L2) == (2e-2, 10.0)
    for kw, msg in [({'L2': 0}, 'L2=0 is out of range'), ({'L2': -1.0}, 'L2'), ({'nullspace_threshold': -0.1}, 'nullspace_threshold'),
                    ({'nullspace_threshold': float('inf')}, 'out of range'), ({'L2': True}, 'out of range'),
                    ({'mom2_adjustment': False}, 'mom2_adjustment'), ({'layers': [3, 1]}, 'ascending'),
                    ({'v_lr': 0}, 'v_lr')]:
        with pytest.raises(ValueError, match=msg): A.AlphaEditHyperParams(**{'layers': [1], **kw})


def test_projector_properties():
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    K0 = Q[:, :5] @ torch.randn(5, 100, generator=g, dtype=torch.float64)  # preserved keys span 5 of 8 directions
    C = K0 @ K0.T / 100
    P = A.null_space_projector(C, 1e-9)
    torch.testing.assert_close(P, P.T, rtol=0, atol=0)
    torch.testing.assert_close(P @ P, P, rtol=0, atol=1e-12)
    assert round(torch.trace(P).item()) == 3
    assert (P @ K0).abs().max() < 1e-10 * K0.abs().max()
    torch.testing.assert_close(P, Q[:, 5:] @ Q[:, 5:].T, rtol=0, atol=1e-10)  # the complement of the keys' span
    torch.testing.assert_close(A.null_space_projector(C, 1e30), torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-12)
    assert A.null_space_projector(C + torch.eye(8), 0.5).abs().max() == 0


def test_update_is_zero_on_preserved_keys():
    g = torch.Generator().manual_seed(2)
    K0 = torch.zeros(6, 30, dtype=torch.float64)
    K0[:3] = torch.randn(3, 30, generator=g, dtype=torch.float64)
    P = A.null_space_projector(K0 @ K0.T, 1e-8)
    K1, R = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    upd = A.alphaedit_keys(P, K1, None, 1e-6) @ R.T
    assert (K0.T @ upd).abs().max() < 1e-10
    torch.testing.assert_close(K1.T @ upd, R.T, rtol=0, atol=1e-4)


def test_identity_projector_reproduces_memit(tok, sd):
    "P = I (every direction null) and no earlier keys: AlphaEdit's update is MEMIT's with C = I and lambda = L2."
    lam = 3.0
    hp_a = hp_for(sd, nullspace_threshold=1e30, L2=lam)
    kw = {f.name: getattr(hp_a, f.name) for f in fields(M.MEMITHyperParams) if f.name != 'source'}
    hp_m = M.MEMITHyperParams(**{**kw, 'mom2_adjustment': False, 'mom2_update_weight': lam})
    model = small('gpt2', 3)
    d_m = M.execute_memit(model, tok, REQS, hp_m)
    d_a, batch = A.execute_alphaedit(model, tok, REQS, hp_a)
    assert list(d_a) == list(d_m)
    for n in d_m:
        torch.testing.assert_close(batch['projectors'][n].double(), torch.eye(len(batch['projectors'][n]), dtype=torch.float64),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(d_a[n][1], d_m[n][1], rtol=1e-6, atol=1e-9)  # the residual shares
        torch.testing.assert_close(d_a[n][0], d_m[n][0], rtol=1e-5, atol=1e-8 * d_m[n][0].abs().max().item())
    snap = snapshot(model)
    m1, _ = M.apply_memit_to_model(model, tok, REQS, hp_m, copy=True)
    m2, _ = A.apply_AlphaEdit_to_model(model, tok, REQS, hp_a, copy=True)
    for n in d_m:
        torch.testing.assert_close(get_parameter(m2, n), get_parameter(m1, n), rtol=1e-5, atol=1e-6)
    assert same(model, snap)


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_apply_restore_and_copy(family, tok, sd):
    model, hp = small(family, 1), hp_for(sd)
    snap = snapshot(model)
    _, orig = A.apply_AlphaEdit_to_model(model, tok, REQS, hp, return_orig_weights=True)
    names = set(weight_names(model, hp))
    assert set(orig) == names
    assert {n for n, p in model.named_parameters() if not torch.equal(p, snap[n])} == names
    restore_weights(model, orig)
    assert same(model, snap)
    m2, _ = A.apply_AlphaEdit_to_model(model, tok, REQS, hp, copy=True)
    assert m2 is not model and same(model, snap)


def test_failure_mid_write_leaves_weights_and_state(tok, sd, monkeypatch):
    model, hp = small('gpt2', 4), hp_for(sd)
    snap, state = snapshot(model), {}
    real, calls = M.add_to_weights, []
    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2: raise RuntimeError('disk on fire')
        return real(*a, **k)
    monkeypatch.setattr(M, 'add_to_weights', second_fails)  # the write of `write_memit_deltas`
    with pytest.raises(RuntimeError, match='disk on fire'):
        A.apply_AlphaEdit_to_model(model, tok, REQS, hp, seq_state=state)
    assert len(calls) == 2 and same(model, snap) and state == {}


def test_seq_state_accumulates(tok, sd, tmp_path):
    model, hp = small('gpt2', 5), hp_for(sd)
    snap, state = snapshot(model), {}
    _, o1 = A.apply_AlphaEdit_to_model(model, tok, REQS[:2], hp, return_orig_weights=True, seq_state=state)
    names = weight_names(model, hp)
    assert state['n_keys'] == 2 and set(state['cum_kkt']) == set(state['projectors']) == set(names)
    assert all(v.device.type == 'cpu' and v.dtype == torch.float32 for v in state['cum_kkt'].values())
    first = {n: v.clone() for n, v in state['cum_kkt'].items()}
    proj = {n: v.clone() for n, v in state['projectors'].items()}
    torch.save(state, tmp_path / 'state.pt')  # the harness checkpoints it
    state = torch.load(tmp_path / 'state.pt')
    # the second batch's update sees the first batch's keys: it differs from a one-batch edit of the same model
    fresh, _ = A.execute_alphaedit(model, tok, REQS[2:], hp)
    seq, batch = A.execute_alphaedit(model, tok, REQS[2:], hp, seq_state=state)
    assert not torch.allclose(seq[names[0]][0], fresh[names[0]][0])
    _, o2 = A.apply_AlphaEdit_to_model(model, tok, REQS[2:], hp, return_orig_weights=True, seq_state=state)
    assert state['n_keys'] == 3
    for n in names:
        torch.testing.assert_close(state['cum_kkt'][n], first[n] + batch['kkt'][n], rtol=1e-5, atol=1e-5)
        assert torch.equal(state['projectors'][n], proj[n])  # the first batch's projectors are kept
    with pytest.raises(ValueError, match='nullspace_threshold'):
        A.apply_AlphaEdit_to_model(model, tok, REQS[:1], replace(hp, nullspace_threshold=0.5), seq_state=state)
    restore_weights(model, o1)
    assert same(model, snap)
    wide = {'cum_kkt': {names[0]: torch.zeros(3, 3)}}
    with pytest.raises(ValueError, match='another model'):
        A.apply_AlphaEdit_to_model(model, tok, REQS[:1], hp, seq_state=wide)
    assert same(model, snap)


def test_memit_ignores_seq_state(tok, sd):
    "The contract: a method that does not know `seq_state` takes it in its **kwargs."
    from rome_nb.memit import apply_memit_to_model
    model = small('gpt2', 6)
    hp = M.MEMITHyperParams(**{**SMALL, 'stats_dir': str(sd), 'mom2_update_weight': 100})
    state = {}
    _, orig = apply_memit_to_model(model, tok, REQS[:1], hp, return_orig_weights=True, seq_state=state)
    assert orig and state == {}


# hub name -> (tiny family, number of layers of the real model, the authors' file)
MODELS = {'gpt2-xl': ('gpt2', 48, 'gpt2-xl.json'), 'EleutherAI/gpt-j-6B': ('gptj', 28, 'EleutherAI_gpt-j-6B.json'),
          'meta-llama/Meta-Llama-3-8B': ('llama', 32, 'Llama3-8B.json')}


def load(name):
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no unknown field
        return A.AlphaEditHyperParams.from_json(hparams_path('AlphaEdit', name))


def test_packaged_files():
    assert {'AlphaEdit/toy', 'AlphaEdit/gpt2-xl', 'AlphaEdit/EleutherAI_gpt-j-6B',
            'AlphaEdit/meta-llama_Meta-Llama-3-8B'} <= set(list_hparams('AlphaEdit'))
    toy = load('toy')
    assert toy.mom2_dataset == 'toy' and toy.source is None
    assert A.AlphaEditHyperParams.from_dict(json.loads(json.dumps(toy.to_dict()))) == toy


@pytest.mark.parametrize('name', sorted(MODELS))
def test_authors_values_and_source(name):
    family, n_layers, fname = MODELS[name]
    h = load(name)
    assert h.source['repo'] == 'jianghoucheng/AlphaEdit' and h.source['path'] == f'hparams/AlphaEdit/{fname}'
    assert len(h.source['commit']) == 40
    assert (h.nullspace_threshold, h.L2, h.clamp_norm_factor, h.kl_factor, h.v_weight_decay) == (0.02, 10, 0.75, 0.0625, 0.5)
    assert h.v_loss_layer == n_layers - 1 and h.mom2_adjustment and h.mom2_n_samples == 100000
    assert h.layers == {'gpt2': [13, 14, 15, 16, 17], 'gptj': [3, 4, 5, 6, 7, 8], 'llama': [4, 5, 6, 7, 8]}[family]
    assert (h.v_num_grad_steps, h.v_lr) == {'gpt2': (20, 0.5), 'gptj': (25, 0.5), 'llama': (25, 0.1)}[family]
    assert h.to_dict()['source'] == h.source


@pytest.mark.parametrize('name', sorted(MODELS))
def test_packaged_file_edits_a_tiny_model_of_its_family(name, tok, tmp_path):
    family, n_layers, _ = MODELS[name]
    kw = {'n_layer': n_layers} if family in ('gpt2', 'gptj') else {'num_hidden_layers': n_layers}
    model = tiny_model(family, **kw)
    h = load(name)
    tm = rome_templates(model, h)
    for k in ('rewrite_module_tmp', 'layer_module_tmp', 'mlp_module_tmp', 'attn_module_tmp', 'ln_f_module', 'lm_head_module'):
        assert tm[k] == getattr(h, k)  # the file's names fit the family
    h = replace(h, v_num_grad_steps=2, context_template_length_params=[[5, 5]], mom2_dataset=TEXTS[:60], mom2_n_samples=60,
                stats_dir=str(tmp_path))
    snap = snapshot(model)
    _, orig = A.apply_AlphaEdit_to_model(model, tok, REQS[:1], h, return_orig_weights=True)
    names = [f"{h.rewrite_module_tmp.format(l)}.weight" for l in h.layers]
    assert sorted(orig) == sorted(names)
    assert all(torch.isfinite(get_parameter(model, n)).all() for n in names)
    restore_weights(model, orig)
    assert same(model, snap)


def test_edits_change_the_toy_predictions():
    from rome_nb.toyworld import load_toy, toy_counterfact
    mt, world = load_toy()
    recs = toy_counterfact(world, 10)
    reqs = [{'case_id': r['case_id'], **r['requested_rewrite']} for r in recs]
    before = M.toy_edit_scores(mt.model, mt.tokenizer, recs, world.subjects)
    _, orig = A.apply_AlphaEdit_to_model(mt.model, mt.tokenizer, reqs, load('toy'), return_orig_weights=True)
    try: after = M.toy_edit_scores(mt.model, mt.tokenizer, recs, world.subjects)
    finally: restore_weights(mt.model, orig)
    assert before['ES'] == 0 and after['ES'] >= 60 and after['NS'] >= 70
