"The plotting room of causal tracing: labels matplotlib can draw, the pieces tracing_averaged shares."
import warnings
import matplotlib
matplotlib.use('Agg')
import numpy as np
import pytest
import torch

from rome_nb.trace_plots import (CMAPS, KIND_NAMES, PAPER_RC, token_label, layer_ticks, finish_figure,
                                 plot_trace_heatmap, plot_flows, plot_severed)


def fake_result(kind='', answer='\ufffd', tokens=('The', ' E', '\ufffd', ' is', ' $'), layers=4):
    "A trace result in `calculate_hidden_flow`'s format, its answer and a token a partial byte (U+FFFD)."
    scores = torch.from_numpy(np.random.RandomState(0).rand(len(tokens), layers))
    return dict(scores=scores, low_score=0.1, high_score=0.9, input_tokens=list(tokens), subject_range=(1, 3),
                answer=answer, kind=kind, window=2)


@pytest.mark.parametrize('tok, want', [(' Tower', ' Tower'), ('\ufffd', r'\ufffd'), ('a\nb', r'a\nb'),
                                       ('$5', r'\$5'), ('café', 'café')])
def test_token_label(tok, want):
    assert token_label(tok) == want


@pytest.mark.parametrize('font', ['paper', 'cmr10'])
def test_no_missing_glyph_warning(tmp_path, monkeypatch, font):
    """The random GPT-2's answer decodes to U+FFFD; the heatmaps draw it escaped, with no 'Glyph missing' warning,
    also in a font that lacks U+FFFD (cmr10, with no fallback; the paper's fonts fall back to DejaVu Serif where it is installed)."""
    import rome_nb.trace_plots as tp
    if font != 'paper': monkeypatch.setattr(tp, 'PAPER_RC', {'font.family': font})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        plot_trace_heatmap(fake_result(), savepdf=str(tmp_path / 'h.png'))
        plot_flows({None: fake_result(), 'mlp': fake_result('mlp')}, savepdf=str(tmp_path / 'f.png'))
        sv = dict(ordinary=np.zeros(4), no_attn=np.zeros(4), no_mlp=np.zeros(4), token=2,
                  input_tokens=['The', ' E', '\ufffd', ' is'])
        plot_severed(sv, savepdf=str(tmp_path / 's.png'))
    missing = [str(w.message) for w in caught if 'Glyph' in str(w.message)]
    assert [m for m in missing if 'MINUS SIGN' not in m] == []   # cmr10 also lacks the axes' minus sign
    assert all((tmp_path / f).stat().st_size > 1000 for f in ('h.png', 'f.png', 's.png'))


def test_shared_pieces(tmp_path):
    import matplotlib.pyplot as plt
    assert set(CMAPS) == {None, 'mlp', 'attn'} and KIND_NAMES == {'mlp': 'MLP', 'attn': 'Attn'}
    assert PAPER_RC['font.family'] == 'serif'
    fig, ax = plt.subplots()
    layer_ticks(ax, 48)
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ['0', '5', '10']
    finish_figure(fig, str(tmp_path / 'a' / 'b.pdf'))
    assert [p.name for p in (tmp_path / 'a').iterdir()] == ['b.pdf']   # no temporary file left behind
