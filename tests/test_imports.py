"Every module imports from plain Python (notebook tests run in IPython, which hides missing imports)."
import importlib, pkgutil, subprocess, sys
import pytest
import rome_nb

MODULES = sorted(m.name for m in pkgutil.iter_modules(rome_nb.__path__) if not m.name.startswith('_'))


def test_found_modules():
    assert {'nethook', 'models', 'quickstart'} <= set(MODULES)


@pytest.mark.parametrize('name', MODULES)
def test_import_fresh_interpreter(name):
    # a fresh interpreter per module: nothing imported by another module or test can hide a missing import
    r = subprocess.run([sys.executable, '-c', f'import rome_nb.{name} as m; [getattr(m, n) for n in getattr(m, "__all__", [])]'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_all_names_defined():
    for name in MODULES:
        m = importlib.import_module(f'rome_nb.{name}')
        for n in getattr(m, '__all__', []): assert hasattr(m, n), f'rome_nb.{name}.{n} in __all__ but not defined'


def test_version():
    assert isinstance(rome_nb.__version__, str) and rome_nb.__version__.count('.') == 2
