#!/usr/bin/env python3
"""The docs site check (issue 16): build every page that can be built without Quarto, open each in
headless Chromium and fail on what a reader would see broken.

Build: `nbdev_proc_nbs` on a copy of the tracked tree (the working tree is never touched; a stand-in
`quarto` and a `pip` that refuses are first on PATH, so nbdev installs nothing), then one HTML page per
processed notebook with nbconvert (lab template), the ipywidgets state embedded and the widget manager
served from a local copy of the npm package `@jupyter-widgets/html-manager` (fetched once with `npm pack`
into a cache, never from a CDN at view time).

A page fails on: a Python traceback or an error output (in a cell or in a widget's saved output), an
explorer's error message, an image that does not load, a widget view left unrendered or a JS error, a
request leaving the local server, an absolute path of the build machine in the page text, a matplotlib
missing-glyph warning, and an explorer (a Dropdown in one widget with a Stack or Tab) whose view does not
change when another option is picked.

    python tools/docs_check.py [--out DIR] [--shots DIR --shot PAGE ...]

exits 0 when every failure found is listed in KNOWN_FAILURES, 1 otherwise, and 0 with one `SKIP:` line
when the browser or the widget manager cannot be had (offline, no Chromium, no Playwright)."""
import argparse, json, os, re, shutil, stat, subprocess, sys, tarfile, tempfile, threading, time
from contextlib import contextmanager, nullcontext
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HTML_MANAGER = '@jupyter-widgets/html-manager@1.0.15'  # the manager for ipywidgets 8 (widget state 2.0)
REQUIREJS = 'requirejs@2.3.7'  # nbconvert's lab template loads require.js before the AMD widget manager
CACHE = Path(os.environ.get('ROME_NB_DOCS_CACHE') or Path.home() / '.cache' / 'rome_nb' / 'docs-check')
# Debian's chromium (apt-get install chromium); else a Chrome already there (GitHub's runners have one)
CHROMIUM = os.environ.get('ROME_NB_CHROMIUM') or next(
    filter(None, map(shutil.which, ('chromium', 'google-chrome', 'chromium-browser'))), '/usr/bin/chromium')
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-sync',
                 '--disable-background-networking', '--disable-component-update']
PAGE_TIMEOUT_MS = 30_000

# Failures found on the current notebooks, page -> substrings of the failure messages. Each is a real bug to
# fix in the notebook; delete its entry once fixed (the check says when an entry no longer matches anything).
KNOWN_FAILURES = {}  # page -> failures accepted for now (none)

VIEW_MIME = 'application/vnd.jupyter.widget-view+json'
STATE_MIME = 'application/vnd.jupyter.widget-state+json'
TRACEBACK = re.compile(r'Traceback \(most recent call last\)')
# error text: in any output a traceback; in stderr and in widgets' outputs (an explorer's view) an error
# message too. A cell that prints an error to stdout on purpose (`except E as e: print(e)`) is not flagged.
ERROR_TEXT = [(TRACEBACK, 'a Python traceback'),
              (re.compile(r'^\s*[A-Z]\w*(Error|Exception): ', re.M), 'an exception message'),
              (re.compile(r'^\s*cannot \w+: ', re.M), "an explorer's error message")]
GLYPH = re.compile(r'Glyph \d+ .{0,80}?missing from (current )?font')
ABS_PATH = re.compile(r'(?<![\w.~/-])/(work|tmp|root|home)(/[^\s\'"`),;:]*)?(?![\w-])')


NOTE = 'note: '  # a finding reported but not failed


def failures_only(found): return [f for f in found if not f.startswith(NOTE)]


class Skip(Exception):
    "The check cannot run here (no browser, no widget manager): the reason, in one line."


def run(cmd, **kw):
    "Run `cmd`; on failure raise with the end of what it printed."
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        raise RuntimeError(f'{Path(cmd[0]).name} failed ({r.returncode}): {(r.stdout + r.stderr)[-3000:]}')
    return r


# ---------------------------------------------------------------- build
def tracked_copy(dest, root=ROOT):
    "The tracked files of `root` (and untracked ones git does not ignore) copied to `dest`."
    files = run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root).stdout
    for rel in filter(None, files.split('\0')):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def proc_nbs(work, root=ROOT, n_workers=2):
    "`nbdev_proc_nbs` on a copy of `root` in `work`: the `_proc` folder; fails if nbdev tried to install."
    src = tracked_copy(Path(work) / 'src', root)
    fake = Path(work) / 'bin'
    fake.mkdir()
    tried = Path(work) / 'install-attempts'
    (fake / 'quarto').write_text('#!/bin/sh\nexit 0\n')  # present: nbdev does not download Quarto
    for name in ('pip', 'pip3', 'sudo', 'curl'):  # should nbdev still try to install: refused and recorded
        (fake / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{tried}"\nexit 1\n')
    for p in fake.iterdir(): p.chmod(stat.S_IRWXU)
    vbin = Path(sys.executable).parent
    env = dict(os.environ, PATH=os.pathsep.join([str(fake), str(vbin), os.environ.get('PATH', '')]),
               OMP_NUM_THREADS='1')
    # the widget state goes through nbdev's writer as on the site (settings.ini `procs`: KeepWidgetLinks)
    run([str(vbin / 'nbdev_proc_nbs'), '--n_workers', str(n_workers)], cwd=src, env=env, timeout=600)
    if tried.exists(): raise RuntimeError(f'nbdev_proc_nbs tried to install: {tried.read_text().strip()}')
    return src / '_proc'


def npm_file(spec, cache=CACHE):
    "The unpacked npm package `spec` (name@version) in the cache, fetched with `npm pack` the first time."
    d = cache / spec.replace('/', '+')
    if (d / 'package' / 'package.json').exists(): return d / 'package'
    if not shutil.which('npm'): raise Skip(f'npm is not installed, so {spec} cannot be fetched')
    tmp = Path(tempfile.mkdtemp(dir=cache.mkdir(parents=True, exist_ok=True) or cache))
    try:
        r = subprocess.run(['npm', 'pack', spec, '--fetch-retries=1', '--fetch-retry-mintimeout=2000',
                            '--fetch-retry-maxtimeout=5000', '--loglevel=error'],
                           cwd=tmp, capture_output=True, text=True, timeout=300)
        tgz = list(tmp.glob('*.tgz'))
        if r.returncode or not tgz:
            why = [l for l in (r.stderr or r.stdout).splitlines() if l.strip()][:2]
            raise Skip(f"cannot fetch {spec} from the npm registry (offline?): {' / '.join(why)}")
        safe = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}
        with tarfile.open(tgz[0]) as t: t.extractall(tmp / 'x', **safe)
        shutil.rmtree(d, ignore_errors=True)
        (tmp / 'x').rename(d)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    return d / 'package'


def widget_assets(dest, cache=CACHE):
    "require.js and the widget manager's AMD bundle with its fonts, copied into `dest` (the pages load them)."
    dest.mkdir(parents=True, exist_ok=True)
    hm = npm_file(HTML_MANAGER, cache) / 'dist'
    for f in hm.iterdir():
        if f.suffix in ('.woff', '.woff2', '.ttf', '.eot', '.svg') or f.name == 'embed-amd.js':
            shutil.copy(f, dest)
    shutil.copy(npm_file(REQUIREJS, cache) / 'require.js', dest)
    (dest / 'no-mathjax.js').write_text('// MathJax is not loaded by the check (Quarto brings its own)\n')
    (dest.parent / 'favicon.ico').write_bytes(b'')  # the browser asks for one: no 404 in the console
    return dest


def to_html(nbs, site, assets='assets'):
    "Each notebook in `nbs` as `site/<name>.html`, widget state embedded, scripts from `site/<assets>`."
    import nbformat
    from nbconvert import HTMLExporter
    ex = HTMLExporter(template_name='lab', require_js_url=f'{assets}/require.js',
                      widget_renderer_url=f'{assets}/embed-amd.js', mathjax_url=f'{assets}/no-mathjax.js')
    empty, _ = ex.from_notebook_node(nbformat.v4.new_notebook())  # what every page carries (the theme's CSS)
    (site / '_empty.html').write_text(empty, encoding='utf-8')
    pages = {}
    for nb in sorted(Path(nbs).glob('*.ipynb')):
        html, _ = ex.from_filename(str(nb))
        (site / f'{nb.stem}.html').write_text(html, encoding='utf-8')
        pages[nb.stem] = nb
    return pages


# ---------------------------------------------------------------- checks on the notebook's saved outputs
def widget_state(nb):
    return (nb.get('metadata', {}).get('widgets', {}).get(STATE_MIME) or {}).get('state', {})


def _text(o):
    t = o.get('text', o.get('data', {}).get('text/plain', ''))
    return ''.join(t) if isinstance(t, list) else t


def output_findings(nb):
    "Failures in the saved outputs of notebook `nb` (a dict): error outputs and texts, in cells and widgets."
    outs = [(f'cell {i}', False, o) for i, c in enumerate(nb['cells']) for o in c.get('outputs', [])]
    shown = shown_models(nb)  # widgets no cell displays (e.g. a test's own) never reach the page
    outs += [(f'widget output {k[:8]}', True, o) for k, m in widget_state(nb).items() if k in shown
             for o in m['state'].get('outputs', [])]
    found = []
    for where, in_widget, o in outs:
        if o.get('output_type') == 'error':
            found.append(f"{where}: error output {o.get('ename')}: {o.get('evalue', '')[:120]}")
        if (view := o.get('data', {}).get(VIEW_MIME)) and view.get('model_id') not in widget_state(nb):
            found.append(f"{where}: widget view {str(view.get('model_id'))[:8]} has no saved state (the page "
                         "shows nothing: save the notebook's widget state)")
        text = _text(o)
        for rx, what in ERROR_TEXT if in_widget or o.get('name') == 'stderr' else ERROR_TEXT[:1]:
            if m := rx.search(text): found.append(f'{where}: {what}: {_line(text, m)}')
        if m := GLYPH.search(text): found.append(f'{where}: missing glyph: {_line(text, m)}')
    return found


def _line(text, m):
    s, e = text.rfind('\n', 0, m.start()) + 1, text.find('\n', m.end())
    return text[s:e if e >= 0 else None].strip()[:160]


def _refs(v):
    if isinstance(v, str): return [v[10:]] if v.startswith('IPY_MODEL_') else []
    if isinstance(v, (list, tuple)): return [r for x in v for r in _refs(x)]
    if isinstance(v, dict): return [r for x in v.values() for r in _refs(x)]
    return []


def _reachable(state, mid, seen):
    "Add to `seen` the model `mid` and every model its state refers to (layouts and styles aside)."
    if mid in seen or mid not in state: return seen
    seen.add(mid)
    for k, v in state[mid]['state'].items():
        if k not in ('layout', 'style'):
            for r in _refs(v): _reachable(state, r, seen)
    return seen


def _views(nb):
    return [o['data'][VIEW_MIME]['model_id'] for c in nb['cells'] for o in c.get('outputs', [])
            if VIEW_MIME in o.get('data', {})]


def shown_models(nb):
    "Model ids of the widgets a page shows: those a cell displays, and the widgets inside them."
    state, seen = widget_state(nb), set()
    for v in _views(nb): _reachable(state, v, seen)
    return seen


def explorer_views(nb):
    "Model ids of the widgets shown that hold a Dropdown and a Stack or Tab (explorers that need no kernel)."
    state = widget_state(nb)
    names = lambda v: {state[m]['model_name'] for m in _reachable(state, v, set())}
    return [v for v in _views(nb) if 'DropdownModel' in names(v) and names(v) & {'StackModel', 'TabModel'}]


# ---------------------------------------------------------------- checks in the browser
@contextmanager
def serve(folder):
    "A local HTTP server for `folder`: yields its base URL."
    handler = partial(type('Quiet', (SimpleHTTPRequestHandler,), {'log_message': lambda *a: None}),
                      directory=str(folder))
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    finally: httpd.shutdown(); httpd.server_close()


@contextmanager
def browser():
    "Headless Chromium (Debian's) driven by Playwright; raises Skip when either is missing."
    try: from playwright.sync_api import sync_playwright
    except ImportError: raise Skip('the Python package playwright is not installed (pip install playwright)')
    if not Path(CHROMIUM).exists():
        raise Skip('no Chromium (apt-get install chromium, or set ROME_NB_CHROMIUM)')
    with sync_playwright() as p:
        try: b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Exception as e:
            raise Skip(f'{CHROMIUM} does not start: {str(e).strip().splitlines()[0][:200]}')
        try: yield b
        finally: b.close()


VIEW_SCRIPTS = 'script[type="application/vnd.jupyter.widget-view+json"]'
RENDERED_JS = """() => [...document.querySelectorAll('%s')].every(s => { const p = s.previousElementSibling;
  return p && p.classList.contains('widget-subarea') && p.childElementCount > 0; })""" % VIEW_SCRIPTS

VIEWS_JS = """() => [...document.querySelectorAll('%s')].map(s => {
  let id = null; try { id = JSON.parse(s.textContent).model_id; } catch (e) {}
  const p = s.previousElementSibling;
  const ok = !!(p && p.classList.contains('widget-subarea') && p.childElementCount);
  const err = ok ? p.querySelector('.jupyter-widgets-error-widget') : null;
  return {id, rendered: ok, error: err ? (err.textContent || 'error').trim().slice(0, 160) : null};
})""" % VIEW_SCRIPTS

# the view of the widget the i-th view script displays, dropdowns left out (their own value is not the view)
SNAPSHOT_JS = """(i) => { const s = document.querySelectorAll('%s')[i];
  const c = s.previousElementSibling.cloneNode(true);
  c.querySelectorAll('.widget-dropdown').forEach(d => d.remove());
  return c.innerHTML; }""" % VIEW_SCRIPTS

IMAGES_JS = """() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0)
  .map(i => (i.getAttribute('src') || '').slice(0, 60))"""


def _dropdowns(view):
    return view.locator('.widget-dropdown select')


def check_explorer(page, i):
    "Failures of the explorer shown by the i-th view script: each dropdown option must change the view."
    view = page.locator(VIEW_SCRIPTS).nth(i).locator('xpath=preceding-sibling::*[1]')
    found = []
    for d in range(_dropdowns(view).count()):
        sel = _dropdowns(view).nth(d)
        values = sel.locator('option').evaluate_all('os => os.map(o => o.value)')
        if len(values) < 2: continue
        current = sel.input_value()
        for v in [x for x in values if x != current]:
            before = page.evaluate(SNAPSHOT_JS, i)
            sel.select_option(v)
            page.wait_for_timeout(150)
            if page.evaluate(SNAPSHOT_JS, i) == before:
                label = sel.evaluate("s => s.closest('.widget-dropdown').querySelector('label')?.textContent")
                option = sel.locator(f'option[value={json.dumps(v)}]').inner_text().replace('\xa0', ' ')
                found.append(f'explorer: picking {option!r} in dropdown {label or ""!r} '
                             'does not change the view')
        sel.select_option(current)
    return found


def check_page(b, url, nb, shot=None, timeout_ms=PAGE_TIMEOUT_MS):
    "Failures of one page opened in browser `b`; `nb` is the notebook (a dict) it was built from."
    found, base = [], url.rsplit('/', 1)[0] + '/'
    page = b.new_page(viewport={'width': 1280, 'height': 900})
    def console(m):  # a resource that fails to load is reported with its address by `response` below
        if m.type == 'error' and not m.text.startswith('Failed to load resource'):
            found.append(f'JS console error: {m.text[:200]}')
    page.on('console', console)
    page.on('pageerror', lambda e: found.append(f'JS error: {str(e)[:200]}'))
    page.on('response', lambda r: r.status >= 400 and found.append(f'HTTP {r.status}: {r.url[len(base):]}'))
    def route(r):
        if r.request.url.startswith(base): return r.continue_()
        found.append(f'request leaves the local site: {r.request.url[:120]}')
        r.abort()
    page.route('**/*', route)
    try:
        page.goto(url, wait_until='load', timeout=timeout_ms)
        if page.locator(VIEW_SCRIPTS).count():
            try: page.wait_for_function(RENDERED_JS, timeout=timeout_ms)
            except Exception: pass  # reported view by view below
        page.wait_for_timeout(100)
        views = page.evaluate(VIEWS_JS)
        for v in views:
            what = f"widget view {str(v['id'])[:8]}"
            if not v['rendered']: found.append(f'{what} not rendered (placeholder left)')
            if v['error']: found.append(f"{what} shows the manager's error: {v['error']}")
        found += [f'broken image: {s}' for s in page.evaluate(IMAGES_JS)]
        text = page.inner_text('body')
        found += sorted({f'absolute path in page text: {m.group(0)[:80]}' for m in ABS_PATH.finditer(text)})
        found += [f'missing glyph: {_line(text, m)}' for m in GLYPH.finditer(text)]
        # a byte-level token that is no character by itself (a tiny model's output, a label such as
        # p(\ufffd)): reported, not failed, as the toy models' generations are full of them
        found += [f'{NOTE}undecodable text (U+FFFD): {_line(text, m)}' for m in re.finditer('\ufffd', text)]
        if shot: page.screenshot(path=str(shot), full_page=True)
        explorers = explorer_views(nb)
        for i, v in enumerate(views):  # a dropdown outside an explorer needs a kernel: noted, not failed
            if v['rendered']:
                found += [f if v['id'] in explorers else f'{NOTE}kernel only: {f}'
                          for f in check_explorer(page, i)]
    finally: page.close()
    return found


# ---------------------------------------------------------------- the whole check
def run_check(out=None, root=ROOT, shots=None, shot_pages=(), b=None):
    """Build the pages of `root` into `out` (a temporary folder if None) and check them in Chromium (`b`, a
    Playwright browser, or one of `browser()`; one process holds one Playwright at a time): returns
    {'failures': {page: [message]}, 'weights': {page: html bytes}, 'template_bytes': n, 'seconds': {...}};
    raises Skip. Messages that start with NOTE are reported, not failed."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='rome_nb_docs_') as tmp:
        out = Path(out or tmp)
        site = out / 'site'
        site.mkdir(parents=True, exist_ok=True)
        assets = widget_assets(site / 'assets')
        with nullcontext(b) if b else browser() as b:  # Skip before the build when there is no browser
            proc = proc_nbs(Path(tempfile.mkdtemp(dir=out)), root)
            t1 = time.monotonic()
            pages = to_html(proc, site, assets.name)
            t2 = time.monotonic()
            failures = {}
            with serve(site) as url:
                for name, path in pages.items():
                    nb = json.loads(path.read_text(encoding='utf-8'))
                    shot = Path(shots) / f'{name}.png' if shots and name in shot_pages else None
                    found = output_findings(nb) + check_page(b, f'{url}{name}.html', nb, shot)
                    failures[name] = list(dict.fromkeys(found))  # each message once, in order
            t3 = time.monotonic()
        weights = {n: (site / f'{n}.html').stat().st_size for n in pages}
        template = (site / '_empty.html').stat().st_size
    return dict(failures=failures, weights=weights, template_bytes=template,
                seconds=dict(proc_nbs=t1 - t0, nbconvert=t2 - t1, browser=t3 - t2, total=t3 - t0))


def unexpected(failures, known=KNOWN_FAILURES):
    "Failures not listed in `known`, and the entries of `known` that match nothing (fixed: delete them)."
    new = {p: [f for f in failures_only(fs) if not any(k in f for k in known.get(p, ()))]
           for p, fs in failures.items()}
    stale = {p: [k for k in ks if not any(k in f for f in failures.get(p, ()))] for p, ks in known.items()}
    return {p: fs for p, fs in new.items() if fs}, {p: ks for p, ks in stale.items() if ks}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', help='keep the built site here (default: a temporary folder)')
    ap.add_argument('--shots', help='folder for full-page screenshots of the pages named by --shot')
    ap.add_argument('--shot', action='append', default=[], help='page name (notebook stem) to screenshot')
    a = ap.parse_args(argv)
    if a.shots: Path(a.shots).mkdir(parents=True, exist_ok=True)
    try: r = run_check(a.out, shots=a.shots, shot_pages=a.shot)
    except Skip as e:
        print(f'SKIP: docs site check: {e}')
        return 0
    new, stale = unexpected(r['failures'])
    for p, fs in r['failures'].items():
        tag = 'FAIL' if p in new else ('known' if failures_only(fs) else 'ok')
        w = r['weights'][p]
        print(f"{tag:5} {p + '.html':28} {w:>10,} bytes ({w - r['template_bytes']:>9,} beyond the template)")
        for f in fs: print(f"        {'NEW ' if f in new.get(p, ()) else ''}{f}")
    for p, ks in stale.items(): print(f'stale KNOWN_FAILURES entry (fixed? delete it): {p}: {ks}')
    s = r['seconds']
    print(f"time: nbdev_proc_nbs {s['proc_nbs']:.0f} s, nbconvert {s['nbconvert']:.0f} s, "
          f"browser {s['browser']:.0f} s, total {s['total']:.0f} s; {sum(r['weights'].values()):,} bytes of "
          f"HTML (the template alone: {r['template_bytes']:,} bytes a page)")
    bad = len(new) + len(stale)
    print(f'docs: {len(r["failures"]) - len(new)} passed, {bad} failed')
    return 1 if bad else 0


if __name__ == '__main__': sys.exit(main())
