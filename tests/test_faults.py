"""Fault injection on `trl_run --quick`: kills at several moments, then reruns; `--fresh` and changed settings."""
import json, os, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}

def trl_run(*args, **kw):
    return subprocess.run([str(BIN/'trl_run'), '--quick', '--quiet', *map(str, args)], capture_output=True, text=True, env=ENV, **kw)

def outputs(out):
    "Bytes of every file a finished run must reproduce exactly (reports hold timings, so they are left out)."
    keep = ('pseudo_labels', 'predictions', 'heatmaps', 'baselines')
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(Path(out).rglob('*'))
            if p.is_file() and p.relative_to(out).parts[0] in keep}

@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp('faults')/'ref'
    r = trl_run('--out', out)
    assert r.returncode == 0, r.stderr[-2000:]
    return out

@pytest.mark.parametrize('delay', [3., 8., 14.])
def test_kill_and_resume(reference, tmp_path, delay):
    "SIGKILL after `delay` seconds, rerun: the outputs are byte for byte those of an uninterrupted run."
    out = tmp_path/'run'
    p = subprocess.Popen([str(BIN/'trl_run'), '--quick', '--quiet', '--out', str(out)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=ENV)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL); p.wait()
    r = trl_run('--out', out)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = outputs(reference), outputs(out)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert not list(out.rglob('.*.tmp'))

def test_other_seed_refused(reference):
    "A finished folder rerun with another seed stops with one line; the report is not rewritten."
    before = (reference/'report.json').read_bytes()
    r = trl_run('--out', reference, '--seed', '1')
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert 'seed: 0 -> 1' in r.stderr
    assert (reference/'report.json').read_bytes() == before

def test_other_precision_refused(reference):
    "A folder trained in one precision is not resumed in another (bfloat16 and float32 stages never mix)."
    before = (reference/'report.json').read_bytes()
    was = json.loads((reference/'progress'/'config.json').read_text())['precision']
    other = 'fp32' if was != 'fp32' else 'bf16'
    r = trl_run('--out', reference, '--precision', other)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"precision: '{was}' -> '{other}'" in r.stderr, r.stderr
    assert (reference/'report.json').read_bytes() == before

def test_fresh_keeps_what_runs_did_not_make(reference, tmp_path):
    "`--fresh` never deletes a folder with the user's files, nor a data set inside --out."
    mine = tmp_path/'mine'; mine.mkdir(); (mine/'thesis.txt').write_text('years of work')
    r = trl_run('--fresh', '--out', mine)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (mine/'thesis.txt').exists()
    r = trl_run('--fresh', '--data', tmp_path/'nothing', '--out', mine)
    assert r.returncode == 2 and (mine/'thesis.txt').exists()
    run = tmp_path/'run'; shutil.copytree(reference, run)
    r = trl_run('--fresh', '--data', run/'data', '--out', run)
    assert r.returncode == 2 and 'would delete the data set' in r.stderr, r.stderr
    assert (run/'data'/'classes.txt').exists()

LONGER_SEG = ('--set', 'seg.epochs=6', '--set', 'seg.steps=48')  # segmenter fits long enough to be killed in

def test_resume_mid_fit(tmp_path):
    "Killed while a segmenter trains, a rerun resumes after its last finished epoch and ends with the same outputs."
    ref = tmp_path/'ref'
    r = subprocess.run([str(BIN/'trl_run'), '--quick', '--out', str(ref), *LONGER_SEG], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    log = r.stdout + r.stderr  # what `trl_run --quick > log 2>&1` writes: no progress bars, one line per epoch
    assert len(log.encode()) < 20_000, len(log.encode())
    assert '\r' not in log and 'seg_trl: epoch 6/6' in log, log[-2000:]
    out = tmp_path/'run'
    p = subprocess.Popen([str(BIN/'trl_run'), '--quick', '--quiet', '--out', str(out), *LONGER_SEG],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    partial, t = out/'checkpoints'/'seg_trl.pth.partial', time.time()
    while not partial.exists() and p.poll() is None and time.time() - t < 600: time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    assert partial.exists(), 'the run ended before the segmenter saved an epoch'
    r = trl_run('--out', out, *LONGER_SEG)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'seg_trl.pth.partial: resuming after epoch' in r.stdout, r.stdout[-2000:]
    a, b = outputs(ref), outputs(out)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert not partial.exists()
