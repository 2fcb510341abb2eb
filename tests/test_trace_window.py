"A trace window that covers every layer warns (issue 17); one that tells layers apart does not."
import warnings
import pytest
import torch
from rome_nb.models import ModelAndTokenizer, tiny_model, tiny_tokenizer
from rome_nb.tracing import calculate_all_flows, window_covers_all

PROMPT, SUBJECT = 'The Eiffel Tower is located in the city of', 'Eiffel Tower'


def _traced(window, kinds):
    torch.manual_seed(0)
    mt = ModelAndTokenizer(model=tiny_model('gpt2', n_layer=4, initializer_range=0.3), tokenizer=tiny_tokenizer())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        res = calculate_all_flows(mt, PROMPT, SUBJECT, kinds=kinds, samples=2, noise=1.0, window=window)
    return res, [str(x.message) for x in w if 'covers all' in str(x.message)]


def test_default_window_on_a_small_model_warns():
    res, said = _traced(10, ('mlp',))
    assert len(said) == 1 and 'covers all 4 layers' in said[0] and 'smaller window' in said[0]
    grid = res['mlp']['scores']
    assert torch.equal(grid, grid[:, :1].expand_as(grid))  # what the warning says: all columns alike


@pytest.mark.parametrize('window,kinds', [(2, ('mlp', 'attn')), (10, (None,))])
def test_no_warning_when_layers_are_told_apart(window, kinds):
    assert _traced(window, kinds)[1] == []


def test_covers_all_exactly():
    # layer l restores [l - w//2, l + ceil(w/2)): all of 0..n-1 from every l iff w//2 >= n-1 and ceil(w/2) >= n
    for n in range(1, 9):
        for w in range(1, 20):
            assert window_covers_all(w, n) == (w // 2 >= n - 1 and -(-w // 2) >= n)
