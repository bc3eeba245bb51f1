"""Execute notebooks in place so their saved outputs (figures, tables) are current.

Cells marked `#| eval: false` never run; `#| cuda` cells run only where CUDA is present; `#| slow`
cells do run (their outputs are what the docs show). Usage: python tools/run_nbs.py [nbs/NAME.ipynb ...]
"""
import re, sys, time, subprocess
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory

def _directives(src):
    return {m.group(1).strip(): m.group(2).strip() for m in re.finditer(r'^#\|\s*([\w-]+:?)\s*(.*)$', src, re.M)}

def _skip(cuda):
    def f(cell):
        if cell.cell_type != 'code': return True
        d = _directives(cell.source)
        if d.get('eval:', '').lower() == 'false': return True
        return 'cuda' in d and not cuda
    return f

def run_nb(fn):
    import torch
    fn = Path(fn).resolve()
    nb = read_nb(fn)
    start = time.time()
    k = CaptureShell(fn)
    with working_directory(fn.parent): k.run_all(nb, exc_stop=True, preproc=_skip(torch.cuda.is_available()))
    write_nb(nb, fn)
    print(f'{fn.name}: {time.time()-start:.0f}s')

if __name__ == '__main__':
    root = Path(__file__).resolve().parent.parent
    fns = sys.argv[1:] or sorted(str(p) for p in (root/'nbs').glob('*.ipynb') if not p.name.startswith('_'))
    for fn in fns: run_nb(fn)
    subprocess.run([str(Path(sys.executable).parent/'nbdev_clean')], cwd=root, check=True)
