"""Build the documentation site into `_docs/` (what `make docs` runs).

With a real `quarto` on PATH this is nbdev's own route, `nbdev_docs`. Without one (the usual case here: no Quarto
binary can be installed) it does what `nbdev_proc_nbs` does, minus its attempt to download Quarto: the sidebar is
generated from the notebook list (`nbs/sidebar.yml`, pipeline order: index, 00_core, 00_data ... 10_bench, then the
tutorials folder), the notebooks are processed into `_proc/` (show_doc with parameter tables, directives applied,
hidden cells removed), and `smalldocs` renders `_proc/` into a website from the same `_quarto.yml`.

Usage: python tools/build_docs.py [--out DIR] [--engine auto|quarto|smalldocs] [--force] [--check]
"""
import argparse, html, os, re, shutil, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SKIP_TOP = {'_docs', '_site', '.ipynb_checkpoints'}  # never pruned from `_proc/` (output folders, not sources)


def _say(msg): print(f'build_docs: {msg}', file=sys.stderr, flush=True)


def notebooks(nbs):
    "The notebooks that become pages: every `*.ipynb` under `nbs`, except names or folders starting with `_` or `.`."
    return sorted(p for p in nbs.rglob('*.ipynb')
                  if not any(part.startswith(('_', '.')) for part in p.relative_to(nbs).parts))


def write_sidebar(nbs):
    "Write `nbs/sidebar.yml` from the notebook list with nbdev's own generator (numbered names keep pipeline order)."
    import yaml
    from nbdev.config import get_config
    from nbdev.quarto import nbdev_sidebar, IndentDumper
    f = nbs/'sidebar.yml'
    if get_config().custom_sidebar: return f  # settings.ini says the sidebar is written by hand
    getattr(nbdev_sidebar, 'orig', nbdev_sidebar).__wrapped__(path=nbs, force=True)
    sb = yaml.safe_load(f.read_text())
    def title(items):  # a folder's section reads as a heading: `tutorials` -> `Tutorials`
        for it in items:
            if isinstance(it, dict) and 'section' in it:
                it['section'] = str(it['section']).replace('_', ' ').capitalize(); title(it.get('contents', []))
    title(sb['website']['sidebar']['contents'])
    f.write_text(yaml.dump(sb, Dumper=IndentDumper, sort_keys=False))
    return f


def prune_proc(nbs, proc):
    "Remove files from `_proc/` whose source in `nbs/` is gone (a renamed or deleted notebook), so no stale page is built."
    for f in sorted(proc.rglob('*'), reverse=True):
        rel = f.relative_to(proc)
        if rel.parts[0] in SKIP_TOP: continue
        if f.is_dir():
            if not any(f.iterdir()): f.rmdir()
            continue
        src = nbs/rel
        if not (src.exists() or src.with_suffix(src.suffix + '.py').exists() or (nbs/(str(rel) + '.py')).exists()):
            f.unlink()


def _table_renderer():
    "nbdev's show_doc renderer, with a one-line signature and the parameters in a table (Type, Default, Details)."
    import inspect
    from nbdev.showdoc import BasicMarkdownRenderer
    from fastcore.docments import docments

    def nm(o):  # an annotation as the reader wrote it (a notebook's own classes without `__main__.`)
        if o is inspect.Parameter.empty: return ''
        r = o.__name__ if isinstance(o, type) else inspect.formatannotation(o)
        return r.replace('__main__.', '').strip("'")
    def cell(x): return str(x).replace('|', '\\|').replace('\n', '<br>')

    class TableRenderer(BasicMarkdownRenderer):
        "show_doc as a heading, the signature, the docstring and a table of the parameters."
        param_table = True
        def _sig(self):
            if self.sig is None: return ''
            ps = []
            for p in self.sig.parameters.values():
                if p.name == 'self': continue
                pre = '*' if p.kind == p.VAR_POSITIONAL else '**' if p.kind == p.VAR_KEYWORD else ''
                a = '' if p.annotation is p.empty else ':' + nm(p.annotation).replace(' ', '')
                d = '' if p.default is p.empty else '=' + (p.default.__name__ if callable(p.default) and hasattr(p.default, '__name__') else repr(p.default))
                ps.append(pre + p.name + a + d)
            ret = self.sig.return_annotation
            tail = ')' + ('' if ret is inspect.Signature.empty or inspect.isclass(self.sym) else '->' + nm(ret).replace(' ', ''))
            lines, cur, ind = [], f'{self.nm} (', ' ' * (len(self.nm) + 2)
            for i, q in enumerate(ps):
                q += ', ' if i < len(ps) - 1 else ''
                if len(cur) + len(q) > 64 and cur.strip(): lines.append(cur.rstrip()); cur = ind
                cur += q
            lines.append(cur + tail)
            return '\n'.join('>      ' + l for l in lines)
        def _table(self):
            try: dm = docments(self.sym, full=True)
            except Exception: return ''
            names = [p for p in (self.sig.parameters if self.sig is not None else []) if p != 'self' and p in dm]
            rows = [(f'{n}', nm(dm[n]['anno']), '' if dm[n]['default'] is inspect.Parameter.empty else f"`{dm[n]['default']!r}`",
                     dm[n]['docment'] or '') for n in names]
            r = dm.get('return') or {}
            if not inspect.isclass(self.sym) and (r.get('docment') or r.get('anno', inspect.Parameter.empty) is not inspect.Parameter.empty):
                rows.append(('**Returns**', nm(r.get('anno', inspect.Parameter.empty)), '', r.get('docment') or ''))
            if not any(row[3] for row in rows): return ''  # nothing documented: the signature says it all
            out = ['|    | **Type** | **Default** | **Details** |', '| -- | -------- | ----------- | ----------- |']
            return '\n'.join(out + ['| ' + ' | '.join(cell(c) for c in row) + ' |' for row in rows])
        def _repr_markdown_(self):
            doc = BasicMarkdownRenderer._repr_markdown_(self)
            h = f"{'#'*self.title_level} {self.nm}\n\n"
            out = doc[:doc.index(h) + len(h)] + self._sig()
            if self.docs: out += f'\n\n*{self.docs}*'
            tbl = self._table()
            return out + (f'\n\n{tbl}' if tbl else '')
    return TableRenderer


def use_table_renderer():
    "Make show_doc render parameter tables in this process, unless settings.ini names a `renderer` of its own."
    import nbdev.showdoc
    from nbdev.config import get_config
    if get_config().get('renderer') or getattr(nbdev.showdoc.BasicMarkdownRenderer, 'param_table', False): return
    nbdev.showdoc.BasicMarkdownRenderer = _table_renderer()


def _proc_worker(item):
    "Process one notebook as `nbdev_proc_nbs` does (nbdev's own worker), with show_doc rendering parameter tables."
    import nbdev.serve_drv, warnings
    use_table_renderer()
    start = time.time()
    try:
        with warnings.catch_warnings(record=True) as ws:
            nbdev.serve_drv.main(item)
    finally: os.environ.pop('IN_TEST', None)
    for w in ws:  # nbdev's warning, one line each: such cells run whole in the docs build, keep them light
        msg = str(w.message)
        if msg.startswith('Found cells containing imports and other code'):
            first = msg.split('---')[1].strip().splitlines()[0] if msg.count('---') >= 2 else ''
            _say(f'note: {item[0].name}: a cell mixes imports with other code, so the docs build runs all of it: {first!r}')
        elif f'{os.sep}nbdev{os.sep}' in str(w.filename): _say(f'warning: {item[0].name}: {w.category.__name__}: {msg}')
    return time.time() - start


def _why(item, e):
    "One readable report of a notebook that failed in a worker: the notebook, the cell, its source and the cause."
    msg = str(e)
    head = msg.splitlines()[0].rstrip(' :') if msg else type(e).__name__
    tb = getattr(e.__cause__, 'tb', '') or ''  # the worker's traceback, as concurrent.futures passes it back
    inner = tb.split('The above exception was the direct cause')[0].strip().splitlines()
    why = inner[-1].strip() if inner and tb.count('direct cause') else f'{type(e).__name__}'
    code = '\n'.join(msg.splitlines()[1:]).strip('\n')
    return f'{item[0]}: {head}: {why}' + ('\n    the cell:\n      ' + code.replace('\n', '\n      ') if code else '')


def proc(nbs, force=False, n_workers=None):
    """`nbdev_proc_nbs` without its Quarto install: build the module index and the sidebar, process the notebooks
    into `_proc/` (only those changed since the last build, unless `force`), and name every notebook that fails."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    import nbdev.doclinks
    from nbdev.config import get_config
    from nbdev.serve import _proc_file
    from nbdev.doclinks import nbglob
    cfg = get_config()
    cache = cfg.config_path/'_proc'
    nbdev.doclinks._build_modidx()
    write_sidebar(nbs)
    # as nbdev.serve.proc_nbs: every file of nbs/ (plus _quarto.yml), the cache dropped when settings.ini (or nbdev, or this script) changed
    files = nbglob(nbs, func=Path, file_glob='', file_re='')
    for extra in ('_quarto.yml', '_brand.yml'):
        if (nbs/extra).exists(): files.append(nbs/extra)
    import nbdev.serve
    chk_mtime = max(f.stat().st_mtime for f in (cfg.config_file, Path(nbdev.serve.__file__), Path(__file__)))
    if force or (cache.exists() and cache.stat().st_mtime < chk_mtime): shutil.rmtree(cache)
    cache.mkdir(parents=True, exist_ok=True)
    items = [o for o in files.map(_proc_file, mtime=cache.stat().st_mtime, cache=cache, path=nbs) if o]
    if items:
        _say(f'processing {len(items)} notebook(s): ' + ', '.join(str(o[0].relative_to(nbs)) for o in items))
        workers = max(1, min(len(items), n_workers or (1 if (os.cpu_count() or 1) <= 2 else 2)))
        sys.path.insert(0, str(Path(__file__).parent))
        import build_docs  # the worker by its module name: notebooks run in the workers replace `__main__`
        errors = []
        # spawned processes, as nbdev_proc_nbs: each failure is kept and named, not just the first
        with ProcessPoolExecutor(workers, mp_context=mp.get_context('spawn')) as ex:
            futs = [(it, ex.submit(build_docs._proc_worker, it)) for it in items]
            for it, f in futs:
                try: _say(f'  {it[0].relative_to(nbs)}: {f.result():.1f}s')
                except Exception as e: errors.append(_why(it, e))
        if errors:
            for it in items:  # a failed notebook leaves no processed copy, so the next build tries it again
                if any(e.startswith(str(it[0])) for e in errors): it[1].unlink(missing_ok=True)
            raise SystemExit('build_docs: these notebooks fail when processed for the docs '
                             '(import, export and show_doc cells run):\n  ' + '\n  '.join(errors))
    cache.touch()
    prune_proc(nbs, cache)
    return cache


def _site_class():
    "smalldocs' `Site`, reading nbdev's `output-file` front matter as Quarto does (`00_data.ipynb` -> `data.html`)."
    from smalldocs.site import Site

    class NbdevSite(Site):
        def read(self, src):
            page = super().read(src)
            name = page.front.get('output-file')
            if name:
                page.out = src.parent/str(name)
                self.warnings = [w for w in self.warnings if w != f'{src}: output-file is not read by smalldocs']
            return page
    return NbdevSite


def quarto_docs(nbs):
    """`nbdev_docs` itself (Quarto renders; README.md is refreshed from the home page), with this script's sidebar and
    show_doc tables: it runs in this process (`n_workers=0`) so that both apply to the notebooks it processes."""
    import nbdev.quarto
    use_table_renderer()
    class _Sidebar:  # what `nbdev_docs` calls to write sidebar.yml
        orig = nbdev.quarto.nbdev_sidebar
        @staticmethod
        def __wrapped__(path=None, **kwargs): return write_sidebar(Path(path or nbs))
    if not hasattr(nbdev.quarto.nbdev_sidebar, 'orig'): nbdev.quarto.nbdev_sidebar = _Sidebar
    nbdev.quarto.nbdev_docs.__wrapped__(n_workers=0)


def render_smalldocs(proc_dir, out, check=False):
    """Render the processed notebooks with smalldocs into `out`. Return what `smalldocs check` would report: its
    warnings (broken links, options it ignores) and Pandoc-only syntax in Markdown pages; with `check`, fail on any."""
    from smalldocs.config import load
    from smalldocs.check import scan
    site = _site_class()(load(proc_dir), quiet=True)
    tmp = out.parent/f'.{out.name}.tmp'
    shutil.rmtree(tmp, ignore_errors=True)
    site.out = tmp
    n = site.build()
    if out.exists(): shutil.rmtree(out)
    os.replace(tmp, out)
    problems = list(site.warnings) + [f'{pg.src}:{line}: {msg}' for pg in site.pages.values() if pg.src.suffix != '.ipynb'
                                      for line, msg in scan((site.root/pg.src).read_text(encoding='utf-8'))]
    for w in problems: _say(f'warning: {w}')
    _say(f'wrote {n} page(s) to {out}')
    if check and problems: raise SystemExit(f'build_docs: --check: {len(problems)} thing(s) to fix (listed above)')
    return problems


MATH = re.compile(r'<span class="math (inline|display)">\\[(\[](.*?)\\[)\]]</span>', re.S)
MATH_SCRIPTS = re.compile(r'<(?:link|script)\b[^>]*(?:katex|mathjax)[^>]*>(?:\s*</script>)?', re.I)


def offline_math(site):
    """Write the TeX of every page as MathML (latex2mathml, at build time), which browsers draw natively: no script and no
    network, where the renderers load KaTeX or MathJax from a CDN (an offline reader saw raw `\\(...\\)`)."""
    from latex2mathml.converter import convert
    n = 0
    for f in sorted(Path(site).rglob('*.html')):
        s = f.read_text(encoding='utf-8')
        if 'class="math' not in s: continue
        def sub(m):
            nonlocal n
            tex = html.unescape(m.group(2))
            try: ml = convert(tex, display='block' if m.group(1) == 'display' else 'inline')
            except Exception as e:
                _say(f'warning: {f.name}: cannot write {tex!r} as MathML ({type(e).__name__}: {e})'); return m.group(0)
            n += 1
            return f'<span class="math {m.group(1)}">{ml}</span>'
        f.write_text(MATH_SCRIPTS.sub('', MATH.sub(sub, s)), encoding='utf-8')
    _say(f'{n} formula(s) written as MathML')
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', help='output folder (default: doc_path of settings.ini, `_docs`)')
    ap.add_argument('--engine', choices=('auto', 'quarto', 'smalldocs'), default='auto',
                    help='auto: quarto when `quarto` is on PATH, else smalldocs')
    ap.add_argument('--force', action='store_true', help='reprocess every notebook (ignore the `_proc/` cache)')
    ap.add_argument('--workers', type=int, default=None, help='processes that run the notebooks (default: 1 on <= 2 cores, else 2; each imports torch)')
    ap.add_argument('--check', action='store_true',
                    help='fail on anything `smalldocs check` reports: broken links, ignored options, Pandoc-only syntax')
    args = ap.parse_args(argv)

    os.chdir(ROOT)
    # the processed notebooks import the package: make this checkout's `trl_nb` importable, also in the workers
    sys.path.insert(0, str(ROOT))
    os.environ['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    from nbdev.config import get_config
    cfg = get_config()
    nbs, doc_path = Path(cfg.nbs_path), Path(cfg.doc_path)
    out = Path(args.out).resolve() if args.out else doc_path
    if not notebooks(nbs): raise SystemExit(f'build_docs: no notebooks in {nbs}: nothing to document')

    engine = args.engine
    if engine == 'auto': engine = 'quarto' if shutil.which('quarto') else 'smalldocs'
    start = time.time()
    if engine == 'quarto':
        if not shutil.which('quarto'): raise SystemExit('build_docs: --engine quarto, but no `quarto` on PATH')
        quarto_docs(nbs)
        if out != doc_path.resolve():
            if out.exists(): shutil.rmtree(out)
            shutil.move(str(doc_path), str(out))
        if args.check:  # the same `_proc/`, checked as smalldocs renders it (into a scratch folder)
            import tempfile
            with tempfile.TemporaryDirectory() as tmp: render_smalldocs(ROOT/'_proc', Path(tmp)/'site', check=True)
    else:
        cache = proc(nbs, force=args.force, n_workers=args.workers)
        render_smalldocs(cache, out, check=args.check)
    offline_math(out)
    _say(f'{engine}: {out}/index.html in {time.time()-start:.1f}s')
    return out


if __name__ == '__main__': main()
