"MEND: exact restore, safe loading, training lowers the edit loss, GPT-2 and Llama layouts, the evaluation CLI."
import json
import pytest
import torch
from _editors import REQ, tiny, check_apply_and_restore, save_evil_pickle, run_evaluate_cli, mend_hp
from rome_nb.models import tiny_model, tiny_tokenizer
from rome_nb.evaluate import hparams_path
from rome_nb.baselines.mend import (MENDHyperParams, MENDEditor, apply_mend_to_model, edit_module_names, train_editor,
                                    token_factors, edit_batch, load_editor_state, save_editor, mend_init_stats,
                                    editor_history, get_editor, make_mend_editor)


def small_hp(train_file, cache_dir, **kw):
    "`mend_hp` with a larger editor trained longer (training must visibly help)."
    return mend_hp(train_file, cache_dir, **{**dict(rank=16, train_steps=40, n_stats=10), **kw})


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_apply_and_restore_bit_exact(family, train_file, tmp_path):
    model, tok = tiny(family)
    lp0, lp1 = check_apply_and_restore(apply_mend_to_model, model, tok, small_hp(train_file, tmp_path), {n + '.weight' for n in edit_module_names(model)})
    assert lp1 > lp0


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_training_reduces_edit_loss(family, train_file, tmp_path):
    model, tok = tiny(family)
    hp = small_hp(train_file, tmp_path, train_steps=80)
    recs = json.loads(train_file.read_text())
    torch.manual_seed(0)
    ed = make_mend_editor(model, edit_module_names(model), hp)
    mend_init_stats(ed, model, tok, recs, hp)
    hist = train_editor(ed, model, tok, recs, hp, progress=False)
    k = 20
    first, last = sum(hist['edit'][:k]) / k, sum(hist['edit'][-k:]) / k
    assert last < 0.8 * first, (first, last)
    assert all(p.grad is None for p in model.parameters())


def test_weights_only_refuses_pickled_code(tmp_path, train_file):
    marker = tmp_path / 'pwned'
    f = save_evil_pickle(tmp_path / 'evil.pt', marker, model={'w': torch.zeros(1)})
    with pytest.raises(ValueError, match='refused'): load_editor_state(f)
    model, tok = tiny('gpt2')
    with pytest.raises(ValueError, match='refused'):
        apply_mend_to_model(model, tok, [REQ], small_hp(train_file, tmp_path, editor_path=str(f)), progress=False)
    assert not marker.exists()


def test_editor_file_roundtrip(train_file, tmp_path):
    "A cached editor file loaded through `editor_path` (safetensors) and as a plain state dict (.pt) gives the same edit."
    model, tok = tiny('gpt2')
    hp = small_hp(train_file, tmp_path / 'cache')
    ed = get_editor(model, tok, hp, 'MEND', make_mend_editor, mend_init_stats, progress=False)
    assert editor_history(model, hp, 'MEND') is not None
    f = next((tmp_path / 'cache').glob('mend/*/editor.safetensors'))
    with torch.no_grad(): ref = ed.edit_deltas(model, tok, REQ)
    pt = tmp_path / 'editor.pt'; torch.save({'model': ed.state_dict()}, pt)
    for path, kw in ((f, {}), (pt, dict(rank=16))):
        m2, _ = tiny('gpt2')
        ed2 = get_editor(m2, tok, MENDHyperParams(editor_path=str(path), **kw), 'MEND', make_mend_editor)
        with torch.no_grad(): d2 = ed2.edit_deltas(m2, tok, REQ)
        for k in ref: assert torch.equal(ref[k], d2[k]), (path, k)
    with pytest.raises(FileNotFoundError): get_editor(m2, tok, MENDHyperParams(editor_path=str(tmp_path / 'none.safetensors')), 'MEND', make_mend_editor)


def test_packaged_hparams():
    xl = MENDHyperParams.from_json(hparams_path('MEND', 'gpt2-xl.json'))
    assert (xl.lr_scale, xl.n_toks, xl.model_name) == (1.0, 10, 'gpt2-xl')
    gj = MENDHyperParams.from_json(hparams_path('MEND', 'EleutherAI_gpt-j-6B.json'))
    assert gj.model_name == 'EleutherAI/gpt-j-6B'
    toy = MENDHyperParams.from_json(hparams_path('MEND', 'toy.json'))
    assert toy.train_ds == 'toy' and toy.train_skip == 200


def test_evaluate_cli(tmp_path, train_file):
    run = run_evaluate_cli(tmp_path, 'MEND', 'rome_nb.baselines.mend:MENDHyperParams:apply_mend_to_model', small_hp(train_file, tmp_path / 'cache'))
    cases = [json.loads((run / f'case_{i}.json').read_text()) for i in range(3)]
    gain = [c['pre']['rewrite_prompts_probs'][0]['target_new'] - c['post']['rewrite_prompts_probs'][0]['target_new'] for c in cases]
    assert sum(gain) > 0, gain  # the new object's NLL falls on average


@pytest.mark.parametrize('family', list(__import__('rome_nb.models', fromlist=['TINY_CONFIGS']).TINY_CONFIGS))
def test_every_family(family):
    "The per-token factors rebuild each edited weight's gradient, and the editor's changes fit the weights, for every adapter family."
    from rome_nb.models import linear_dims
    from rome_nb.nethook import get_module, get_parameter
    from rome_nb.baselines.mend import outer_grad, target_nll
    model, tok = tiny_model(family), tiny_tokenizer()
    names = edit_module_names(model)
    inp, labels = edit_batch(tok, [REQ])
    fac, _ = token_factors(model, inp, labels, names)
    model.zero_grad(); target_nll(model(**inp).logits, labels).backward()
    for n in names:
        torch.testing.assert_close(outer_grad(*fac[n], linear_dims(get_module(model, n))[2]), get_parameter(model, n + '.weight').grad, rtol=1e-4, atol=1e-6)
    ed = MENDEditor(model, names, rank=8)
    for s in ('LeBron James', 'Megan Rapinoe'): ed.update_stats(token_factors(model, *edit_batch(tok, [{**REQ, 'subject': s}]), names)[0])
    with torch.no_grad(): d = ed.edit_deltas(model, tok, REQ)
    assert {k: v.shape for k, v in d.items()} == {n + '.weight': get_parameter(model, n + '.weight').shape for n in names}
