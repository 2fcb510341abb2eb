"""The docs site check (tools/docs_check.py): each failure it looks for is found on a small page made to
have it, a good page passes, and (with RUN_DOCS_SITE=1; `make docs-check` runs the same check) the real
pages pass but for the failures listed in `KNOWN_FAILURES`. Skipped, with the reason, where Chromium,
Playwright or the widget manager are missing."""
import importlib.util, os, sys
from pathlib import Path
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('docs_check', ROOT / 'tools' / 'docs_check.py')
dc = importlib.util.module_from_spec(_spec)
sys.modules['docs_check'] = dc
_spec.loader.exec_module(dc)
v4 = nbformat.v4
PNG = ('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==')


def _widgets(linked):
    "Dropdowns over a Stack and over a Tab (jslinked when `linked`); an Output widget that saved an error."
    import ipywidgets as w
    from ipywidgets.embed import dependency_state
    dd = w.Dropdown(options=['first', 'second'], description='which')
    stack = w.Stack([w.HTML('<b>one</b>'), w.HTML('<b>two</b>')], selected_index=0)
    links = [w.jslink((dd, 'index'), (stack, 'selected_index'))] if linked else []
    tab_dd = w.Dropdown(options=['x', 'y'], description='tab')
    tab = w.Tab([w.Label('x page'), w.Label('y page')], selected_index=0)
    links += [w.jslink((tab_dd, 'index'), (tab, 'selected_index'))] if linked else []
    out = w.Output()
    if not linked: out.outputs = ({'output_type': 'stream', 'name': 'stdout',
                                   'text': "cannot trace: subject 'Louvre' is not in the prompt\n"},)
    views = [w.VBox([dd, stack]), w.VBox([tab_dd, tab]), out]
    # a widget no cell shows (e.g. a test's own explorer): saved in the state, never on the page
    hidden = [w.Output()] if linked else []
    for h in hidden: h.outputs = ({'output_type': 'stream', 'name': 'stdout', 'text': "cannot trace: hidden\n"},)
    state = {'version_major': 2, 'version_minor': 0, 'state': dependency_state(views + links + hidden)}
    return views, state


def _view(model_id):
    "A display_data output showing widget `model_id`."
    view = {'model_id': model_id, 'version_major': 2, 'version_minor': 0}
    data = {dc.VIEW_MIME: view, 'text/plain': 'a widget'}
    return v4.new_output('display_data', data=data)


def _stream(name, text): return v4.new_output('stream', name=name, text=text)


def good_nb():
    views, state = _widgets(linked=True)
    cells = [v4.new_markdown_cell('# good\nA page with an explorer that works without a kernel.'),
             v4.new_code_cell('explorer', outputs=[_view(v.model_id) for v in views]),
             v4.new_code_cell('plot()', outputs=[v4.new_output('display_data', data={'image/png': PNG})]),
             v4.new_code_cell('try: f()\nexcept ValueError as e: print("ValueError:", e)',  # shown on purpose
                              outputs=[_stream('stdout', 'ValueError: on purpose\n')])]
    return v4.new_notebook(cells=cells, metadata={'widgets': {dc.STATE_MIME: state}})


def bad_nb():
    views, state = _widgets(linked=False)
    error = v4.new_output('error', ename='ZeroDivisionError', evalue='division by zero',
                          traceback=['Traceback (most recent call last)', 'boom'])
    glyph = 'UserWarning: Glyph 8322 (\\N{SUBSCRIPT TWO}) missing from font(s) DejaVu Sans.\n'
    cells = [v4.new_markdown_cell('# bad\n![a figure](figures/missing.png)'),
             v4.new_code_cell('explorer', outputs=[_view(v.model_id) for v in views]),
             v4.new_code_cell('gone', outputs=[_view('deadbeef' * 4)]),  # no saved state
             v4.new_code_cell('1/0', outputs=[error]),
             v4.new_code_cell('save()', outputs=[_stream('stdout', 'saved to /tmp/x/run_000\n')]),
             v4.new_code_cell('plot()', outputs=[_stream('stderr', glyph)])]
    # a widget from a package the manager does not have: it would fetch it from a CDN
    state['state']['feedface' * 4] = {'model_name': 'FancyModel', 'model_module': 'fancy-widgets',
                                      'model_module_version': '^1.0.0', 'state': {}}
    cells.append(v4.new_code_cell('fancy', outputs=[_view('feedface' * 4)]))
    return v4.new_notebook(cells=cells, metadata={'widgets': {dc.STATE_MIME: state}})


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp('site')
    try: dc.widget_assets(d / 'assets')
    except dc.Skip as e: pytest.skip(str(e))
    (d / 'nbs').mkdir()
    for name, nb in (('good', good_nb()), ('bad', bad_nb())): nbformat.write(nb, d / 'nbs' / f'{name}.ipynb')
    return d, dc.to_html(d / 'nbs', d)


@pytest.fixture(scope='module')
def browser():
    try:
        with dc.browser() as b: yield b
    except dc.Skip as e: pytest.skip(str(e))


def _check(site, browser, name):
    d, pages = site
    nb = nbformat.read(pages[name], as_version=4)
    with dc.serve(d) as url: return dc.output_findings(nb) + dc.check_page(browser, f'{url}{name}.html', nb)


def test_explorers_found_from_the_widget_state():
    nb = good_nb()
    assert len(dc.explorer_views(nb)) == 2  # the Dropdown over a Stack and the one over a Tab; not the Output


def test_a_good_page_passes(site, browser):
    assert dc.failures_only(_check(site, browser, 'good')) == []


def test_each_failure_is_found(site, browser):
    found = '\n'.join(_check(site, browser, 'bad'))
    for what in ["error output ZeroDivisionError", "explorer's error message: cannot trace: subject 'Louvre'",
                 'broken image: figures/missing.png', 'deadbeef has no saved state',
                 'request leaves the local site',
                 "widget view feedface shows the manager's error", 'JS console error',
                 'absolute path in page text: /tmp/x/run_000', 'missing glyph: UserWarning: Glyph 8322',
                 "picking 'second' in dropdown 'which' does not change the view",
                 "picking 'y' in dropdown 'tab' does not change the view"]:
        assert what in found, f'{what!r} not found in:\n{found}'


def test_widgets_left_unrendered_are_found(site, browser, tmp_path):
    "Without the widget manager (here: no assets folder) every view stays a placeholder."
    d, pages = site
    (tmp_path / 'good.html').write_bytes((d / 'good.html').read_bytes())
    nb = nbformat.read(pages['good'], as_version=4)
    with dc.serve(tmp_path) as url: found = dc.check_page(browser, f'{url}good.html', nb, timeout_ms=3000)
    assert 'HTTP 404: assets/embed-amd.js' in found
    assert sum('not rendered (placeholder left)' in f for f in found) == 3


def test_known_failures_bookkeeping():
    new, stale = dc.unexpected({'a': ['x: 1', 'y: 2', dc.NOTE + 'w'], 'b': []}, {'a': ['x:'], 'b': ['z']})
    assert new == {'a': ['y: 2']} and stale == {'b': ['z']}


@pytest.mark.skipif(os.environ.get('RUN_DOCS_SITE') != '1', reason='the whole site: run by `make docs-check` '
                    '(or RUN_DOCS_SITE=1)')
def test_docs_site(tmp_path, browser):
    try: r = dc.run_check(tmp_path, b=browser)
    except dc.Skip as e: pytest.skip(str(e))
    new, stale = dc.unexpected(r['failures'])
    assert not new, f'pages with failures not in KNOWN_FAILURES: {new}'
    assert not stale, f'KNOWN_FAILURES entries that match nothing (fixed: delete them): {stale}'


def test_widgets_no_cell_shows_are_not_checked():
    nb = good_nb()
    state = dc.widget_state(nb)
    says = lambda m: any('cannot trace: hidden' in o.get('text', '') for o in m['state'].get('outputs', []))
    hidden = [k for k, m in state.items() if says(m)]
    assert len(hidden) == 1 and hidden[0] not in dc.shown_models(nb)
    assert dc.output_findings(nb) == []
