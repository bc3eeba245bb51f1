"""The package works from its built wheel, outside the repository, with no access to nbs/."""
import configparser, os, shutil, subprocess, sys, zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _console_scripts():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    return dict(l.split('=') for l in cfg['DEFAULT']['console_scripts'].split())

def test_wheel_installs_and_runs(tmp_path):
    "Build the wheel, install it into a bare folder, import every module and run `trl_synth` from there."
    src, dist, site, work = tmp_path/'src', tmp_path/'dist', tmp_path/'site', tmp_path/'work'
    work.mkdir()
    # built from a copy: setuptools' `build/` in the checkout keeps modules that were deleted since, and would ship them
    shutil.copytree(ROOT/'trl_nb', src/'trl_nb', ignore=shutil.ignore_patterns('__pycache__'))
    for f in ('setup.py', 'pyproject.toml', 'settings.ini', 'MANIFEST.in', 'README.md', 'LICENSE', 'constraints.txt'):
        if (ROOT/f).exists(): shutil.copy(ROOT/f, src/f)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(dist), str(src)],
                   check=True, capture_output=True)
    whl, = dist.glob('trl_nb-*.whl')
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        eps = z.read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    assert not any(n.startswith('nbs/') for n in names), 'the wheel must not carry notebooks'
    assert not any(n.startswith('bench/') or n == 'trl_nb/bench.py' for n in names), 'the benchmark harness stays beside the package'
    for name, target in _console_scripts().items(): assert f'{name} = {target}' in eps, name
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '-q', '--target', str(site), str(whl)],
                   check=True, capture_output=True)
    mods = sorted(p.stem for p in (site/'trl_nb').glob('*.py') if not p.stem.startswith('_'))
    code = ('import importlib, trl_nb, sys\n'
            f'assert trl_nb.__file__.startswith({str(site)!r}), trl_nb.__file__\n'
            f'for m in {mods!r}: importlib.import_module("trl_nb." + m)\n'
            'from trl_nb.synth import synthesize\n'
            'synthesize("ds", seed=1, n_classes=3, size=48, n_strong=2, n_weak=3, n_val=2)\n'
            'from trl_nb.data import SegData\n'
            'd = SegData("ds"); print(len(d.ids("train_weak")), d.n_classes)\n')
    env = {**os.environ, 'PYTHONPATH': str(site)}
    r = subprocess.run([sys.executable, '-c', code], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ['3', '4']
