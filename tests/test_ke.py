"KE (EFK): exact restore, safe loading, training lowers the edit loss, GPT-2 and Llama layouts, the evaluation CLI."
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
import standin_alg
from rome_nb.models import tiny_model, tiny_tokenizer, target_logprobs
from rome_nb.evaluate import restore_weights, hparams_path
from rome_nb.baselines.mend import edit_module_names, train_editor, load_editor_state, get_editor, editor_history, save_editor
from rome_nb.baselines.ke import EFKHyperParams, KEEditor, apply_ke_to_model, make_ke_editor, weight_grads

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
REQ = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'football'}}


def tiny(family):
    kw = dict(n_layer=4, n_embd=32, initializer_range=0.2) if family == 'gpt2' else dict(num_hidden_layers=3, initializer_range=0.2)
    return tiny_model(family, **kw), tiny_tokenizer()


@pytest.fixture(scope='module')
def train_file(tmp_path_factory):
    f = tmp_path_factory.mktemp('train') / 'train.json'
    f.write_text(json.dumps([standin_alg.make_record(i) for i in range(20, 80)]))
    return f


def small_hp(train_file, cache_dir, **kw):
    return EFKHyperParams(**{**dict(lstm_dim=16, cond_dim=16, hidden_dim=32, max_scale=10.0, train_steps=40, n_loc=2, lr=3e-3,
                                    train_ds=str(train_file), train_skip=0, cache_dir=str(cache_dir)), **kw})


@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_apply_and_restore_bit_exact(family, train_file, tmp_path):
    model, tok = tiny(family)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hp = small_hp(train_file, tmp_path)
    m, orig = apply_ke_to_model(model, tok, [REQ, {**REQ, 'subject': 'Toko Yasuda'}], hp, return_orig_weights=True, progress=False)
    assert m is model
    names = {n + '.weight' for n in edit_module_names(model)}
    assert set(orig) == names
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == names
    restore_weights(model, orig)
    for n, p in model.named_parameters(): assert torch.equal(p, before[n]), n
    m2, _ = apply_ke_to_model(model, tok, [REQ], hp, copy=True, progress=False)
    assert m2 is not model
    for n, p in model.named_parameters(): assert torch.equal(p, before[n]), n


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

    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))

    f = tmp_path / 'evil.bin'
    torch.save({'state': Evil()}, f)
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


CLI = ("from rome_nb.evaluate import ALG_DICT, main\n"
       "if 'KE' not in ALG_DICT: ALG_DICT['KE'] = 'rome_nb.baselines.ke:EFKHyperParams:apply_ke_to_model'\n"
       "main()\n")


def test_evaluate_cli(tmp_path, train_file):
    b = standin_alg.make_bench(tmp_path / 'bench', n=6)
    hp = small_hp(train_file, tmp_path / 'cache'); hpf = tmp_path / 'ke.json'; hp.to_json(hpf)
    cli = tmp_path / 'cli.py'; cli.write_text(CLI)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')
    r = subprocess.run([sys.executable, str(cli), '--alg_name', 'KE', '--model_name', str(b['model']), '--hparams_fname', str(hpf),
                        '--data_dir', str(b['data']), '--results_dir', str(tmp_path / 'results'), '--device', 'cpu',
                        '--dataset_size_limit', '3', '--skip_generation_tests', '--quiet'], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / 'results' / 'KE' / 'run_000'
    assert sorted(p.name for p in run.glob('case_*.json')) == ['case_0.json', 'case_1.json', 'case_2.json']
