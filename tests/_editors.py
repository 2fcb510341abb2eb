"""Shared pieces of the learned-editor tests (MEND, KE): tiny models, one edit request, the apply/restore check, a
booby-trapped pickle and a run of the evaluation CLI with a method registered on the fly. The training-records fixture `train_file` is in conftest.py."""
import json, os, subprocess, sys
from pathlib import Path
import torch
import standin_alg
from rome_nb.models import tiny_model, tiny_tokenizer, target_logprobs
from rome_nb.editing import restore_weights

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
REQ = {'prompt': '{} plays the sport of', 'subject': 'LeBron James', 'target_new': {'str': 'football'}}


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
    hpf = tmp_path / f'{alg.lower()}.json'; hp.to_json(hpf)
    cli = tmp_path / 'cli.py'; cli.write_text(CLI.format(alg=alg, spec=spec))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), OMP_NUM_THREADS='1', ROME_NB_OFFLINE='1')
    r = subprocess.run([sys.executable, str(cli), '--alg_name', alg, '--model_name', str(b['model']), '--hparams_fname', str(hpf),
                        '--data_dir', str(b['data']), '--results_dir', str(tmp_path / 'results'), '--device', 'cpu',
                        '--dataset_size_limit', str(limit), '--skip_generation_tests', '--quiet'],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp_path / 'results' / alg / 'run_000'


def snapshot(m): return {n: p.detach().clone() for n, p in m.named_parameters()}
def same(m, snap): return all(torch.equal(p, snap[n]) for n, p in m.named_parameters())
