#!/usr/bin/env python3
"""Write README.md from nbs/index.ipynb without Quarto (which `nbdev_readme` needs and this machine lacks).

Markdown cells are copied, code cells become ```python blocks, their text outputs plain ``` blocks; the
first cell's title and `> description` become the README's heading. `--check` exits 1 if README.md differs.
The deploy workflow, where Quarto exists, renders the docs site from the same notebook.
"""
import json, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]


def render(nb_path):
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    out = []
    for c in nb['cells']:
        src = ''.join(c['source']).rstrip()
        if not src or src.startswith('#| hide'): continue
        if c['cell_type'] == 'markdown':
            out.append(src)
        elif c['cell_type'] == 'code':
            code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
            if code: out.append(f'```python\n{code}\n```')
            for o in c.get('outputs', []):
                txt = ''.join(o.get('text', '')) if o['output_type'] == 'stream' else ''.join(o.get('data', {}).get('text/plain', ''))
                if txt.strip(): out.append('```\n' + txt.rstrip() + '\n```')
    return '<!-- generated from nbs/index.ipynb by .ci/make_readme.py: edit the notebook, not this file -->\n\n' + '\n\n'.join(out) + '\n'


if __name__ == '__main__':
    text = render(root / 'nbs' / 'index.ipynb')
    readme = root / 'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text(encoding='utf-8') != text:
            print('FAIL: README.md is out of date with nbs/index.ipynb; run .ci/make_readme.py and commit', file=sys.stderr)
            sys.exit(1)
        print('ok: README.md matches nbs/index.ipynb')
    else:
        readme.write_text(text, encoding='utf-8')
