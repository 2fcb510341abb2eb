"""Shared pieces of the editing tests: tiny models, edit requests, small settings of each method, the apply/restore
check, a booby-trapped pickle, a run's case files and a run of the evaluation CLI with a method registered on the fly.
The fixtures (`train_file`, `tok`, `sd`, `editor_files`) are in conftest.py."""
import json, os, subprocess, sys
from pathlib import Path
import torch
import standin_alg
from rome_nb.models import tiny_model, tiny_tokenizer, target_logprobs
from rome_nb.editing import restore_weights

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
REQ = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'football'}}
REQ2 = {'prompt': '{} is located in the city of', 'subject': 'The Eiffel Tower', 'target_new': {'str': 'Rome'}}


def stat_texts(n=120, tail=''):
    "`n` numbered copies of one sentence (ending in `tail`): texts for a layer's statistics."
    return [f"Text {i}: LeBron James plays basketball in the city of Paris, near the Eiffel Tower{tail}." for i in range(n)]


TEXTS = stat_texts()


def gpt2(dtype=torch.float32, n_layer=4):
    "A tiny random GPT-2 in `dtype`."
    return tiny_model('gpt2', n_layer=n_layer, n_embd=32, initializer_range=0.2).to(dtype)


def rome_hp(sd, texts=TEXTS, **kw):
    "Small ROME settings: statistics of `texts` in folder `sd`; `kw` overrides."
    from rome_nb.rome import ROMEHyperParams
    return ROMEHyperParams(**{**dict(layers=[1], mom2_dataset=texts, mom2_n_samples=len(texts), stats_dir=str(sd),
                                     context_template_length_params=[[3, 2]], v_num_grad_steps=3), **kw})


def memit_hp(sd, texts=TEXTS, **kw):
    "Small MEMIT settings (layers 1 and 2), as `rome_hp`."
    from rome_nb.memit import MEMITHyperParams
    return MEMITHyperParams(**{**dict(layers=[1, 2], mom2_dataset=texts, mom2_n_samples=len(texts), stats_dir=str(sd),
                                      context_template_length_params=[[3, 2]], v_num_grad_steps=3,
                                      mom2_update_weight=100), **kw})


def mend_hp(train_file, cache, **kw):
    "A small MEND editor trained briefly on `train_file`, cached under `cache`; `kw` overrides."
    from rome_nb.baselines.mend import MENDHyperParams
    return MENDHyperParams(**{**dict(rank=8, edit_lr=1e-3, train_steps=4, n_loc=2, lr=1e-2, n_stats=4,
                                     train_ds=str(train_file), train_skip=0, cache_dir=str(cache)), **kw})


def ke_hp(train_file, cache, **kw):
    "A small KE editor, as `mend_hp`."
    from rome_nb.baselines.ke import EFKHyperParams
    return EFKHyperParams(**{**dict(lstm_dim=8, cond_dim=8, hidden_dim=8, train_steps=4, n_loc=2, lr=1e-3,
                                    train_ds=str(train_file), train_skip=0, cache_dir=str(cache)), **kw})


def read_cases(run_dir, drop=()):
    "{case id: content} of a run's case files (each valid JSON, named by its case id), without the keys in `drop`."
    out = {}
    for f in Path(run_dir).glob('*case_*.json'):
        data = json.loads(f.read_text())
        assert f.name == f"case_{data['case_id']}.json"
        out[data['case_id']] = {k: v for k, v in data.items() if k not in drop}
    return out


def tiny(family):
    "A small randomly initialised model of `family` ('gpt2' or another `TINY_CONFIGS` family) and the tiny tokenizer."
    kw = dict(n_layer=4, n_embd=32, initializer_range=0.2) if family == 'gpt2' else dict(num_hidden_layers=3, initializer_range=0.2)
    return tiny_model(family, **kw), tiny_tokenizer()


def check_apply_and_restore(apply, model, tok, hp, names):
    """Edit two requests with `apply` (an `apply_*_to_model`): exactly the weights `names` move, `restore_weights` puts them
    back bit for bit, and `copy=True` leaves the model alone. Returns the log-prob of REQ's target before and after the edit."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logprob = lambda: target_logprobs(model, tok, [REQ['prompt'].format(REQ['subject'])], [REQ['target_new']['str']])[0].sum()
    lp0 = logprob()
    m, orig = apply(model, tok, [REQ, {**REQ, 'subject': 'Toko Yasuda'}], hp, return_orig_weights=True, progress=False)
    assert m is model
    assert set(orig) == names
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == names  # exactly the edited weights moved
    lp1 = logprob()
    restore_weights(model, orig)
    for n, p in model.named_parameters(): assert torch.equal(p, before[n]), n
    m2, _ = apply(model, tok, [REQ], hp, copy=True, progress=False)
    assert m2 is not model
    for n, p in model.named_parameters(): assert torch.equal(p, before[n]), n
    return lp0, lp1


class _Evil:
    "Unpickling this runs `touch marker`: what a weights-only loader must refuse."
    def __init__(self, marker): self.marker = marker
    def __reduce__(self): return (os.system, (f'touch {self.marker}',))


def save_evil_pickle(f, marker, key='evil', **extra):
    "Write a torch pickle at `f` whose `key` entry (beside `extra`) runs code that creates `marker` when unpickled."
    torch.save({**extra, key: _Evil(marker)}, f)
    return f


CLI = ("from rome_nb.evaluate import ALG_DICT, main\n"
       "if {alg!r} not in ALG_DICT: ALG_DICT[{alg!r}] = {spec!r}\n"
       "main()\n")


def run_evaluate_cli(tmp_path, alg, spec, hp, n=6, limit=3):
    "Run `rome_nb.evaluate.main` as a script on a stand-in benchmark with method `alg` = `spec` and hyperparameters `hp`; the run folder."
    b = standin_alg.make_bench(tmp_path / 'bench', n=n)
    hpf = tmp_path / f'{alg.lower()}.json'
    hp.to_json(hpf)
    cli = tmp_path / 'cli.py'
    cli.write_text(CLI.format(alg=alg, spec=spec))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')
    r = subprocess.run([sys.executable, str(cli), '--alg_name', alg, '--model_name', str(b['model']), '--hparams_fname', str(hpf),
                        '--data_dir', str(b['data']), '--results_dir', str(tmp_path / 'results'), '--device', 'cpu',
                        '--dataset_size_limit', str(limit), '--skip_generation_tests', '--quiet'],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp_path / 'results' / alg / 'run_000'


def snapshot(m): return {n: p.detach().clone() for n, p in m.named_parameters()}
def same(m, snap): return all(torch.equal(p, snap[n]) for n, p in m.named_parameters())
