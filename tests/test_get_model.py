"One way to get a model (`rome_nb.models.get_model`), `evaluate` configured by `EvalConfig`, one downloader."
import dataclasses, json
from pathlib import Path
import pytest, torch
from rome_nb.models import get_model, ModelAndTokenizer, MODEL_ALIAS_OPTIONS, TOY_DIR
from rome_nb.toyworld import load_toy, toy_world_for
from rome_nb import evaluate as E, stats as S, dsets as D, files as F


def test_get_model_toy_is_load_toy():
    mt, world = load_toy()
    got = get_model('toy', device='cpu')
    assert got.model_name == mt.model_name == 'toy' and str(got.device) == 'cpu'
    for (n, p), (_, q) in zip(mt.model.named_parameters(), got.model.named_parameters()):
        assert torch.equal(p, q), n
    assert toy_world_for('toy').facts == world.facts and toy_world_for(got) is None
    assert get_model(got) is got
    assert get_model('toy', torch_dtype='float16').model.dtype == torch.float16  # given options win over the alias's


def test_evaluate_config_and_keywords_agree(tmp_path):
    kw = dict(ds_name='cf', dataset_size_limit=2, skip_generation_tests=True, quiet=True)
    a = E.evaluate('ROME', 'toy', results_dir=tmp_path / 'a', **kw)
    b = E.evaluate(E.EvalConfig('ROME', 'toy', results_dir=tmp_path / 'b', **kw))
    for f in ('case_0.json', 'case_1.json'):
        ca, cb = json.loads((a / f).read_text()), json.loads((b / f).read_text())
        ca.pop('time'), cb.pop('time')
        assert ca == cb
    with pytest.raises(TypeError): E.evaluate('ROME', 'toy', no_such_option=1)
    cli = {k: v for k, v in E.main.__wrapped__.__annotations__.items()}
    assert set(cli) == {f.name for f in dataclasses.fields(E.EvalConfig)} - {'check_weights_restored'}


def test_one_downloader():
    assert D.download_file is F.download_file
    assert S.REMOTE_ROOT_URL == S.STATS_URL and D.REMOTE_ROOT_URL == 'https://rome.baulab.info'


def test_old_stats_url_name_still_honoured(monkeypatch):
    monkeypatch.setattr(S, 'REMOTE_ROOT_URL', 'http://mirror/stats')
    assert S.stats_url() == 'http://mirror/stats'
    monkeypatch.setattr(S, 'STATS_URL', 'http://other/stats')
    assert S.stats_url() == 'http://other/stats'


def test_quiet_stats_silences_layer_stats(tmp_path, capsys):
    mt = get_model('toy')
    with S.quiet_stats():
        S.layer_stats(mt.model, mt.tokenizer, 0, tmp_path, 'toy', sample_size=20)
    out = capsys.readouterr()
    assert 'stats ' not in out.err and out.out == ''
