"""Runs every notebook as nbdev_test does, one pytest test each, plus the packaging checks."""
import os, shutil, subprocess, sys, filecmp
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb')
             if not p.name.startswith('_') and '.ipynb_checkpoints' not in p.parts)
BIN = Path(sys.executable).parent

def _flags():
    "Test flags from settings.ini that stay skipped, unless forced through TRL_TEST_FLAGS."
    from nbdev.config import get_config
    forced = os.environ.get('TRL_TEST_FLAGS', '').split()
    return [f for f in get_config(path=ROOT).tst_flags.split() if f not in forced], forced

@pytest.mark.parametrize('nb', NBS, ids=lambda p: str(p.relative_to(ROOT/'nbs')))
def test_notebook(nb, monkeypatch):
    "The notebook runs top to bottom (cells flagged slow/cuda skipped unless forced)."
    from nbdev.test import test_nb
    skip, force = _flags()
    monkeypatch.chdir(nb.parent)
    ok, secs = test_nb(nb, skip_flags=skip, force_flags=force, do_print=False, showerr=True)
    assert ok, f'{nb.name} failed (see the traceback above)'

def _copy_project(dest):
    for f in ('settings.ini', 'setup.py', '_quarto.yml'): shutil.copy(ROOT/f, dest/f)
    for d in ('nbs', 'trl_nb'): shutil.copytree(ROOT/d, dest/d, symlinks=True,
                                                ignore=shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints'))

def _tree_diff(a, b, pattern):
    fa = {p.relative_to(a) for p in a.rglob(pattern)}
    fb = {p.relative_to(b) for p in b.rglob(pattern)}
    changed = sorted(str(p) for p in fa & fb if (a/p).read_bytes() != (b/p).read_bytes())
    return sorted(map(str, fa ^ fb)) + changed

def test_library_in_sync_with_notebooks(tmp_path):
    "`nbdev_export` on a copy of the project leaves the library byte-identical."
    _copy_project(tmp_path)
    subprocess.run([str(BIN/'nbdev_export')], cwd=tmp_path, check=True, capture_output=True)
    diff = _tree_diff(ROOT/'trl_nb', tmp_path/'trl_nb', '*.py')
    assert not diff, f'run nbdev_export and commit: these modules differ from their notebooks: {diff}'

def test_notebooks_are_clean(tmp_path):
    "`nbdev_clean` on a copy of the notebooks changes nothing."
    _copy_project(tmp_path)
    subprocess.run([str(BIN/'nbdev_clean')], cwd=tmp_path, check=True, capture_output=True)
    diff = _tree_diff(ROOT/'nbs', tmp_path/'nbs', '*.ipynb')
    assert not diff, f'run nbdev_clean and commit: these notebooks are not clean: {diff}'

def test_readme_generated_from_index():
    "README.md is what `python tools/build_readme.py` writes from nbs/index.ipynb."
    sys.path.insert(0, str(ROOT/'tools'))
    from build_readme import readme_text
    assert (ROOT/'README.md').read_text() == readme_text(), 'run `python tools/build_readme.py` and commit README.md'
