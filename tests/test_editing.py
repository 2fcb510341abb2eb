"The editing methods' shared pieces from plain Python: hyperparameter classes and files, the exact undo; one copy of each."
import dataclasses, json, os
from pathlib import Path
import pytest
import torch
from rome_nb import editing as E
from rome_nb.models import tiny_model
from rome_nb.nethook import get_parameter


@dataclasses.dataclass
class H(E.HyperParams):
    layers: list
    lr: float = 0.5


def test_hyperparams_roundtrip(tmp_path):
    H([2], 0.1).to_json(tmp_path / 'h.json')
    assert H.from_json(tmp_path / 'h.json') == H([2], 0.1)
    with pytest.raises(ValueError, match='layers'): H.from_dict({'lr': 1})
    with pytest.warns(UserWarning, match='extra'): H.from_dict({'layers': [1], 'extra': 1})


def test_hparams_path_lookup(tmp_path, monkeypatch):
    pkg = E.HPARAMS_DIR / 'ROME'
    assert E.hparams_path('ROME', 'EleutherAI/gpt-j-6B') == pkg / 'EleutherAI_gpt-j-6B.json'
    assert E.hparams_path('ROME', 'gpt2-xl.json') == pkg / 'gpt2-xl.json'
    assert E.hparams_path('ROME', '/somewhere/models/gpt2-medium') == pkg / 'gpt2-medium.json'
    assert 'ROME/gpt2-xl' in E.list_hparams('ROME')
    # a file in ./hparams/<ALG>/ of the working directory wins over the package's (the reference's layout)
    (tmp_path / 'hparams' / 'ROME').mkdir(parents=True)
    (tmp_path / 'hparams' / 'ROME' / 'gpt2-xl.json').write_text('{}')
    monkeypatch.chdir(tmp_path)
    assert E.hparams_path('ROME', 'gpt2-xl').resolve() == (tmp_path / 'hparams' / 'ROME' / 'gpt2-xl.json').resolve()
    with pytest.raises(FileNotFoundError) as e: E.hparams_path('ROME', 'llama-7b')
    assert "'gpt2-xl.json'" in str(e.value) and 'llama-7b' in str(e.value)


def test_restore_weights_bit_exact():
    m = tiny_model('gpt2', n_layer=2, n_embd=32)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    name = 'transformer.h.0.mlp.c_proj.weight'
    saved = {name: get_parameter(m, name).detach().clone().to(torch.float64)}  # kept in another dtype
    with torch.no_grad(): get_parameter(m, name).add_(torch.randn_like(get_parameter(m, name)))
    E.restore_weights(m, saved)
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())


def test_one_copy_each():
    from rome_nb import rome, evaluate
    for n in ('hparams_path', 'restore_weights', 'HPARAMS_DIR'):
        assert getattr(evaluate, n) is getattr(E, n)
    for n in ('hparams_path', 'restore_weights', 'HyperParams', 'list_hparams'):
        assert getattr(rome, n) is getattr(E, n)
