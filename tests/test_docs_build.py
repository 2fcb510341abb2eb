"""The docs build (`nbdev_proc_nbs`, the first step of `nbdev_docs`) leaves the tracked files as they are: `nbs/nbdev.yml`
is what nbdev writes from settings.ini (`doc_path`), and the sidebar is the tracked `nbs/sidebar.yml`
(`custom_sidebar = True`), which lists every notebook."""
import os, shutil, stat, subprocess, sys
from pathlib import Path
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# what `nbdev_proc_nbs` does to the configuration before it processes the notebooks (nbdev.quarto._pre_docs)
PREP = "from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar; refresh_quarto_yml(); nbdev_sidebar.__wrapped__()"


def _files(d): return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob('*')) if p.is_file()}


def docs_prep_changes(tmp, root=ROOT):
    "Files under nbs/ that the docs build's preparation would add, change or remove, run on a copy of `root`."
    tmp = Path(tmp)
    shutil.copy(root / 'settings.ini', tmp / 'settings.ini')
    shutil.copytree(root / 'nbs', tmp / 'nbs', ignore=shutil.ignore_patterns('.ipynb_checkpoints', '_proc'))
    before = _files(tmp / 'nbs')
    subprocess.run([sys.executable, '-c', PREP], cwd=tmp, check=True, capture_output=True, text=True)
    after = _files(tmp / 'nbs')
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def test_docs_build_leaves_tracked_files_alone(tmp_path):
    assert docs_prep_changes(tmp_path) == [], "the docs build rewrites these files: commit what it writes"


def test_sidebar_lists_every_notebook():
    contents = yaml.safe_load((ROOT / 'nbs' / 'sidebar.yml').read_text())['website']['sidebar']['contents']
    nbs = sorted(p.name for p in (ROOT / 'nbs').glob('*.ipynb') if p.name != 'index.ipynb')
    assert contents == ['index.ipynb'] + nbs, "nbs/sidebar.yml must list index.ipynb, then every notebook in order"


def test_detects_a_stale_docs_config(tmp_path):
    src = tmp_path / 'src'
    shutil.copytree(ROOT / 'nbs', src / 'nbs', ignore=shutil.ignore_patterns('*.ipynb', '_proc'))
    shutil.copy(ROOT / 'settings.ini', src / 'settings.ini')
    (src / 'nbs' / 'nbdev.yml').write_text((src / 'nbs' / 'nbdev.yml').read_text().replace('output-dir: docs', 'output-dir: _docs'))
    (tmp_path / 'a').mkdir()
    assert docs_prep_changes(tmp_path / 'a', src) == ['nbdev.yml']
    s = (src / 'settings.ini').read_text().replace('custom_sidebar = True', 'custom_sidebar = False')
    (src / 'settings.ini').write_text(s)
    (src / 'nbs' / 'sidebar.yml').unlink()
    (tmp_path / 'b').mkdir()
    assert 'sidebar.yml' in docs_prep_changes(tmp_path / 'b', src)


def proc_nbs_status(root, tmp_path):
    """`git status` of a clone of `root` after the real `nbdev_proc_nbs` (a stand-in `quarto` on PATH: without one
    nbdev installs Quarto and runs `pip install -e .` with whatever `pip` is first on PATH)."""
    clone = tmp_path / 'clone'
    subprocess.run(['git', 'clone', '-q', str(root), str(clone)], check=True)
    fake = tmp_path / 'bin'
    fake.mkdir()
    for name, code in (('quarto', 0), ('pip', 1)):  # and a `pip` that refuses, should nbdev still try to install
        (fake / name).write_text(f'#!/bin/sh\nexit {code}\n')
        (fake / name).chmod(stat.S_IRWXU)
    env = dict(os.environ, PATH=f"{fake}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([str(Path(sys.executable).parent / 'nbdev_proc_nbs'), '--n_workers', '1'], cwd=clone, env=env,
                   check=True, capture_output=True, text=True, timeout=900)
    return subprocess.run(['git', 'status', '--porcelain'], cwd=clone, capture_output=True, text=True).stdout


def test_nbdev_proc_nbs_leaves_the_tree_clean(tmp_path):
    "The docs build's first step on a clone of this checkout's last commit leaves `git status` clean."
    if not (ROOT / '.git').exists(): pytest.skip('not a git checkout')
    status = proc_nbs_status(ROOT, tmp_path)
    assert status == '', f"nbdev_proc_nbs changed tracked files or left untracked ones: {status}"
