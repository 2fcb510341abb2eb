"ROME from plain Python: hyperparameter files, the exact rank-one property in every family, undo, guard rails, edit files."
import inspect, json, warnings
from dataclasses import replace
from pathlib import Path
import pytest
import torch
from rome_nb.models import tiny_model, model_arch, TINY_CONFIGS
from rome_nb.nethook import get_module, get_parameter, untuple, retuple
from rome_nb import rome as R

TEXTS = [f"Text {i}: LeBron James plays basketball in the city of Paris, near the Eiffel Tower and the river." for i in range(150)]
REQ = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'soccer'}, 'target_true': {'str': 'basketball'}}




def hp_for(sd, **kw):
    base = dict(layers=[1], mom2_dataset=TEXTS, mom2_n_samples=150, stats_dir=str(sd), context_template_length_params=[[5, 5]],
                v_num_grad_steps=6)
    base.update(kw)
    return R.ROMEHyperParams(**base)


def out_of(model, name, k):
    with torch.no_grad(): return get_module(model, name)(k.to(next(model.parameters()).dtype))


def test_packaged_hparams():
    names = R.list_hparams('ROME')
    for n in ['gpt2-medium', 'gpt2-large', 'gpt2-xl', 'EleutherAI_gpt-j-6B', 'EleutherAI_gpt-neox-20b']:
        assert f'ROME/{n}' in names
        h = R.ROMEHyperParams.from_json(R.hparams_path('ROME', n))
        assert h.mom2_dataset == 'wikipedia' and h.v_num_grad_steps == 20 and h.fact_token == 'subject_last'
    assert R.hparams_path('ROME', 'gpt2-xl') == R.hparams_path('ROME', str(R.hparams_path('ROME', 'gpt2-xl')))
    with pytest.raises(FileNotFoundError, match='available'):
        R.hparams_path('ROME', 'no-such-model')
    toy = R.ROMEHyperParams.from_json(R.hparams_path('ROME', 'toy'))  # the toy world's model: its corpus, adapter's module names
    assert toy.mom2_dataset == 'toy' and toy.rewrite_module_tmp is None and toy.layers == [0]


def test_hparams_json_roundtrip(tmp_path):
    h = R.ROMEHyperParams(layers=[3], key_mode='prompt', v_lr=0.1)
    h.to_json(tmp_path / 'h.json')
    assert R.ROMEHyperParams.from_json(tmp_path / 'h.json') == h
    d = json.loads((tmp_path / 'h.json').read_text()); d['alg_name'] = 'ROME'
    with pytest.warns(UserWarning, match='alg_name'):
        R.ROMEHyperParams.from_dict(d)


def test_contract_signature():
    # the evaluation harness registers ALG_DICT["ROME"] = (ROMEHyperParams, apply_rome_to_model)
    ps = list(inspect.signature(R.apply_rome_to_model).parameters)
    assert ps[:6] == ['model', 'tok', 'requests', 'hparams', 'copy', 'return_orig_weights']
    assert inspect.signature(R.apply_rome_to_model).parameters['copy'].default is False


@pytest.mark.parametrize('family', sorted(TINY_CONFIGS))
@pytest.mark.parametrize('key_mode', ['averaged', 'prompt'])
def test_exact_update_and_restore_every_family(family, key_mode, tok, sd):
    model = tiny_model(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hp = hp_for(sd, key_mode=key_mode)
    info = []
    model, orig = R.apply_rome_to_model(model, tok, [REQ], hp, return_orig_weights=True, info=info)
    li = info[0][1]
    wname = model_arch(model).weight_name(1); rw = wname[: -len('.weight')]
    assert list(orig) == [wname]
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == [wname]
    key = li['key_avg'] if key_mode == 'averaged' else li['key_prompt']
    new_out = out_of(model, rw, key)
    R.restore_weights(model, orig)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # the edited projection maps the chosen key to its old output plus delta: fails if the layout is transposed
    assert torch.allclose(new_out - out_of(model, rw, key), li['delta'], atol=1e-4 * max(1.0, li['delta'].abs().max().item()))


def test_square_weight_uses_orientation(tok, sd):
    m = tiny_model('llama', intermediate_size=32)  # down_proj weight 32 x 32
    assert get_parameter(m, model_arch(m).weight_name(1)).shape == (32, 32)
    info = []
    m, orig = R.apply_rome_to_model(m, tok, REQ, hp_for(sd), return_orig_weights=True, info=info)
    li = info[0][1]
    rw = model_arch(m).weight_name(1)[:-7]
    new = out_of(m, rw, li['key_avg']); R.restore_weights(m, orig)
    assert torch.allclose(new - out_of(m, rw, li['key_avg']), li['delta'], atol=1e-4)


def two_values(model, tok, sd, layer, first:dict, second:dict, between=lambda: None):
    "The value vector computed twice for the same request (`first`/`second` kwargs of compute_v), with their diagnostics."
    hp = hp_for(sd, layers=[layer])
    ctx = R.get_context_templates(model, tok, hp.context_template_length_params)
    req = R.check_request(REQ)
    k = R.compute_key(model, tok, req, hp, layer, ctx); u = R.compute_u(model, tok, req, hp, layer, ctx, key=k)
    i1, i2 = {}, {}
    v1 = R.compute_v(model, tok, req, hp, layer, u, ctx, key=k, info=i1, **first)
    between()
    v2 = R.compute_v(model, tok, req, hp, layer, u, ctx, key=k, info=i2, **second)
    assert torch.allclose(v1, v2, rtol=1e-4, atol=1e-5)
    assert [round(l[0], 4) for l in i1['losses']] == [round(l[0], 4) for l in i2['losses']]
    return i1, i2


@pytest.mark.parametrize('family', ['gpt2', 'llama', 'gpt_neo', 'gemma'])
def test_skipping_lower_layers_is_exact(family, tok, sd):
    model = tiny_model(family, **({'num_hidden_layers': 4} if family in ('llama', 'gemma') else {'num_layers': 4, 'attention_types': [[['global', 'local'], 2]]} if family == 'gpt_neo' else {'n_layer': 4}))
    two_values(model, tok, sd, 2, {}, dict(skip_lower=False))
    # the blocks are back in place
    assert all(type(b).__name__ != '_CachedBlock' for b in model.modules())


@pytest.mark.parametrize('family', ['gpt2', 'opt', 'gemma'])
def test_selected_logits_are_exact(family, tok, sd, monkeypatch):
    # the steps unembed only the positions the loss reads; forcing the full path gives the same optimisation
    i1, i2 = two_values(tiny_model(family), tok, sd, 1, {}, {}, between=lambda: monkeypatch.setattr(R, 'same_logits', lambda *a: False))
    assert (i1['selected_logits'], i2['selected_logits']) == (True, False)


def test_logit_postprocessing_keeps_full_path(tok, sd):
    # a model that changes its logits after the unembedding (a logit scale here, as Cohere has) must not take the shortcut
    model = tiny_model('gpt2', n_layer=3)
    forward = model.forward
    def scaled(*a, **k):
        out = forward(*a, **k); out.logits = 1.5 * out.logits; return out
    model.forward = scaled
    info = []
    R.apply_rome_to_model(model, tok, REQ, hp_for(sd), info=info)
    assert info[0][1]['selected_logits'] is False


def test_sequential_and_copy(tok, sd):
    model = tiny_model('gpt2', n_layer=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    r2 = {'prompt': '{} is located in', 'subject': 'The Eiffel Tower', 'target_new': 'Rome'}
    edited, orig = R.apply_rome_to_model(model, tok, [REQ, r2], hp_for(sd), copy=True, return_orig_weights=True,
                                         return_orig_weights_device='cpu')  # the harness's conserve_memory option
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    one, _ = R.apply_rome_to_model(model, tok, [REQ], hp_for(sd), copy=True)
    R.apply_rome_to_model(one, tok, [r2], hp_for(sd))
    assert all(torch.equal(p, q) for p, q in zip(one.parameters(), edited.parameters()))
    R.restore_weights(edited, orig)
    assert all(torch.equal(p, before[n]) for n, p in edited.named_parameters())


def test_registered_in_the_harness(tok, sd):
    # ALG_DICT["ROME"] resolves to this module's contract, and the harness's edit-score-restore loop runs with it
    from rome_nb.evaluate import ALG_DICT, edit_and_score, weights_checksum
    from rome_nb.metrics import compute_rewrite_quality_counterfact
    HP, apply = ALG_DICT['ROME']
    assert HP is R.ROMEHyperParams and apply is R.apply_rome_to_model
    model = tiny_model('gpt2', n_layer=3, initializer_range=0.2)  # large enough weights for an edit to show
    fp = weights_checksum(model)
    rec = {'case_id': 7, 'requested_rewrite': {**REQ, 'relation_id': 'P641'}, 'paraphrase_prompts': ['LeBron James is a player of'],
           'neighborhood_prompts': ['Megan Rapinoe plays the sport of'], 'attribute_prompts': [], 'generation_prompts': []}
    t, post, pre = edit_and_score(model, tok, [rec], apply, hp_for(sd, v_num_grad_steps=20), compute_rewrite_quality_counterfact, checksum=fp,
                                  conserve_memory=True)  # originals kept on the CPU, as --conserve_memory asks
    assert post[7]['rewrite_prompts_probs'][0]['target_new'] < pre[7]['rewrite_prompts_probs'][0]['target_new']


def test_bad_requests(tok, sd):
    model = tiny_model('gpt2', n_layer=3)
    for bad, msg in [({**REQ, 'prompt': 'Megan Rapinoe plays'}, 'not in the prompt'), ({**REQ, 'target_new': {'str': ' '}}, 'empty target'),
                     ({**REQ, 'subject': ''}, 'empty subject'), ({'prompt': '{} x'}, 'lacks')]:
        with pytest.raises(ValueError, match=msg): R.apply_rome_to_model(model, tok, [bad], hp_for(sd))


def test_non_finite_leaves_weights_untouched(tok, sd):
    model = tiny_model('gpt2', n_layer=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    info = []
    h = get_module(model, 'transformer.h.3').register_forward_hook(lambda m, i, o: retuple(o, untuple(o) * float('nan')) if info else o)
    try:
        with pytest.raises(FloatingPointError):
            R.apply_rome_to_model(model, tok, [REQ, {**REQ, 'prompt': '{} is a fan of'}], hp_for(sd), info=info)
    finally: h.remove()
    assert len(info) == 1
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_ill_conditioned_statistics_regularised(tok, sd):
    model = tiny_model('gpt2', n_layer=3)
    with pytest.warns(UserWarning, match='ill-conditioned'):
        edited, _ = R.apply_rome_to_model(model, tok, REQ, hp_for(sd, mom2_dataset=TEXTS[:2], mom2_n_samples=2), copy=True)
    assert all(torch.isfinite(p).all() for p in edited.parameters())


def test_edit_file_roundtrip(tok, sd, tmp_path):
    model = tiny_model('llama')
    edit = R.RomeEdit.compute(model, tok, REQ, hp_for(sd))
    path = edit.save(tmp_path / 'e.safetensors')
    assert path.stat().st_size < 4 * (64 + 32) + 30_000  # two small vectors and JSON metadata (here with the statistics texts)
    loaded = R.RomeEdit.load(path)
    assert loaded.request == R.check_request(REQ) and loaded.hparams['layers'] == [1]
    fresh = tiny_model('llama')
    before = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    orig = loaded.apply(fresh)
    direct, _ = R.apply_rome_to_model(model, tok, REQ, hp_for(sd), copy=True)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), direct.parameters()))
    loaded.revert(fresh, orig)
    assert all(torch.equal(p, before[n]) for n, p in fresh.named_parameters())
    with pytest.raises(ValueError, match='no parameter named'): loaded.apply(tiny_model('gpt2'))
    with pytest.raises(ValueError, match='sizes'): loaded.apply(tiny_model('llama', intermediate_size=48))


def test_half_precision_model(tok, sd):
    model = tiny_model('llama').to(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, orig = R.apply_rome_to_model(model, tok, REQ, hp_for(sd), return_orig_weights=True)
    w = get_parameter(model, list(orig)[0])
    assert w.dtype == torch.bfloat16 and torch.isfinite(w).all() and not torch.equal(w, orig[list(orig)[0]])
    R.restore_weights(model, orig)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.slow
def test_bench_cli_on_the_toy_model():
    # `python -m rome_nb.rome_in_use` prints the paper's table for a couple of toy CounterFact edits
    import os, subprocess, sys
    env = dict(os.environ, PYTHONPATH=str(Path(R.__file__).parents[1]), OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, '-m', 'rome_nb.rome_in_use', '--n_cf', '2', '--n_seq', '0', '--n_timing', '0', '--gpt2_small', '0'],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '2 counterfactual edits' in out.stdout and 'ROME without C' in out.stdout and 'unedited' in out.stdout
