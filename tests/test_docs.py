"""The documentation site, built from a copy of the project and browsed in headless Chromium.

`tools/build_docs.py --check` builds the site (quarto when present, else `nbdev_proc_nbs` + smalldocs) and fails on
anything `smalldocs check` reports (broken links included). The site is served on localhost and opened in Debian's
`/usr/bin/chromium`, driven by Playwright from PyPI (never a browser Playwright downloads): every page of the sidebar
loads without console errors or failed requests, has a title, its figures load, its local links resolve, the sidebar
follows the notebook order, and search finds the `DCTN` class. Screenshots of the home page, the DCTN page and the
search results are written to `<repo>/_screenshots/` for a reviewer to look at.
"""
import functools, http.server, json, os, re, shutil, subprocess, sys, threading, time
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from urllib.request import urlopen
from urllib.error import HTTPError
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT/'nbs'
SHOTS = ROOT/'_screenshots'
CHROMIUM = Path('/usr/bin/chromium')
# the flags STACK.md lists for headless Chromium here (Playwright adds --headless and its own user-data-dir)
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']
DCTN_NB = NBS/'05_dctn.ipynb'


def _notebooks(nbs_dir):
    "The notebooks that become pages, in sidebar order (as `nbdev_sidebar`: index first, folders after files)."
    nbs = [p for p in nbs_dir.rglob('*.ipynb') if not any(s.startswith(('_', '.')) for s in p.relative_to(nbs_dir).parts)]
    def key(p):
        r = p.relative_to(nbs_dir)
        return (str(r.parent) if r.parent != Path('.') else '', '00' if r.name.startswith('index.') else r.name)
    return sorted(nbs, key=key)


def _title(nb):
    "A notebook's title as nbdev reads it: front matter `title:` of a raw first cell, else the first `# ` heading."
    for c in json.loads(nb.read_text())['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'raw' and (m := re.search(r'^title:\s*["\']?(.*?)["\']?\s*$', src, re.M)): return m.group(1)
        if c['cell_type'] == 'markdown' and (m := re.match(r'\s*#\s+(.+)', src)): return m.group(1).strip()
    return None


def _copy_project(dest):
    "What the docs build reads: settings, Quarto config, notebooks, the package, the benchmark harness and the build script."
    for f in ('settings.ini', '_quarto.yml'): shutil.copy2(ROOT/f, dest/f)
    ign = shutil.ignore_patterns('__pycache__', '.ipynb_checkpoints')
    for d in ('nbs', 'trl_nb', 'bench'): shutil.copytree(ROOT/d, dest/d, symlinks=True, ignore=ign)
    (dest/'tools').mkdir()
    shutil.copy2(ROOT/'tools'/'build_docs.py', dest/'tools'/'build_docs.py')


def _ensure_chromium():
    "Debian's chromium at /usr/bin/chromium: installed with apt-get when missing; otherwise a failure that says why."
    if CHROMIUM.exists(): return
    apt = shutil.which('apt-get')
    sudo = [] if os.geteuid() == 0 else (['sudo', '-n'] if shutil.which('sudo') else None)
    if apt and sudo is not None:
        env = {**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'}
        inst = sudo + [apt, 'install', '-y', '-qq', 'chromium']
        r = subprocess.run(inst, capture_output=True, text=True, env=env)
        if r.returncode:
            subprocess.run(sudo + [apt, 'update', '-qq'], capture_output=True, env=env)
            r = subprocess.run(inst, capture_output=True, text=True, env=env)
        if CHROMIUM.exists(): return
        why = f'`apt-get install -y chromium` failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}'
    else: why = 'no apt-get, or no root/sudo to run it'
    pytest.fail(f'the docs browser test needs Debian chromium at {CHROMIUM} ({why}). '
                'Install it with `apt-get install -y chromium` (.ci/run does this).', pytrace=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Build the site from a copy of the project (the working tree is not touched); returns that copy's root."
    tmp = tmp_path_factory.mktemp('docs_project')
    _copy_project(tmp)
    start = time.time()
    r = subprocess.run([sys.executable, str(tmp/'tools'/'build_docs.py'), '--check'], cwd=tmp,
                       capture_output=True, text=True)
    print(f'docs build: {time.time()-start:.1f}s')
    assert r.returncode == 0, f'the docs build failed (exit {r.returncode}):\n{r.stderr[-6000:]}\n{r.stdout[-2000:]}'
    out = tmp/'_docs'
    assert (out/'index.html').is_file(), f'no index.html in {out}: {sorted(os.listdir(out))}'
    return tmp


@pytest.fixture(scope='module')
def server(site):
    "Serve the built site over http on localhost (search fetches search.json, which file:// URLs forbid)."
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(site/'_docs')))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/'
    httpd.shutdown(); httpd.server_close()


@pytest.fixture(scope='module')
def browser():
    _ensure_chromium()
    try: from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail('playwright is missing from the venv: `.venv/bin/pip install -c constraints.txt playwright` '
                    '(it is in dev_requirements; never run `playwright install`)', pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class _Visit:
    """A page opened in the browser, with the console errors, page errors and failed requests seen while loading.
    Requests to other hosts (web fonts, KaTeX from a CDN) are not made, as this machine may be offline: they are
    listed in `external`, and only errors from the site itself count."""
    def __init__(self, browser, url):
        base = '{0.scheme}://{0.netloc}/'.format(urlsplit(url))
        self.ctx = browser.new_context(viewport={'width': 1280, 'height': 900})
        self.page, self.errors, self.external = self.ctx.new_page(), [], set()
        local = lambda u: u.startswith(base) or u.startswith('data:')
        def route(r):
            if local(r.request.url): r.continue_()
            else: self.external.add(r.request.url); r.abort()
        self.page.route('**/*', route)
        def console(m):
            if m.type != 'error': return
            src = (m.location or {}).get('url', '')
            if 'Failed to load resource' in m.text and src and not local(src): return  # an external request we stopped
            self.errors.append(f'console: {m.text} ({src})')
        self.page.on('console', console)
        self.page.on('pageerror', lambda e: self.errors.append(f'page error: {e}'))
        self.page.on('requestfailed', lambda r: local(r.url) and self.errors.append(f'request failed: {r.url} ({r.failure})'))
        self.page.on('response', lambda r: r.status >= 400 and self.errors.append(f'HTTP {r.status}: {r.url}'))
        self.page.goto(url, wait_until='load')
        self.page.wait_for_function('Array.from(document.images).every(i => i.complete)', timeout=10_000)
    def close(self): self.ctx.close()


def _sidebar(browser, base):
    "The sidebar's page links on the home page: (text, absolute url), in order."
    v = _Visit(browser, base)
    try:
        links = v.page.eval_on_selector_all('#quarto-sidebar a.sidebar-link[href]',
                                            'els => els.map(a => [a.textContent.trim(), a.href])')
    finally: v.close()
    return [(t, u.split('#')[0]) for t, u in links]


def test_sidebar_follows_notebooks(browser, server, site):
    "One sidebar entry per notebook, in the pipeline order of the notebook names, titled as the notebooks are."
    nbs = _notebooks(site/'nbs')
    got = [t for t, _ in _sidebar(browser, server)]
    want = [re.sub(r'`([^`]*)`', r'\1', _title(nb) or nb.stem) for nb in nbs]  # the sidebar shows titles as plain text
    assert got == want, f'sidebar {got} != notebook titles in order {want} (notebooks: {[str(n.relative_to(site/"nbs")) for n in nbs]})'


def _image_outputs(nb):
    "How many image outputs a notebook shows on its page (cells hidden from the docs left out)."
    n = 0
    for c in json.loads(nb.read_text())['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or re.search(r'^#\|\s*(hide|include:\s*false|output:\s*false)\b', src, re.M): continue
        n += sum(1 for o in c.get('outputs', []) if any(k.startswith('image/') for k in o.get('data', {})))
    return n


def test_every_page_loads(browser, server, site):
    "Every sidebar page: no console errors or failed requests, a title, its figures load, its local links resolve."
    pages = _sidebar(browser, server)
    assert pages, 'the home page has no sidebar links'
    by_title = {(_title(nb) or nb.stem): nb for nb in _notebooks(site/'nbs')}
    problems, checked, external = [], set(), set()
    for text, url in pages:
        v = _Visit(browser, url)
        try:
            p = v.page
            problems += [f'{url}: {e}' for e in v.errors]
            external |= v.external
            h1 = p.eval_on_selector_all('h1', 'els => els.map(e => e.textContent.trim()).filter(Boolean)')
            if not p.title().strip() or not h1: problems.append(f'{url}: no title (document title {p.title()!r}, h1 {h1})')
            imgs = p.eval_on_selector_all('img', 'els => els.map(i => [i.currentSrc.slice(0, 80), i.naturalWidth])')
            problems += [f'{url}: figure does not load: {src}' for src, w in imgs if not w > 0]
            nb = by_title.get(text)
            if nb is not None and _image_outputs(nb) and not imgs:
                problems.append(f'{url}: {nb.name} has {_image_outputs(nb)} figure output(s) but the page shows none')
            hrefs = p.eval_on_selector_all('a[href]', 'els => els.map(a => a.href)')
        finally: v.close()
        for h in hrefs:
            h = h.split('#')[0]
            if not h.startswith(server) or h in checked: continue
            checked.add(h)
            try: urlopen(h).close()
            except HTTPError as e: problems.append(f'{url}: broken link {urlsplit(h).path} (HTTP {e.code})')
    if external: print('requests to other hosts, not made here:', *sorted(external), sep='\n  ')
    assert not problems, '\n'.join(problems)


@pytest.mark.xfail(not DCTN_NB.exists(), reason=f'{DCTN_NB.relative_to(ROOT)} (the DCTN model) does not exist yet',
                   strict=True)
def test_search_finds_dctn(browser, server):
    "Typing `DCTN` in the site search lists the DCTN class's section on its page; screenshots for a reviewer."
    SHOTS.mkdir(exist_ok=True)
    v = _Visit(browser, server)
    try:
        p = v.page
        p.screenshot(path=str(SHOTS/'home.png'))
        box = p.locator('.smalldocs-search input, #quarto-search input, .aa-Input').first
        if not box.is_visible(): p.locator('#quarto-search, .sd-search-toggle').first.click()  # quarto: a search button
        box.fill('DCTN')
        hits = p.locator('a.search-result, .aa-Item a')
        hits.first.wait_for(timeout=10_000)
        hrefs = hits.evaluate_all('els => els.map(a => a.href)')
        p.screenshot(path=str(SHOTS/'search.png'))
        assert v.errors == [], v.errors
    finally: v.close()
    target = [h for h in hrefs if re.search(r'/(05_)?dctn\.html#dctn$', h)]
    assert target, f'search for DCTN lists no link to the DCTN class section (dctn.html#dctn): {hrefs}'
    v = _Visit(browser, target[0])
    try:
        assert v.page.locator('#dctn').count() == 1, 'the DCTN page has no #dctn section'
        tbl = v.page.evaluate("""() => { const t = document.getElementById('dctn').closest('.cell-output, .cell')?.querySelector('table');
                                         return t ? t.innerText : ''; }""")
        assert 'Details' in tbl and 'n_classes' in tbl, f'the DCTN show_doc has no parameter table: {tbl!r}'
        v.page.locator('#dctn').scroll_into_view_if_needed()
        v.page.screenshot(path=str(SHOTS/'dctn.png'))  # the class's show_doc: signature, docstring, parameter table
    finally: v.close()


def test_math_is_rendered(browser, server):
    "Every page with formulas shows them drawn (MathML, no script, no network): no raw `\\(` or `\\[` in the visible text."
    problems, with_math = [], 0
    for _, url in _sidebar(browser, server):
        v = _Visit(browser, url)
        try:
            n = v.page.locator('math').count()
            text = v.page.inner_text('body')
        finally: v.close()
        with_math += n > 0
        raw = re.findall(r'\\[(\[].{0,40}', text)
        if raw: problems.append(f'{url}: raw TeX on the page: {raw[:2]}')
    assert with_math, 'no page shows a formula (the DCTN page has Eq. 3-7)'
    assert not problems, '\n'.join(problems)
