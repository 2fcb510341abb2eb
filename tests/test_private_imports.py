"A module of rome_nb uses another module's public names only: no `from .x import _name` across modules."
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / 'rome_nb'

# Modules allowed, for now, to import private names of another module.
KNOWN_PRIVATE_IMPORTS = set()


def _module(path):
    "Dotted name of a file of the package, e.g. 'baselines.ft'."
    return '.'.join(path.relative_to(PKG).with_suffix('').parts)


def _source_module(node, here):
    "The dotted module (inside rome_nb) that an ImportFrom reads from, or None if outside the package."
    if node.level:
        base = here.split('.')[:-node.level] if node.level <= len(here.split('.')) else []
        return '.'.join(base + ([node.module] if node.module else []))
    if node.module and (node.module == 'rome_nb' or node.module.startswith('rome_nb.')):
        return node.module[len('rome_nb.'):] if node.module != 'rome_nb' else ''
    return None


def private_imports():
    "(importing module, source module, name) for every private name imported from another module of rome_nb."
    out = []
    for f in sorted(PKG.rglob('*.py')):
        if f.name == '_modidx.py': continue
        here = _module(f)
        for node in ast.walk(ast.parse(f.read_text(encoding='utf-8'))):
            if not isinstance(node, ast.ImportFrom): continue
            src = _source_module(node, here)
            if src is None or src == here: continue
            out += [(here, src, a.name) for a in node.names if a.name.startswith('_')]
    return out


def test_source_module_resolution():
    imp = lambda s: ast.parse(s).body[0]
    assert _source_module(imp('from .rome import x'), 'memit') == 'rome'
    assert _source_module(imp('from ..rome import x'), 'baselines.ft') == 'rome'
    assert _source_module(imp('from rome_nb.edit_core import x'), 'rome') == 'edit_core'
    assert _source_module(imp('from torch import nn'), 'rome') is None


def test_no_private_names_across_modules():
    found = [x for x in private_imports() if x[0] not in KNOWN_PRIVATE_IMPORTS]
    assert not found, "private names imported across modules (make them public, or move them): " + \
        ', '.join(f"{a} <- {b}.{n}" for a, b, n in found)


def test_known_exceptions_still_needed():
    # an exception that no longer imports anything private should be deleted from the list
    offenders = {a for a, _, _ in private_imports()}
    assert KNOWN_PRIVATE_IMPORTS <= offenders, f"no longer needed: {sorted(KNOWN_PRIVATE_IMPORTS - offenders)}"
