"evaluate(records=...) takes records without the generation tests' fields when generation is skipped (issue 17)."
import json
import pytest
from rome_nb.dsets import MalformedRecordError
from rome_nb.evaluate import evaluate
from rome_nb.toyworld import load_world, toy_counterfact

LEAN_DROP = ('attribute_prompts', 'generation_prompts')


def _lean(n=2):
    return [{k: v for k, v in r.items() if k not in LEAN_DROP} for r in toy_counterfact(load_world(), n)]


def test_lean_records_are_scored(tmp_path):
    run = evaluate('ROME', 'toy', records=_lean(), skip_generation_tests=True, results_dir=tmp_path, quiet=True)
    cases = sorted(run.glob('case_*.json'))
    assert len(cases) == 2
    post = json.loads(cases[0].read_text())['post']
    assert post['rewrite_prompts_probs'] and post['attribute_prompts_probs'] == []


def test_lean_records_still_need_the_probability_fields(tmp_path):
    recs = _lean(1)
    del recs[0]['neighborhood_prompts']
    with pytest.raises(MalformedRecordError, match='neighborhood_prompts'):
        evaluate('ROME', 'toy', records=recs, skip_generation_tests=True, results_dir=tmp_path, quiet=True)
    assert not any(tmp_path.rglob('case_*.json'))
