"KN (rome_nb.baselines.kn): integrated gradients (batched = per layer, completeness), neuron selection, the edit, exact undo, portability."
import dataclasses, os, subprocess, sys, json
from pathlib import Path
import pytest
import torch
from _editors import snapshot, same
from rome_nb.models import tiny_model, tiny_tokenizer, target_token_ids, layername, model_arch
from rome_nb.nethook import get_module, get_parameter
from rome_nb.editing import hparams_path, restore_weights
from rome_nb.baselines.ft import request_text
from rome_nb.baselines.kn import (KNHyperParams, apply_kn_to_model, integrated_gradients, neuron_activations, kn_layers,
                                  coarse_neurons, refine_neurons, find_knowledge_neurons, kn_direction,
                                  replace_last_activations, _ig_rows)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
torch.set_num_threads(1)
REQ = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'Paris'}, 'target_true': {'str': 'the'}}
TOK = {'gpt2': 'bytelevel', 'llama': 'metaspace', 'opt': 'bytelevel'}


def model_tok(family, **kw):
    tok = tiny_tokenizer(TOK[family])
    return tiny_model(family, vocab_size=tok.vocab_size, **kw), tok




def test_packaged_hparams():
    hp = KNHyperParams.from_json(hparams_path('KN', 'gpt2-xl'))
    assert (hp.lr_scale, hp.n_toks, hp.refine, hp.batch_size, hp.steps, hp.adaptive_threshold, hp.p) == (1.0, 10, False, 20, 20, 0.2, 0.4)
    KNHyperParams.from_json(hparams_path('KN', 'toy'))
    for kw in [dict(steps=0), dict(p=1.0), dict(adaptive_threshold=2.)]:
        with pytest.raises(ValueError): KNHyperParams(**kw)


def test_registered_in_alg_dict():
    from rome_nb.evaluate import ALG_DICT
    assert ALG_DICT['KN'] == (KNHyperParams, apply_kn_to_model)


@pytest.mark.parametrize('family', ['gpt2', 'llama', 'opt'])
def test_batched_ig_equals_one_layer_at_a_time(family):
    m, tok = model_tok(family, **({'n_layer': 3} if family == 'gpt2' else {'num_hidden_layers': 3}))
    text, _ = request_text(REQ)
    hp = KNHyperParams(steps=8, batch_size=13)  # rows of different layers share passes
    scores = integrated_gradients(m, tok, text, 'Paris', hp)
    layers = kn_layers(m, hp)
    p_ids, t_ids = target_token_ids(tok, text, 'Paris')
    acts = neuron_activations(m, p_ids, layers)
    assert scores.shape == (3, model_arch(m).mlp_width)
    loop = torch.stack([acts[j] * _ig_rows(m, p_ids, t_ids[0], acts[j:j + 1], [l], hp.steps, hp.steps)[0] / hp.steps
                        for j, l in enumerate(layers)])
    assert torch.allclose(scores, loop, atol=1e-7, rtol=1e-4)
    assert all(p.grad is None for p in m.parameters()) and all(p.requires_grad for p in m.parameters())


def test_completeness():
    "With many steps, a layer's attributions sum to p(object | actual activations) - p(object | zeroed)."
    m, tok = model_tok('gpt2', n_layer=2)
    text, _ = request_text(REQ)
    p_ids, t_ids = target_token_ids(tok, text, 'Paris')
    hp = KNHyperParams(steps=200, batch_size=200, layers=[1])
    s = integrated_gradients(m, tok, text, 'Paris', hp)[0]
    acts = neuron_activations(m, p_ids, [1])[0]
    def p(scale):
        with torch.no_grad(), replace_last_activations(m, {1: (torch.tensor([0]), scale * acts[None])}, len(p_ids)):
            return torch.softmax(m(input_ids=torch.tensor([p_ids])).logits[0, -1], -1)[t_ids[0]].item()
    diff = p(1.) - p(0.)
    assert abs(diff) > 1e-6
    assert abs(s.sum().item() - diff) < 0.05 * abs(diff) + 1e-7, (s.sum().item(), diff)


def test_selection():
    s = torch.tensor([[0.1, 1.0, -2.0], [0.25, 0.19, 0.5]])
    assert coarse_neurons(s, 0.2) == [(0, 1), (1, 0), (1, 2)]
    assert coarse_neurons(s, 0.2, layers=[4, 7]) == [(4, 1), (7, 0), (7, 2)]
    assert refine_neurons([[(1, 2), (3, 4)], [(1, 2)], [(1, 2), (5, 6)]], 0.4) == [(1, 2)]
    assert set(refine_neurons([[(1, 2), (3, 4)], [(1, 2)]], 0.4, refine=False)) == {(1, 2), (3, 4)}


@pytest.mark.parametrize('family', ['gpt2', 'llama', 'opt'])
def test_edit_rows_and_exact_undo(family):
    m, tok = model_tok(family)
    snap = snapshot(m)
    hp = KNHyperParams(lr_scale=0.5, adaptive_threshold=0.5)
    text, _ = request_text(REQ)
    d = kn_direction(m, tok, text, 'Paris', 'the', hp.lr_scale)
    expected = find_knowledge_neurons(m, tok, [text], 'the', hp)
    log = []
    edited, orig = apply_kn_to_model(m, tok, [REQ], hp, return_orig_weights=True, info=log)
    assert edited is m
    neurons = log[0]['neurons']
    assert neurons and neurons == expected
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, snap[n])}
    assert changed == set(orig) == {layername(m, l, 'down_proj') + '.weight' for l, _ in neurons}
    orient = model_arch(m).weight_orientation
    for l, i in neurons:
        name = layername(m, l, 'down_proj') + '.weight'
        delta = get_parameter(m, name) - orig[name]
        row = delta[i] if orient == 'in_out' else delta[:, i]
        k = sum(1 for x in neurons if x == (l, i))
        assert torch.allclose(row, k * d, atol=1e-6)
        others = torch.ones(delta.shape[0 if orient == 'in_out' else 1], dtype=torch.bool)
        others[[j for (ll, j) in neurons if ll == l]] = False
        assert (delta[others] if orient == 'in_out' else delta[:, others]).abs().max() == 0
    restore_weights(m, orig)
    assert same(m, snap)


def test_direction_is_new_minus_old_unembedding():
    m, tok = model_tok('llama')  # untied embeddings: the output embedding is used
    text, _ = request_text(REQ)
    E = m.lm_head.weight
    new = target_token_ids(tok, text, 'Paris')[1]; old = target_token_ids(tok, text, 'the')[1][0]
    d = kn_direction(m, tok, text, 'Paris', 'the', 1.5)
    assert torch.allclose(d, 3.0 * (E[new].mean(0) - E[old]))


def test_without_target_true_and_copy():
    m, tok = model_tok('gpt2'); snap = snapshot(m)
    req = {k: v for k, v in REQ.items() if k != 'target_true'}
    log = []
    edited, orig = apply_kn_to_model(m, tok, req, KNHyperParams(), copy=True, info=log)
    assert edited is not m and orig == {} and same(m, snap) and not same(edited, snap)
    assert log[0]['target_true']  # the model's own top prediction was attributed


def test_refine_uses_paraphrases():
    m, tok = model_tok('gpt2')
    req = dict(REQ, paraphrase_prompts=['LeBron James is a player of', 'Everyone knows LeBron James plays'])
    a, b = [], []
    apply_kn_to_model(m, tok, req, KNHyperParams(refine=True, p=0.6), copy=True, info=a)
    apply_kn_to_model(m, tok, req, KNHyperParams(refine=False), copy=True, info=b)
    assert set(a[0]['neurons']) <= set(b[0]['neurons'])


def test_error_restores(monkeypatch):
    import rome_nb.baselines.kn as kn
    m, tok = model_tok('gpt2'); snap = snapshot(m)
    calls = []
    real = kn.kn_direction
    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 2: raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(kn, 'kn_direction', boom)
    with pytest.raises(KeyboardInterrupt): kn.apply_kn_to_model(m, tok, [REQ, REQ], KNHyperParams())
    assert same(m, snap)


def test_cli_evaluate(tmp_path):
    sys.path.insert(0, str(TESTS))
    import standin_alg
    b = standin_alg.make_bench(tmp_path, n=3)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')
    r = subprocess.run([sys.executable, '-m', 'rome_nb.evaluate', '--alg_name', 'KN', '--model_name', str(b['model']),
                        '--hparams_fname', 'gpt2-xl.json', '--data_dir', str(b['data']), '--results_dir', str(tmp_path / 'results'),
                        '--dataset_size_limit', '2', '--skip_generation_tests', '--device', 'cpu', '--quiet'],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cases = sorted((tmp_path / 'results' / 'KN' / 'run_000').glob('case_*.json'))
    assert [c.name for c in cases] == ['case_0.json', 'case_1.json']


def test_without_target_true_empty_top_prediction_is_a_clear_error():
    "A Metaspace tokenizer's bare '▁' decodes to '': KN says to give target_true and leaves the model untouched."
    model, tok = model_tok('llama', n_layer=2)
    blank = next(i for i in range(tok.vocab_size) if not tok.decode([i]).strip())
    req = {k: v for k, v in REQ.items() if k != 'target_true'}
    ids = target_token_ids(tok, req['prompt'].format(req['subject']), req['target_new']['str'])[0]
    with torch.no_grad():
        top = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        model.lm_head.weight[blank] = model.lm_head.weight[top] * 3  # the blank token now wins
        assert int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()) == blank
    snap = snapshot(model)
    hp = KNHyperParams.from_json(hparams_path('KN', 'toy'))
    with pytest.raises(ValueError, match="give the request a 'target_true'"): apply_kn_to_model(model, tok, req, hp)
    assert same(model, snap)
    _, orig = apply_kn_to_model(model, tok, {**req, 'target_true': {'str': 'basketball'}}, hp, return_orig_weights=True)
    assert orig
