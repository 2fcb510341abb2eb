"FT and FT-L (rome_nb.baselines.ft): packaged hyperparameters, exact undo, the L-infinity bound, portability, the CLI."
import dataclasses, json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from _editors import snapshot, same
from rome_nb.models import tiny_model, tiny_tokenizer, target_logprobs, layername
from rome_nb.editing import hparams_path, restore_weights
from rome_nb.baselines.ft import (FTHyperParams, apply_ft_to_model, execute_ft, ft_weights, ft_module_names, ft_loss,
                                  request_text)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
torch.set_num_threads(1)

# targets that are one token for both tiny tokenizers
REQ = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'Paris'},
       'target_true': {'str': 'the'}}
REQ2 = {'prompt': '{} is located in the city of', 'subject': 'The Eiffel Tower', 'target_new': {'str': 'Rome'}}
TOK = {'gpt2': 'bytelevel', 'llama': 'metaspace', 'opt': 'bytelevel'}


def model_tok(family):
    tok = tiny_tokenizer(TOK[family])
    return tiny_model(family, vocab_size=tok.vocab_size), tok




def nll(m, tok, req, objective='prompt_last'):
    text, tgt = request_text(req)
    with torch.no_grad(): return ft_loss(m, tok, [text], [tgt], objective).item()


def test_packaged_hparams_are_the_references():
    want = {'gpt2-xl_constr.json': ([0], 5e-4, 5e-4), 'gpt2-xl_unconstr.json': ([1], 5e-4, False),
            'gpt2-xl_attn.json': ([33], 1e-3, 1e-3), 'gpt2-medium_constr.json': ([0], 5e-4, 2e-3),
            'gpt2-large_constr.json': ([0], 5e-4, 1e-3), 'EleutherAI_gpt-j-6B_constr.json': ([0], 5e-4, 5e-5),
            'EleutherAI_gpt-j-6B_unconstr.json': ([21], 5e-4, False)}
    for f, (layers, lr, nc) in want.items():
        hp = FTHyperParams.from_json(hparams_path('FT', f))
        assert (hp.layers, hp.lr, hp.norm_constraint, hp.num_steps, hp.batch_size) == (layers, lr, nc, 25, 128), f
    assert FTHyperParams.from_json(hparams_path('FT', 'gpt2-xl_attn.json')).rewrite_module_tmp == 'transformer.h.{}.attn.c_attn'
    lc, lu = (FTHyperParams.from_json(hparams_path('FT', f)) for f in ('toy_constr.json', 'toy_unconstr.json'))
    assert lc.constrained and not lu.constrained


def test_registered_in_alg_dict():
    from rome_nb.evaluate import ALG_DICT
    assert ALG_DICT['FT'] == (FTHyperParams, apply_ft_to_model)


def test_bad_hparams_are_errors():
    for kw, msg in [({'layers': []}, 'layers'), ({'layers': [0], 'norm_constraint': True}, 'norm_constraint'),
                    ({'layers': [0], 'norm_constraint': -1.}, 'norm_constraint'), ({'layers': [0], 'kl_factor': .1}, 'kl_factor'),
                    ({'layers': [0], 'objective': 'x'}, 'objective'), ({'layers': [0], 'batch_size': 0}, 'batch_size')]:
        with pytest.raises(ValueError, match=msg): FTHyperParams(**kw)


@pytest.mark.parametrize('family', ['gpt2', 'llama', 'opt'])
def test_edit_then_restore_is_bit_exact(family):
    m, tok = model_tok(family)
    snap = snapshot(m)
    hp = FTHyperParams(layers=[1], lr=5e-2, num_steps=10)
    before = nll(m, tok, REQ)
    edited, orig = apply_ft_to_model(m, tok, [REQ, REQ2], hp, return_orig_weights=True)
    assert edited is m
    assert nll(m, tok, REQ) < before - 0.3  # it learned the new object (a random tiny model's logits cannot move far)
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, snap[n])}
    assert changed and changed <= set(orig) == set(ft_weights(m, hp))
    assert all(n.startswith(layername(m, 1, 'down_proj') + '.') for n in orig)
    restore_weights(m, orig)
    assert same(m, snap)


def test_copy_leaves_model_alone_and_orig_device():
    m, tok = model_tok('gpt2')
    snap = snapshot(m)
    edited, orig = apply_ft_to_model(m, tok, REQ, FTHyperParams(layers=[0], lr=1e-2, num_steps=3), copy=True)
    assert edited is not m and orig == {} and same(m, snap) and not same(edited, snap)
    _, orig = apply_ft_to_model(m, tok, REQ, FTHyperParams(layers=[0], num_steps=2), return_orig_weights=True, return_orig_weights_device='cpu')
    assert all(v.device.type == 'cpu' for v in orig.values())
    restore_weights(m, orig); assert same(m, snap)


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_norm_constraint_holds_and_binds(family):
    m, tok = model_tok(family)
    eps = 1e-3
    hp = FTHyperParams(layers=[0, 1], lr=1e-2, num_steps=10, norm_constraint=eps)
    deltas = execute_ft(m, tok, [REQ], hp)
    worst = max(d.abs().max().item() for d in deltas.values())
    assert worst <= eps * (1 + 1e-3), worst
    assert worst >= eps * 0.99  # the bound is reached: lr 1e-2 would move further without it
    free = execute_ft(m, tok, [REQ], dataclasses.replace(hp, norm_constraint=False))
    assert max(d.abs().max().item() for d in free.values()) > 2 * eps


def test_execute_ft_leaves_model_unchanged():
    m, tok = model_tok('gpt2'); snap = snapshot(m)
    deltas = execute_ft(m, tok, [REQ], FTHyperParams(layers=[1], lr=1e-2, num_steps=3))
    assert same(m, snap) and any(d.abs().max() > 0 for d in deltas.values())


def test_error_restores_weights():
    m, tok = model_tok('gpt2'); snap = snapshot(m)
    with pytest.raises(FloatingPointError, match='lower lr'):
        apply_ft_to_model(m, tok, [REQ], FTHyperParams(layers=[1], lr=1e30, num_steps=5))
    assert same(m, snap)
    assert all(p.requires_grad for p in m.parameters())  # the model's flags are put back


def test_early_stop():
    m, tok = model_tok('gpt2')
    log, thr = [], nll(m, tok, REQ) - 0.2  # a random tiny model cannot reach the reference's 0.01
    apply_ft_to_model(m, tok, [REQ], FTHyperParams(layers=[1], lr=5e-2, num_steps=200, early_stop_loss=thr), copy=True, info=log)
    losses = log[0]['losses']  # one batch per pass
    assert log[0]['passes'] == len(losses) < 200 and losses[-1] < thr and all(l >= thr for l in losses[:-1])


def test_module_choice_attention_and_bad_template():
    m, tok = model_tok('llama')
    assert ft_module_names(m, FTHyperParams(layers=[1])) == ['model.layers.1.mlp.down_proj']
    names = set(ft_weights(m, FTHyperParams(layers=[1], rewrite_module_tmp='attn')))
    assert names and all(n.startswith('model.layers.1.self_attn.') for n in names)
    with pytest.raises(ValueError, match='does not fit'):
        ft_module_names(m, FTHyperParams.from_json(hparams_path('FT', 'gpt2-xl_attn.json')))
    g, _ = model_tok('gpt2')
    assert ft_module_names(g, FTHyperParams(layers=[1], rewrite_module_tmp='transformer.h.{}.attn.c_attn')) == ['transformer.h.1.attn.c_attn']


def test_objectives_differ_only_for_long_targets():
    m, tok = model_tok('gpt2')
    text, _ = request_text(REQ)
    with torch.no_grad():
        lp = target_logprobs(m, tok, [text], ['basket ball game'])[0]
        assert torch.isclose(ft_loss(m, tok, [text], ['basket ball game'], 'target_new'), -lp.mean(), atol=1e-5)
        first = ft_loss(m, tok, [text], ['basket ball game'], 'prompt_last')
        assert not torch.isclose(first, -lp.mean())


def test_bad_requests():
    m, tok = model_tok('gpt2')
    for bad in [{'prompt': 'no slot', 'subject': 'x', 'target_new': {'str': 'y'}},
                {'prompt': '{} is', 'subject': 'x', 'target_new': {'str': ' '}}, {'prompt': '{} is', 'subject': 'x'}]:
        with pytest.raises(ValueError): apply_ft_to_model(m, tok, [bad], FTHyperParams(layers=[0]))
    with pytest.raises(ValueError, match='no requests'): apply_ft_to_model(m, tok, [], FTHyperParams(layers=[0]))


def test_cli_evaluate_and_summarize(tmp_path):
    "FT through `python -m rome_nb.evaluate` on a tiny on-disk benchmark, then `python -m rome_nb.summarize`."
    sys.path.insert(0, str(TESTS))
    import standin_alg
    b = standin_alg.make_bench(tmp_path, n=4)
    hp = tmp_path / 'ft.json'
    FTHyperParams(layers=[1], lr=1e-2, num_steps=5, norm_constraint=1e-3).to_json(hp)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')
    r = subprocess.run([sys.executable, '-m', 'rome_nb.evaluate', '--alg_name', 'FT', '--model_name', str(b['model']),
                        '--hparams_fname', str(hp), '--data_dir', str(b['data']), '--results_dir', str(tmp_path / 'results'),
                        '--dataset_size_limit', '3', '--skip_generation_tests', '--device', 'cpu', '--quiet'],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cases = sorted((tmp_path / 'results' / 'FT' / 'run_000').glob('case_*.json'))
    assert [c.name for c in cases] == ['case_0.json', 'case_1.json', 'case_2.json']
    assert json.loads((tmp_path / 'results' / 'FT' / 'run_000' / 'params.json').read_text())['norm_constraint'] == 1e-3
    for c in cases:
        d = json.loads(c.read_text()); assert {'pre', 'post', 'requested_rewrite'} <= set(d)
    s = subprocess.run([sys.executable, '-m', 'rome_nb.summarize', '--dir_name', 'FT', '--results_dir', str(tmp_path / 'results')],
                       capture_output=True, text=True, env=env, timeout=300)
    assert s.returncode == 0 and 'run_000' in s.stdout, s.stderr[-3000:]
