"The summary of runs written by the reference (fixtures in its format) and by our evaluation."
import json, math, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
import rome_nb.summarize as S

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / 'fixtures' / 'reference_results'


def expected(prefix, key, cmp):
    "Per-case values computed straight from the fixture's NLLs, as the paper defines them."
    out = []
    for f in sorted((FIX / 'ROME' / 'run_000').glob('case_*.json')):
        xs = json.loads(f.read_text())[prefix][key]
        out.append(np.mean([cmp(x['target_new'], x['target_true']) for x in xs]))
    return np.array(out)


def test_reference_run_table():
    t = S.summarize(FIX / 'ROME')
    assert list(t.index) == [('run_000', 'pre'), ('run_000', 'post')]
    post = t.loc[('run_000', 'post')]
    es = expected('post', 'rewrite_prompts_probs', lambda n, t: n < t)
    ps = expected('post', 'paraphrase_prompts_probs', lambda n, t: n < t)
    ns = expected('post', 'neighborhood_prompts_probs', lambda n, t: t < n)
    nm = expected('post', 'neighborhood_prompts_probs', lambda n, t: math.exp(-t) - math.exp(-n))
    assert post['n'] == 3
    assert post['ES'] == pytest.approx(es.mean() * 100) and post['PS'] == pytest.approx(ps.mean() * 100)
    assert post['NS'] == pytest.approx(ns.mean() * 100) and post['NM'] == pytest.approx(nm.mean() * 100)
    assert post['S'] == pytest.approx(3 / (1 / post['ES'] + 1 / post['PS'] + 1 / post['NS']))
    assert post['ES ±'] == pytest.approx(1.96 * es.std(ddof=1) / math.sqrt(3) * 100)
    assert post['GE'] == pytest.approx((6.1 + 5.9 + 6.0) / 3 * 100) and post['RS'] == pytest.approx(35.0)
    assert post['essence'] == pytest.approx(20.0) and post['time'] == pytest.approx(4.0)
    assert t.loc[('run_000', 'pre'), 'ES'] == 0.0


def test_reference_summaries_shape():
    s = S.reference_summaries(FIX / 'ROME')[0]
    assert s['num_cases'] == 3 and s['run_dir'].endswith('run_000')
    assert s['post_rewrite_success'] == (round(200 / 3, 2), round(float(np.std([1, 1, 0])) * 100, 2))
    assert s['time'] == (4.0, pytest.approx(float(np.std([3, 4, 5]))))
    assert s['post_score'][0] == pytest.approx(S.summarize(FIX / 'ROME').loc[('run_000', 'post'), 'S'], abs=0.05)


def test_memit_batch_run_accuracies():
    t = S.summarize('MEMIT', results_dir=FIX)
    assert list(t.index) == [('run_000', 'post')]  # batch runs have no `pre`
    r = t.loc[('run_000', 'post')]
    assert r['E-acc'] == pytest.approx(np.mean([1, 1, 1, 2 / 3]) * 100)
    assert r['N-acc'] == pytest.approx(np.mean([1, .75, .75, .75]) * 100)
    assert 'ES' not in t.columns


def test_cli_prints_table():
    r = subprocess.run([sys.executable, '-m', 'rome_nb.summarize', '--dir_name', str(FIX / 'ROME'), '--first_n_cases', '2'],
                       capture_output=True, text=True, env={'PYTHONPATH': str(ROOT), 'PATH': '/usr/bin:/bin'})
    assert r.returncode == 0, r.stderr
    assert 'run_000 pre' in r.stdout and ' ± ' in r.stdout and 'ES' in r.stdout
    assert S.summarize(FIX / 'ROME', first_n_cases=2).loc[('run_000', 'post'), 'n'] == 2


def test_run_benchmark_evaluates_and_summarizes(tmp_path, capsys):
    import standin_alg
    from rome_nb.models import tiny_model, tiny_tokenizer, ModelAndTokenizer
    from rome_nb.dsets import AttributeSnippets, fit_tfidf_vectorizer
    mt = ModelAndTokenizer(model=tiny_model('gpt2', n_layer=4, n_embd=64), tokenizer=tiny_tokenizer(), device='cpu')
    snips = AttributeSnippets.from_list(standin_alg.snippets())
    run, t = S.run_benchmark('STEP', mt, records=[standin_alg.make_record(i) for i in range(4)], snips=snips,
                             vec=fit_tfidf_vectorizer(snips.texts()), hparams=standin_alg.StepHyperParams(), results_dir=tmp_path, quiet=True)
    assert run == tmp_path / 'STEP' / 'run_000' and t.loc[('run_000', 'post'), 'n'] == 4
    assert t.loc[('run_000', 'post'), 'ES'] > t.loc[('run_000', 'pre'), 'ES'] and 'GE' in t.columns
    assert 'run_000 pre' in capsys.readouterr().out


def test_paper_table_rows_agree_with_their_score():
    "Each quoted row of the paper's Table 4: S is the harmonic mean of ES, PS, NS to the rounding."
    from rome_nb.summarize import paper_table, hmean, PAPER_TABLE4
    t = paper_table()
    assert list(t.columns) == ['S', 'ES', 'PS', 'NS'] and list(t.index) == list(PAPER_TABLE4)
    for _, r in t.iterrows(): assert abs(hmean([r.ES, r.PS, r.NS]) - r.S) < 0.15, r
