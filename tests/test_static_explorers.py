"""The kernel-free explorers (issue 16): dropdowns jslinked to stacks of precomputed views.

Checks that `stack_explorer`, `static_trace_explorer` and `static_edit_explorer` build the expected number of
views and links, and that the widget state they produce is the same from one run to the next (model ids aside).
`python tests/test_static_explorers.py A.ipynb B.ipynb` compares the widget state saved in two executions."""
import json, re, sys
import pytest

W = pytest.importorskip('ipywidgets')
from rome_nb.trace_plots import stack_explorer, figure_html

REF = re.compile(r'IPY_MODEL_([0-9a-f]+)')


def canonical_state(state:dict):
    """The widget state without its random model ids: each model written out with every reference replaced by
    the digest of the model referred to (computed the same way), the list sorted."""
    import hashlib
    memo = {}
    def text(m):
        return REF.sub(lambda x: 'IPY_MODEL_' + digest(x.group(1)), json.dumps(state[m], sort_keys=True))
    def digest(m):
        if m not in memo: memo[m] = hashlib.sha256(text(m).encode()).hexdigest()[:16] if m in state else '?'
        return memo[m]
    return sorted(text(m) for m in state)


def state_of(widgets):
    "The state of `widgets` and every widget they refer to, as the saved notebook metadata holds it."
    from ipywidgets.embed import dependency_state
    return dependency_state(widgets, drop_defaults=True)


def _views(n_outer=4, n_inner=3):
    return {f'fact {i}': {f'kind {k}': f'<p>{i}-{k}</p>' for k in range(n_inner)} for i in range(n_outer)}


def test_two_levels():
    ex = stack_explorer(_views(), names=('fact', 'kind'))
    assert [d.description for d in ex.dropdowns] == ['fact', 'kind']
    assert len(ex.stack.children) == 4 and all(len(p.children) == 3 for p in ex.stack.children)
    assert len(ex.links) == 1 + 4
    assert ex.links[0].source == (ex.dropdowns[0], 'index') and ex.links[0].target == (ex.stack, 'selected_index')
    assert {l.target[0].model_id for l in ex.links[1:]} == {p.model_id for p in ex.stack.children}
    assert ex.stack.children[2].children[1].value == '<p>2-1</p>'


def test_one_level_and_errors():
    ex = stack_explorer({'a': '<b>a</b>', 'b': 'b'}, names=('metric',))
    assert len(ex.dropdowns) == 1 and len(ex.links) == 1 and len(ex.stack.children) == 2
    with pytest.raises(ValueError, match='same ones'): stack_explorer({'a': {'x': ''}, 'b': {'y': ''}})
    with pytest.raises(ValueError, match='at least one'): stack_explorer({})


def test_deterministic_state():
    a, b = stack_explorer(_views()), stack_explorer(_views())
    sa, sb = state_of([a] + a.links), state_of([b] + b.links)
    assert set(sa).isdisjoint(sb)  # fresh model ids each time ...
    assert canonical_state(sa) == canonical_state(sb)  # ... and nothing else differs


def test_figure_html_deterministic():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    def fig():
        f, ax = plt.subplots(figsize=(2, 1))
        ax.plot([0, 1], [1, 0])
        return f
    h = figure_html(fig(), dpi=40)
    assert h.startswith('<img src="data:image/png;base64,') and h == figure_html(fig(), dpi=40)


def test_static_trace_explorer():
    import numpy as np
    from rome_nb.tracing import static_trace_explorer
    def res(kind, i):
        return dict(scores=np.full((3, 2), 0.1 * i), low_score=0.0, high_score=1.0, input_tokens=['A', ' b', ' c'],
                    subject_range=(0, 1), answer=' x', kind=kind, window=1)
    results = [{k: res(k, i) for k in (None, 'mlp', 'attn')} for i in range(2)]
    ex = static_trace_explorer(results, dpi=30)
    assert len(ex.stack.children) == 2 and all(len(p.children) == 3 for p in ex.stack.children)
    assert list(ex.dropdowns[1].options) == ['hidden states', 'MLP', 'attention']
    assert len(ex.links) == 3


def test_static_average_explorer():
    import numpy as np
    import torch
    from rome_nb.tracing_averaged import average_indirect_effects, static_average_explorer
    def res(kind, s):
        return dict(scores=torch.tensor(s, dtype=torch.float), low_score=0.1, high_score=0.9, subject_range=(0, 1),
                    kind=kind, correct_prediction=True, window=1, input_tokens=['t'] * 3)
    avgs = {k: average_indirect_effects([res(k, [[0.1 * i, 0.2], [0.3, 0.4], [0.5, 0.6 + 0.1 * i]])])
            for i, k in enumerate((None, 'mlp', 'attn'))}
    ex = static_average_explorer(avgs, dpi=30)
    assert [list(d.options) for d in ex.dropdowns] == [['hidden states', 'MLP', 'attention'], ['heatmap', 'lines']]
    assert len(ex.stack.children) == 3 and all(len(p.children) == 2 for p in ex.stack.children)
    views = [v.value for p in ex.stack.children for v in p.children]
    assert len(set(views)) == 6 and all(v.startswith('<img') for v in views)


def notebook_states_equal(a, b):
    "Whether two executions of a notebook saved the same widget state (model ids aside)."
    st = lambda p: json.load(open(p, encoding='utf-8'))['metadata']['widgets'][
        'application/vnd.jupyter.widget-state+json']['state']
    return canonical_state(st(a)) == canonical_state(st(b))


if __name__ == '__main__':
    same = notebook_states_equal(sys.argv[1], sys.argv[2])
    print('same widget state' if same else 'widget states differ')
    sys.exit(0 if same else 1)
