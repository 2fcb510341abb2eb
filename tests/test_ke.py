"KE (EFK): exact restore, safe loading, training lowers the edit loss, GPT-2 and Llama layouts, the evaluation CLI."
import json
import pytest
import torch
from _editors import REQ, tiny, check_apply_and_restore, save_evil_pickle, run_evaluate_cli, ke_hp
from rome_nb.models import target_logprobs
from rome_nb.evaluate import restore_weights, hparams_path
from rome_nb.baselines.mend import edit_module_names, train_editor, load_editor_state, get_editor, editor_history, save_editor
from rome_nb.baselines.ke import EFKHyperParams, KEEditor, apply_ke_to_model, make_ke_editor, weight_grads


def small_hp(train_file, cache_dir, **kw):
    "`ke_hp` with a larger hyper-network trained longer (training must visibly help)."
    return ke_hp(train_file, cache_dir, **{**dict(lstm_dim=16, cond_dim=16, hidden_dim=32, max_scale=10.0,
                                                  train_steps=40, lr=3e-3), **kw})


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_apply_and_restore_bit_exact(family, train_file, tmp_path):
    model, tok = tiny(family)
    check_apply_and_restore(apply_ke_to_model, model, tok, small_hp(train_file, tmp_path), {n + '.weight' for n in edit_module_names(model)})


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_training_reduces_edit_loss(family, train_file, tmp_path):
    model, tok = tiny(family)
    hp = small_hp(train_file, tmp_path, train_steps=100)
    recs = json.loads(train_file.read_text())
    torch.manual_seed(0)
    ed = make_ke_editor(model, edit_module_names(model), hp)
    hist = train_editor(ed, model, tok, recs, hp, progress=False)
    k = 25
    first, last = sum(hist['edit'][:k]) / k, sum(hist['edit'][-k:]) / k
    assert last < 0.8 * first, (first, last)
    assert all(p.grad is None for p in model.parameters())
    lp0 = target_logprobs(model, tok, ['LeBron James plays the sport of'], ['football'])[0].sum()
    f = save_editor(ed, tmp_path / 'ke.safetensors')  # the trained editor, used through the apply function
    _, orig = apply_ke_to_model(model, tok, [REQ], EFKHyperParams(editor_path=str(f)), return_orig_weights=True)
    lp1 = target_logprobs(model, tok, ['LeBron James plays the sport of'], ['football'])[0].sum()
    restore_weights(model, orig)
    assert lp1 > lp0


def test_weights_only_refuses_pickled_code(tmp_path, train_file):
    marker = tmp_path / 'pwned'
    f = save_evil_pickle(tmp_path / 'evil.bin', marker, key='state')
    model, tok = tiny('gpt2')
    with pytest.raises(ValueError, match='refused'):
        apply_ke_to_model(model, tok, [REQ], small_hp(train_file, tmp_path, editor_path=str(f)), progress=False)
    assert not marker.exists()


def test_editor_file_roundtrip(train_file, tmp_path):
    model, tok = tiny('gpt2')
    hp = small_hp(train_file, tmp_path / 'cache')
    ed = get_editor(model, tok, hp, 'KE', make_ke_editor, progress=False)
    assert len(editor_history(model, hp, 'KE')['edit']) == hp.train_steps
    f = next((tmp_path / 'cache').glob('ke/*/editor.safetensors'))
    assert load_editor_state(f)[1]['method'] == 'KE'
    with torch.no_grad(): ref = ed.edit_deltas(model, tok, REQ)
    m2, _ = tiny('gpt2')
    ed2 = get_editor(m2, tok, EFKHyperParams(editor_path=str(f)), 'KE', make_ke_editor)
    with torch.no_grad(): d2 = ed2.edit_deltas(m2, tok, REQ)
    for k in ref: assert torch.equal(ref[k], d2[k]), k


def test_packaged_hparams():
    xl = EFKHyperParams.from_json(hparams_path('KE', 'gpt2-xl.json'))
    assert (xl.lr_scale, xl.n_toks, xl.model_name, xl.counterfact) == (1.0, 1, 'gpt2-xl', False)
    toy = EFKHyperParams.from_json(hparams_path('KE', 'toy.json'))
    assert toy.train_ds == 'toy' and toy.train_skip == 200


def test_evaluate_cli(tmp_path, train_file):
    run = run_evaluate_cli(tmp_path, 'KE', 'rome_nb.baselines.ke:EFKHyperParams:apply_ke_to_model', small_hp(train_file, tmp_path / 'cache'))
    assert sorted(p.name for p in run.glob('case_*.json')) == ['case_0.json', 'case_1.json', 'case_2.json']
