"""Write README.md from nbs/index.ipynb (markdown cells as they are, code cells as python blocks, text outputs
as plain blocks; cells marked `#| hide` left out). Stands in for `nbdev_readme`, which needs quarto.

    python tools/build_readme.py          # write README.md
    python tools/build_readme.py --check  # exit 1 if README.md is not what index.ipynb gives
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _directives(src): return {m.group(1) for m in re.finditer(r'^#\|\s*([\w-]+)', src, re.M)}

def readme_text(nb_path=ROOT/'nbs'/'index.ipynb'):
    nb = json.loads(Path(nb_path).read_text())
    out = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown': out.append(src.strip().replace("](images/", "](nbs/images/")); continue
        d = _directives(src)
        if 'hide' in d or 'hide_input' in d and 'hide_output' in d: continue
        code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
        if code and 'hide_input' not in d: out.append(f'```python\n{code}\n```')
        if 'hide_output' in d: continue
        for o in c.get('outputs', []):
            text = o.get('text') or o.get('data', {}).get('text/markdown') or o.get('data', {}).get('text/plain')
            if not text: continue
            text = ''.join(text).rstrip()
            out.append(text if 'text/markdown' in o.get('data', {}) else f'```\n{text}\n```')
    return '<!-- generated from nbs/index.ipynb by tools/build_readme.py: edit the notebook, not this file -->\n\n' + '\n\n'.join(out) + '\n'

if __name__ == '__main__':
    text = readme_text()
    if '--check' in sys.argv: sys.exit(0 if (ROOT/'README.md').read_text() == text else 1)
    (ROOT/'README.md').write_text(text)
