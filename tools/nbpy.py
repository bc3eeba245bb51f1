"""Convert between notebooks and percent-format drafts (authoring aid; the notebook is the source).

    python tools/nbpy.py to-nb  draft.py  nbs/05_dctn.ipynb   # cells split on '# %%' / '# %% [markdown]'
    python tools/nbpy.py to-py  nbs/05_dctn.ipynb  draft.py
"""
import sys, json, re
from pathlib import Path

def to_nb(src, dest):
    text = Path(src).read_text()
    parts = re.split(r'^# %%(.*)$', text, flags=re.M)
    cells = []
    for i in range(1, len(parts), 2):
        tag, body = parts[i].strip(), parts[i+1].strip('\n')
        if tag == '[markdown]':
            lines = [l[2:] if l.startswith('# ') else l.lstrip('#') for l in body.splitlines()]
            cells.append(dict(cell_type='markdown', metadata={}, source='\n'.join(lines)))
        else:
            cells.append(dict(cell_type='code', execution_count=None, metadata={}, outputs=[], source=body))
    nb = dict(cells=cells, metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')),
              nbformat=4, nbformat_minor=5)
    for c in nb['cells']: c['source'] = c['source'].splitlines(keepends=True)
    Path(dest).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def to_py(src, dest):
    nb = json.loads(Path(src).read_text())
    out = []
    for c in nb['cells']:
        s = ''.join(c['source'])
        if c['cell_type'] == 'markdown': out.append('# %% [markdown]\n' + '\n'.join('# ' + l if l else '#' for l in s.splitlines()))
        else: out.append('# %%\n' + s)
    Path(dest).write_text('\n\n'.join(out) + '\n')

if __name__ == '__main__':
    cmd, src, dest = sys.argv[1:4]
    {'to-nb': to_nb, 'to-py': to_py}[cmd](src, dest)
