"Causal tracing from plain Python: engine == reference path on several architectures, noise options, the knowns runner, the CLI."
import json, os, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest
import torch

from rome_nb.models import ModelAndTokenizer, tiny_model, tiny_tokenizer, make_inputs, find_token_range, predict_from_input, layername, TINY_CONFIGS
from rome_nb.tracing import (TraceEngine, EngineUnsupported, trace_important_states, trace_important_window, trace_with_patch,
                             trace_with_repatch, calculate_hidden_flow, calculate_all_flows, calculate_severed, KnownsDataset, known_facts,
                             trace_knowns, load_trace, save_trace, resolve_noise, trace_explorer, plot_trace_heatmap)

ROOT = Path(__file__).resolve().parents[1]
PROMPT, SUBJECT = 'The Eiffel Tower is located in the city of', 'Eiffel Tower'
torch.set_num_threads(1)


def family_setup(family, samples=6, **cfg):
    "A tiny random model of `family` with large weights (so restorations move the answer), its batch and answer."
    model = tiny_model(family, initializer_range=0.3, **cfg)
    tok = tiny_tokenizer('metaspace' if family in ('llama', 'mistral') else 'bytelevel')
    inp = make_inputs(tok, [PROMPT] * (samples + 1))
    rng = find_token_range(tok, inp['input_ids'][0], SUBJECT)
    answer = int(predict_from_input(model, inp)[0][0])
    return model, tok, inp, rng, answer


@pytest.mark.parametrize('family', ['gpt2', 'llama', 'gpt_neox', 'opt'])
def test_engine_matches_reference_path(family):
    model, tok, inp, rng, a = family_setup(family, num_hidden_layers=3) if family != 'gpt2' else family_setup(family, n_layer=3)
    L = 3
    eng = TraceEngine(model, inp, rng, a, noise=1.0)
    assert eng.positions  # the shortcut over earlier positions is available on every family
    grids = eng.trace_grids((None, 'mlp', 'attn'), window=2)
    ref = {None: trace_important_states(model, L, inp, rng, a, noise=1.0),
           'mlp': trace_important_window(model, L, inp, rng, a, 'mlp', window=2, noise=1.0),
           'attn': trace_important_window(model, L, inp, rng, a, 'attn', window=2, noise=1.0)}
    for k in ref:
        assert ref[k].std() > 1e-3, 'the restorations should change the probability'
        assert (grids[k] - ref[k]).abs().max() < 1e-5, (family, k)
    full = TraceEngine(model, inp, rng, a, noise=1.0, positions=False, max_rows=20).trace_grids((None, 'mlp'), window=2)
    assert (full['mlp'] - ref['mlp']).abs().max() < 1e-5
    # the comparison can fail: a different window gives different numbers
    assert (eng.trace_grids(('mlp',), window=1)['mlp'] - ref['mlp']).abs().max() > 1e-4


@pytest.mark.parametrize('family', list(TINY_CONFIGS))
@pytest.mark.parametrize('prompt,subject', [(PROMPT, SUBJECT), ('Eiffel Tower is in', 'Eiffel Tower')])
def test_engine_matches_reference_on_every_family(family, prompt, subject):
    # every shortcut on (positions, last block at the answer only, windows' first block at one position, no-op cells),
    # the subject inside the prompt or at its start, as in the toy world's prompts
    cfg = (dict(n_layer=3) if family in ('gpt2', 'gptj') else
           dict(num_layers=3, attention_types=[[['global', 'local'], 1], [['global'], 1]]) if family == 'gpt_neo' else dict(num_hidden_layers=3))
    model = tiny_model(family, initializer_range=0.3, **cfg)
    tok = tiny_tokenizer('metaspace' if family in ('llama', 'mistral') else 'bytelevel')
    inp = make_inputs(tok, [prompt] * 5)
    rng = find_token_range(tok, inp['input_ids'][0], subject)
    a = int(predict_from_input(model, inp)[0][0])
    eng = TraceEngine(model, inp, rng, a, noise=1.0, min_saving=0)  # every shortcut, however little it saves
    assert eng.positions and eng.last_only, family
    got = eng.trace_grids((None, 'mlp', 'attn'), window=2)
    for k in (None, 'mlp', 'attn'):
        ref = (trace_important_states(model, 3, inp, rng, a, noise=1.0) if k is None else
               trace_important_window(model, 3, inp, rng, a, k, window=2, noise=1.0))
        assert ref.std() > 1e-3, (family, k)
        assert (got[k] - ref).abs().max() < 1e-5, (family, k)


def test_engine_skips_cells_that_cannot_change_the_answer():
    model, tok, inp, rng, a = family_setup('gpt2', n_layer=3)
    eng, n = TraceEngine(model, inp, rng, a, noise=1.0), inp['input_ids'].shape[1]
    assert eng._effective(eng.hidden_cell(rng[0], 2)) is None           # the last layer's state at a token not read
    assert eng._effective(eng.hidden_cell(n - 1, 2)) is not None        # ... at the last token: the clean output
    assert eng._effective(eng.window_cell(rng[0] - 1, 1, 'mlp', 3)) is None  # before the subject nothing is corrupted
    cut = eng._effective(eng.window_cell(rng[0], 2, 'attn', 3))          # a window's top block at a token not read
    assert cut.patches[0][1] == (1,)
    # and the skipped cells still get the reference path's numbers
    ref = trace_important_states(model, 3, inp, rng, a, noise=1.0)
    got = eng.trace_grids((None,))[None]
    assert (got - ref).abs().max() < 1e-5 and (ref[:-1, -1] - eng.low_score).abs().max() < 1e-6


def test_engine_shares_clipped_windows_exactly():
    # windows clipped at the bottom share their first blocks; chunks of a few rows split the work
    model, tok, inp, rng, a = family_setup('gpt2', n_layer=6)
    got = TraceEngine(model, inp, rng, a, noise=1.0, max_rows=30, min_saving=0).trace_grids(('mlp', 'attn'), window=7)
    for k in ('mlp', 'attn'):
        ref = trace_important_window(model, 6, inp, rng, a, k, window=7, noise=1.0)
        assert ref.std() > 1e-3 and (got[k] - ref).abs().max() < 1e-5


def test_engine_on_the_toy_model():
    toyworld = pytest.importorskip('rome_nb.toyworld')
    mt, world = toyworld.load_toy()
    fact = toyworld.toy_knowns(world)[0]
    subjects = [k['subject'] for k in toyworld.toy_knowns(world)]
    for kind in (None, 'mlp', 'attn'):
        fast = calculate_hidden_flow(mt, fact['prompt'], fact['subject'], kind=kind, window=3, subjects=subjects)
        slow = calculate_hidden_flow(mt, fact['prompt'], fact['subject'], kind=kind, window=3, subjects=subjects, engine=False)
        assert (fast['scores'] - slow['scores']).abs().max() < 1e-5
        assert fast['high_score'] > fast['low_score']


@pytest.mark.parametrize('kw', [dict(noise='s3'), dict(noise='u2'), dict(noise='m', replace=True), dict(noise='t3'),
                                dict(noise=0.7, uniform_noise=True), dict(noise='s2', target='Paris France', kind='mlp')])
def test_noise_options_and_targets(kw):
    model, tok, inp, rng, a = family_setup('gpt2', n_layer=3)
    mt = ModelAndTokenizer(model=model, tokenizer=tok)
    args = dict(samples=4, window=2, token_range=[rng[0], rng[1] - 1, inp['input_ids'].shape[1] - 1])
    fast = calculate_hidden_flow(mt, PROMPT, SUBJECT, **args, **kw)
    slow = calculate_hidden_flow(mt, PROMPT, SUBJECT, engine=False, **args, **kw)
    assert (fast['scores'] - slow['scores']).abs().max() < 1e-5
    assert abs(fast['low_score'] - slow['low_score']) < 1e-6


def test_noise_specs():
    model, tok, *_ = family_setup('gpt2', n_layer=2)
    mt = ModelAndTokenizer(model=model, tokenizer=tok)
    assert resolve_noise(mt, 'u0.3') == (0.3, True)
    level, uni = resolve_noise(mt, 's2', subjects=[SUBJECT, 'LeBron James'])
    assert not uni and level > 0
    with pytest.raises(ValueError, match='unknown noise'): resolve_noise(mt, 'gaussian')
    with pytest.raises(ValueError, match='degrees'): resolve_noise(mt, 't1')


def test_severed_path_matches_reference():
    model, tok, inp, rng, a = family_setup('llama', num_hidden_layers=3)
    eng = TraceEngine(model, inp, rng, a, noise=1.0)
    t = rng[1] - 1
    got = eng.trace_severed(t)
    for k in (None, 'attn', 'mlp'):
        ref = torch.stack([trace_with_repatch(model, inp, [(t, layername(model, l))],
                                              [] if k is None else [(t, layername(model, j, k)) for j in range(3)], a, rng, noise=1.0)
                           for l in range(3)])
        assert (got[k] - ref).abs().max() < 1e-5
    mt = ModelAndTokenizer(model=model, tokenizer=tok)
    res = calculate_severed(mt, PROMPT, SUBJECT, noise=1.0, samples=6)
    assert set(res) >= {'ordinary', 'no_attn', 'no_mlp', 'low_score', 'token'} and res['token'] == t


def test_bad_input_and_wrong_facts():
    model, tok, *_ = family_setup('gpt2', n_layer=2)
    mt = ModelAndTokenizer(model=model, tokenizer=tok)
    with pytest.raises(ValueError, match="'Louvre' is not in the prompt"): calculate_hidden_flow(mt, PROMPT, 'Louvre')
    with pytest.raises(ValueError, match='empty prompt'): calculate_hidden_flow(mt, ' ', SUBJECT)
    with pytest.raises(ValueError, match='unknown kind'): calculate_hidden_flow(mt, PROMPT, SUBJECT, kind='ffn')
    answer = calculate_hidden_flow(mt, PROMPT, SUBJECT, samples=2)['answer']
    wrong = calculate_hidden_flow(mt, PROMPT, SUBJECT, expect='Paris' if answer.strip() != 'Paris' else 'Rome')
    assert wrong['correct_prediction'] is False and wrong['answer'] == answer


def test_engine_refuses_a_model_it_cannot_replay():
    model, tok, inp, rng, a = family_setup('gpt2', n_layer=2)
    # something between the blocks: the engine must notice and the entry point fall back to the reference path
    h = model.transformer.h[1].register_forward_pre_hook(lambda mod, args: (args[0] * 1.5, *args[1:]))
    try:
        with pytest.raises(EngineUnsupported): TraceEngine(model, inp, rng, a, noise=1.0)
        mt = ModelAndTokenizer(model=model, tokenizer=tok)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            res = calculate_hidden_flow(mt, PROMPT, SUBJECT, samples=3, noise=1.0, token_range=[rng[1] - 1])
        assert any('reference path' in str(x.message) for x in w)
        ref = trace_important_states(model, 2, make_inputs(tok, [PROMPT] * 4), rng, a, noise=1.0, token_range=[rng[1] - 1])
        assert (res['scores'] - ref).abs().max() < 1e-6
    finally: h.remove()


def test_knowns_loader_on_the_original_file(shared_data):
    known = known_facts(shared_data / 'known_1000.json')
    assert len(known) == 1209 and known[0]['subject'] == 'Vinson Massif' and known[-1]['known_id'] == 1208
    assert all(k['subject'] in k['prompt'] for k in known)
    assert len(known_facts(KnownsDataset(shared_data))) == 1209  # the dsets loader, given the folder holding the file
    with pytest.raises(ValueError, match="lacks \\['prompt'\\]"): known_facts([dict(subject='X')])


def test_trace_knowns_caches_skips_and_reports(tmp_path):
    model, tok, *_ = family_setup('gpt2', n_layer=2)
    mt = ModelAndTokenizer(model=model, tokenizer=tok)
    answer = calculate_hidden_flow(mt, PROMPT, SUBJECT, samples=2)['answer']
    facts = [dict(known_id=3, subject=SUBJECT, prompt=PROMPT, attribute=answer),
             dict(known_id=4, subject=SUBJECT, prompt=PROMPT, attribute='Rome' if answer.strip() != 'Rome' else 'Paris'),
             dict(known_id=5, subject='Louvre', prompt=PROMPT)]
    r1 = trace_knowns(mt, facts, tmp_path, samples=3, window=2, verbose=False)
    assert (r1['traced'], len(r1['skipped']), len(r1['errors'])) == (2, 1, 1)
    assert r1['skipped'][0][0] == 4 and 'Louvre' in r1['errors'][0][1]
    names = sorted(p.name for p in (tmp_path / 'cases').iterdir())
    assert names == ['knowledge_3.npz', 'knowledge_3_attn.npz', 'knowledge_3_mlp.npz', 'knowledge_4.npz', 'knowledge_4_attn.npz', 'knowledge_4_mlp.npz']
    stamp = (tmp_path / 'cases' / 'knowledge_3_mlp.npz').stat().st_mtime_ns
    r2 = trace_knowns(mt, facts, tmp_path, samples=3, window=2, verbose=False)
    assert (r2['traced'], r2['cached']) == (0, 2) and (tmp_path / 'cases' / 'knowledge_3_mlp.npz').stat().st_mtime_ns == stamp
    saved = load_trace(tmp_path / 'cases' / 'knowledge_3_mlp.npz')
    assert saved['kind'] == 'mlp' and saved['answer'] == answer and saved['correct_prediction'] is True
    assert np.allclose(saved['scores'], r1['results']['mlp'][0]['scores'].numpy())


def test_plot_saves_files(tmp_path):
    model, tok, *_ = family_setup('gpt2', n_layer=2)
    mt = ModelAndTokenizer(model=model, tokenizer=tok)
    res = calculate_hidden_flow(mt, PROMPT, SUBJECT, samples=2, kind='attn', window=1)
    plot_trace_heatmap(res, savepdf=str(tmp_path / 'a' / 'trace.pdf'))
    assert (tmp_path / 'a' / 'trace.pdf').stat().st_size > 1000


def test_explorer_runs_and_reports_errors():
    model, tok, *_ = family_setup('gpt2', n_layer=2)
    mt = ModelAndTokenizer(model=model, tokenizer=tok)
    ex = trace_explorer(mt, PROMPT, SUBJECT, kind='attn', window=1, samples=2)
    ex.run()
    assert ex.error is None and ex.result['kind'] == 'attn'
    ex.children[0].children[1].value = 'Louvre'
    ex.run()
    assert 'Louvre' in ex.error


def _run(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND='Agg')
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_cli_traces_a_fact_file(tmp_path):
    model_dir = tmp_path / 'tiny'
    model, tok, *_ = family_setup('gpt2', n_layer=2)
    model.save_pretrained(model_dir); tok.save_pretrained(model_dir)
    p2 = 'LeBron James plays the sport of'
    answer = calculate_hidden_flow(ModelAndTokenizer(model=model, tokenizer=tok), p2, 'LeBron James', samples=2)['answer']
    facts = tmp_path / 'facts.json'
    facts.write_text(json.dumps([dict(known_id=0, subject=SUBJECT, prompt=PROMPT, attribute='nothing-like-this'),
                                 dict(known_id=1, subject='LeBron James', prompt=p2, attribute=answer)]))
    out = tmp_path / 'out'
    r = _run('-m', 'rome_nb.tracing', '--model_name', str(model_dir), '--fact_file', str(facts), '--output_dir', f'{out}/{{model_name}}',
             '--samples', '3', '--window', '2', '--kinds', 'hidden,mlp', '--noise_level', 'u0.5', '--device', 'cpu', '--threads', '1')
    assert r.returncode == 0, r.stderr
    cases = out / str(model_dir).replace('/', '_') / 'cases'
    assert sorted(p.name for p in cases.iterdir()) == ['knowledge_0.npz', 'knowledge_0_mlp.npz', 'knowledge_1.npz', 'knowledge_1_mlp.npz']
    assert '1 skipped' in r.stdout and '1 facts traced' in r.stdout
    bad = _run('-m', 'rome_nb.tracing', '--model_name', str(model_dir))
    assert bad.returncode != 0 and '--fact_file is needed' in bad.stderr


def test_cli_bench_prints_the_comparison():
    r = _run('-m', 'rome_nb.tracing', '--bench', '--bench_models', 'toy-shaped', '--samples', '3', '--window', '3')
    assert r.returncode == 0, r.stderr
    assert 'speedup' in r.stdout and 'toy-shaped' in r.stdout
