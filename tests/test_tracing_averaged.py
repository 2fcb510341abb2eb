"Averaged causal effects from plain Python: token buckets, the averages and intervals, reading a runner's cases, severed paths."
import numpy as np
import pytest
import torch

from rome_nb.models import ModelAndTokenizer, tiny_model, tiny_tokenizer
from rome_nb.tracing import trace_knowns, calculate_hidden_flow
from rome_nb.tracing_averaged import (BUCKETS, token_buckets, average_indirect_effects, read_traces, effect_summary,
                                      average_severed, plot_average_heatmap, plot_average_lines)

torch.set_num_threads(1)
FACTS = [dict(subject='Eiffel Tower', prompt='The Eiffel Tower is located in the city of'),
         dict(subject='LeBron James', prompt='LeBron James plays the sport of'),
         dict(subject='Danielle Darrieux', prompt="Danielle Darrieux's mother tongue is")]


def test_buckets():
    assert token_buckets((2, 5), 10) == [[2], [3], [4], [5], [6, 7, 8], [9]]
    assert token_buckets((0, 1), 2) == [[0], [], [0], [], [], [1]]
    with pytest.raises(ValueError): token_buckets((3, 3), 5)
    assert len(BUCKETS) == 6


def test_average_matches_a_direct_computation():
    rng = np.random.RandomState(0)
    results = []
    for n, (b, e) in [(7, (1, 3)), (9, (0, 4)), (6, (2, 3))]:
        results.append(dict(scores=torch.tensor(rng.rand(n, 5)), low_score=0.1 * rng.rand(), high_score=0.9, subject_range=(b, e),
                            kind='attn', window=3, correct_prediction=True))
    avg = average_indirect_effects(results)
    last = np.stack([np.asarray(r['scores'])[-1] - r['low_score'] for r in results])
    further = np.concatenate([np.asarray(r['scores'])[r['subject_range'][1] + 1:-1] - r['low_score'] for r in results])
    assert np.allclose(avg['mean'][5], last.mean(0)) and np.allclose(avg['ci95'][5], 1.96 * last.std(0) / np.sqrt(3))
    assert np.allclose(avg['mean'][4], further.mean(0)) and avg['n'][4] == len(further)
    assert avg['kind'] == 'attn' and avg['count'] == 3
    assert np.isclose(avg['best_last_token'][0], last.mean(0).max()) and avg['best_last_token'][1] == last.mean(0).argmax()
    with pytest.raises(ValueError, match='no traces'): average_indirect_effects([dict(correct_prediction=False)])


def test_runner_cases_average_and_plots(tmp_path):
    mt = ModelAndTokenizer(model=tiny_model('gpt2', n_layer=3, initializer_range=0.2), tokenizer=tiny_tokenizer())
    answer = calculate_hidden_flow(mt, FACTS[0]['prompt'], FACTS[0]['subject'], samples=2)['answer']
    facts = [dict(FACTS[0], attribute=answer), dict(FACTS[1], attribute='nothing-like-this'), FACTS[2]]
    run = trace_knowns(mt, facts, tmp_path, samples=3, window=2, expect=True, verbose=False)
    assert len(run['skipped']) == 1 and len(run['results'][None]) == 2  # the third fact has no attribute to check: traced
    got = {k: read_traces(tmp_path, k) for k in (None, 'mlp', 'attn')}
    assert all(len(v) == len(run['results'][None]) for v in got.values())
    avgs = {k: average_indirect_effects(v) for k, v in got.items()}
    table = effect_summary(avgs)
    assert list(table.index) == ['hidden', 'MLP', 'Attn'] and (table.prompts == len(got[None])).all()
    plot_average_heatmap(avgs['mlp'], savepdf=str(tmp_path / 'h.pdf')); plot_average_lines(avgs, savepdf=str(tmp_path / 'l.png'))
    assert (tmp_path / 'h.pdf').exists() and (tmp_path / 'l.png').exists()
    with pytest.raises(FileNotFoundError): read_traces(tmp_path / 'nothing')


def test_average_severed():
    mt = ModelAndTokenizer(model=tiny_model('llama', num_hidden_layers=3, initializer_range=0.2), tokenizer=tiny_tokenizer('metaspace'))
    sev = average_severed(mt, FACTS, samples=3, expect=False, verbose=False)
    assert sev['count'] == 3 and sev['no_mlp'].shape == (3,) and sev['ordinary_ci'].shape == (3,)
    assert np.isfinite(sev['no_attn']).all()
