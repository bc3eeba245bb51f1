"""Move top-level import lines out of test cells into the notebook's first hidden import cell.

The docs build runs every cell that contains an import (to have its names for show_doc), whatever else the
cell holds; a test cell with an import would then run without the cells before it. Usage:
    python tools/hoist_imports.py nbs/NAME.ipynb [...]
"""
import json, re, sys
from pathlib import Path

IMPORT = re.compile(r'^(import \S|from \S+ import )')

def hoist(fn):
    nb = json.loads(Path(fn).read_text())
    cells = nb['cells']
    target = next((c for c in cells if c['cell_type'] == 'code' and '#| hide' in ''.join(c['source'])
                   and 'import' in ''.join(c['source']) and '#| export' not in ''.join(c['source'])), None)
    if target is None: print(f'{fn}: no hidden import cell'); return 0
    moved = []
    for c in cells:
        if c is target or c['cell_type'] != 'code': continue
        src = ''.join(c['source'])
        if re.search(r'^#\|\s*(export|exporti|eval:\s*false)', src, re.M): continue
        lines = src.splitlines()
        imps = [l for l in lines if IMPORT.match(l) and '(' not in l[:l.find('import')]]
        rest = [l for l in lines if l not in imps]
        if not imps or not any(l.strip() and not l.startswith('#') for l in rest): continue
        moved += imps
        c['source'] = '\n'.join(rest).splitlines(keepends=True)
    if moved:
        have = ''.join(target['source']).rstrip('\n').splitlines()
        target['source'] = '\n'.join(have + [m for m in dict.fromkeys(moved) if m not in have]).splitlines(keepends=True)
        Path(fn).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
    print(f'{fn}: moved {len(moved)} import line(s)')
    return len(moved)

if __name__ == '__main__':
    for fn in sys.argv[1:]: hoist(fn)
