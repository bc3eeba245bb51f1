"""Speed and memory of every stage of TRL, each against a reference measured in the same run.

The harness that `nbs/10_bench.ipynb` explains and whose saved results it shows. It lives beside the package, not in
it: it imports `trl_nb` for what it measures. From the repository root:

    python bench/trl_bench.py --json bench/results/spec_cpu.json   # everything at the paper's sizes (`make bench`)
    python bench/trl_bench.py --quick                              # tiny sizes, a minute or two
    python bench/trl_bench.py --only dctn,cross --bs 2             # figures 1 and 2, batch 2
"""
import ctypes, ctypes.util, gc, json, os, platform, re, shutil, statistics, subprocess, sys, tempfile, threading, time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
import numpy as np, torch, torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count, sdpa_backward_flop_count
from trl_nb.dctn import dctn, CrossTransformerBlock, class_label_filter
from trl_nb.core import DataError, run_cli, atomic_write, autocast, precision
from trl_nb.data import SegData, save_heatmap, load_heatmap, save_mask
from trl_nb.synth import synth_fixture

HERE = Path(__file__).resolve().parent  # the folder of this file: child processes import the harness from it

def machine_info()->dict:
    "CPU model, cores, torch threads, load average, GPU name when CUDA is present"
    cpu = platform.processor() or platform.machine()
    try: cpu = re.search(r'model name\s*:\s*(.*)', Path('/proc/cpuinfo').read_text()).group(1).strip()
    except (OSError, AttributeError): pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    info = dict(cpu=cpu, cores=cores, torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version(), load_avg=[round(l, 2) for l in os.getloadavg()],
                precision=precision())  # the arithmetic of `trl_nb`'s own loops here (the references run in float32)
    if torch.cuda.is_available(): info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info

def _sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize()

def time_interleaved(fns:dict, # name -> function of no arguments
                     reps:int=3, # timed calls of each
                     warmup:int=1, # untimed calls of each first
                     device='cpu'): # synchronised around each call when CUDA
    "Seconds per call of each function, calls interleaved: name -> dict(best, median, runs)"
    for _ in range(warmup):
        for f in fns.values(): f(); _sync(device)
    runs = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            _sync(device); t = time.perf_counter(); f(); _sync(device)
            runs[k].append(time.perf_counter() - t)
    return {k: dict(best=min(v), median=statistics.median(v), runs=v) for k, v in runs.items()}

_aten = torch.ops.aten
cpu_sdpa_flops = {
    _aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *a, **kw: sdpa_backward_flop_count(g, q, k, v)}

def count_flops(f)->tuple:
    "FLOPs of one call of `f`: (total, {module name: FLOPs}), attention included on the CPU"
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flops) as fc: f()
    return fc.get_total_flops(), {k: sum(v.values()) for k, v in fc.get_flop_counts().items()}

def module_flops(counts:dict, # {module name: FLOPs} from `count_flops`
                 prefix:str): # e.g. 'DCTN.cross'
    "FLOPs spent in the module `prefix`, also when it is a container that is never called itself"
    if prefix in counts: return counts[prefix]
    keys = [k for k in counts if k.startswith(prefix + '.')]
    return sum(counts[k] for k in keys if not any(k.startswith(o + '.') for o in keys))

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3

def pin_malloc(threshold:int=1 << 16)->bool:
    "Make glibc serve blocks above `threshold` bytes by mmap and return them on free, so RSS follows live memory"
    try: libc = ctypes.CDLL(ctypes.util.find_library('c'))
    except OSError: return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))

def release_memory():
    "Collect garbage and return the free heap to the OS (glibc `malloc_trim`), before a memory-hungry child starts"
    gc.collect()
    try: ctypes.CDLL(ctypes.util.find_library('c')).malloc_trim(0)
    except (OSError, AttributeError): pass

def _vm(key, pid='self'):
    "A `Vm*` field of /proc/<pid>/status, in bytes"
    return int(re.search(rf'{key}:\s+(\d+) kB', Path(f'/proc/{pid}/status').read_text()).group(1)) * 1024

def _child_env():
    "This process's environment, with its import path and this folder, for a child Python that imports the harness"
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE)] + [p for p in sys.path if p]))

def rss_peak(f)->int:
    "Peak growth of this process's resident set while `f()` runs, in bytes (Linux)"
    Path('/proc/self/clear_refs').write_text('5')  # reset VmHWM to the current RSS
    base = _vm('VmRSS')
    f()
    return _vm('VmHWM') - base

bench_builders = {}

def builder(f):
    "Register `f` as a benchmark builder under its name"
    bench_builders[f.__name__] = f
    return f

def _device(device=None): return torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))

def _precision(device, amp:bool):
    "`trl_nb.core.autocast` when `amp` (mixed precision on CUDA, a no-op elsewhere), full precision otherwise"
    return autocast(device) if amp else nullcontext()

def _child_main():
    "Memory child: read jobs from stdin, print their peak resident-set growth (bytes) as one JSON line"
    spec = json.loads(sys.stdin.read())
    try: Path('/proc/self/oom_score_adj').write_text('1000')  # out of memory: this child goes first, not the parent or others
    except OSError: pass
    torch.set_num_threads(spec['threads'])
    pinned, out = pin_malloc(), []
    for job in spec['jobs']:
        b = bench_builders[job['kind']](**job['kw'])
        b.step()  # warm-up: oneDNN primitives, lazy buffers, first-touch pages
        out.append(rss_peak(b.step))
        del b
    print(json.dumps(dict(pinned=pinned, peaks=out)))

def measure_memory(jobs:list, # dicts(kind=<a `bench_builders` name>, kw=dict(...))
                   device=None): # default: CUDA when present
    "Peak memory (bytes) of one `step` of each job, and how it was measured"
    dev = _device(device)
    if dev.type == 'cuda':
        peaks = []
        for job in jobs:
            b = bench_builders[job['kind']](**job['kw'], device=dev)
            b.step(); torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
            b.step(); torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated() - base)
            del b
        return dict(peaks=peaks, method='torch.cuda.max_memory_allocated over the second step, minus memory allocated before it')
    release_memory()
    r = subprocess.run([sys.executable, '-c', 'from trl_bench import _child_main; _child_main()'], env=_child_env(),
                       input=json.dumps(dict(threads=torch.get_num_threads(), jobs=jobs)), capture_output=True, text=True)
    if r.returncode == -9: raise RuntimeError('memory child killed (SIGKILL: out of memory?); try a smaller batch')
    if r.returncode: raise RuntimeError(f'memory child failed ({r.returncode}): {r.stderr[-2000:]}')
    res = json.loads(r.stdout.strip().splitlines()[-1])
    how = 'peak RSS growth over the second step in a child process' + (' with mmap-backed malloc' if res['pinned'] else
          ' (mallopt unavailable: freed memory may stay cached, so this is a lower bound)')
    return dict(peaks=res['peaks'], method=how)

@builder
def dctn_step(variant:str='dctn1', # a `trl_nb.dctn.dctn_variants` name
              cfg:str='svt_s', # a `trl_nb.dctn.dctn_cfgs` name ('svt_s' is Table 1)
              bs:int=8, # batch size
              size:int=320, # crop side
              n_classes:int=21, # classes, background included (VOC: 21)
              seed:int=0, # weights and inputs
              device=None, # default: CUDA when present
              amp:bool=False): # autocast (CUDA only)
    "DCTN training step on random images, heat maps and masks"
    dev = _device(device)
    torch.manual_seed(seed)
    m = dctn(variant, cfg, n_classes).to(dev).train()
    x, h = torch.randn(bs, 3, size, size, device=dev), torch.rand(bs, n_classes, size, size, device=dev)
    y = torch.randint(0, n_classes, (bs, size, size), device=dev)
    def step():
        m.zero_grad(set_to_none=True)
        with _precision(dev, amp): loss = F.cross_entropy(m(x, h), y)
        loss.backward()
    def forward():
        with torch.no_grad(), _precision(dev, amp): m(x, h)
    return SimpleNamespace(model=m, step=step, forward=forward)

@builder
def timm_step(name:str='twins_svt_small', # a timm model name
              bs:int=8, size:int=320, seed:int=0, device=None, amp:bool=False):
    "Training step of a timm classifier on random images and labels"
    import timm
    dev = _device(device)
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False).to(dev).train()
    x, y = torch.randn(bs, 3, size, size, device=dev), torch.randint(0, m.num_classes, (bs,), device=dev)
    def step():
        m.zero_grad(set_to_none=True)
        with _precision(dev, amp): loss = F.cross_entropy(m(x), y)
        loss.backward()
    def forward():
        with torch.no_grad(), _precision(dev, amp): m(x)
    return SimpleNamespace(model=m, step=step, forward=forward)

dctn_parts = dict(warmup='DCTN.warm', low_level='DCTN.low', image_stream='DCTN.streams.image',
                  heat_stream='DCTN.streams.heat', cross_blocks='DCTN.cross', head='DCTN.head')

def flop_shares(b)->dict:
    "Share of the forward FLOPs of each part of a DCTN benchmark `b` (`dctn_parts`; 'other' is the rest)"
    total, counts = count_flops(b.forward)
    shares = {k: module_flops(counts, p) / total for k, p in dctn_parts.items()}
    shares['other'] = 1 - sum(shares.values())
    return {k: round(v, 4) for k, v in shares.items()}

def bench_dctn(variants=('dctn1', 'dctn2'), # DCTN variants to measure
               cfg:str='svt_s', # DCTN architecture
               bs:int=8, size:int=320, # batch and crop side (Sec. 4.1: 8 and 320)
               n_classes:int=21, # classes (VOC: 21)
               reference:str='twins_svt_small', # timm model measured beside it
               reps:int=3, # timed steps of each model
               memory:bool=True, # also measure peak memory
               device=None):
    "Figure 1: FLOPs, time, achieved FLOP/s and peak memory of DCTN's training step and timm's"
    dev, variants = _device(device), list(variants)
    kw = dict(bs=bs, size=size, device=dev)
    benches = {v: dctn_step(v, cfg, n_classes=n_classes, **kw) for v in variants}
    benches[reference] = timm_step(reference, **kw)
    flops = {k: count_flops(b.step)[0] for k, b in benches.items()}  # doubles as the warm-up
    times = time_interleaved({k: b.step for k, b in benches.items()}, reps, warmup=0, device=dev)
    models = {k: dict(flops=flops[k], seconds=times[k]['best'], seconds_median=times[k]['median'],
                      flop_per_s=flops[k] / times[k]['best'], params=sum(p.numel() for p in benches[k].model.parameters()))
              for k in benches}
    shares = {v: flop_shares(benches[v]) for v in variants}
    del benches
    res = dict(config=dict(variants=variants, cfg=cfg, bs=bs, size=size, n_classes=n_classes, reference=reference, reps=reps),
               models=models, shares=shares,
               ratio={v: models[v]['flop_per_s'] / models[reference]['flop_per_s'] for v in variants}, target=0.85)
    if memory:
        jobs = [dict(kind='dctn_step', kw=dict(variant=v, cfg=cfg, n_classes=n_classes, bs=bs, size=size)) for v in variants]
        try: mem = measure_memory(jobs + [dict(kind='timm_step', kw=dict(name=reference, bs=bs, size=size))], dev)
        except RuntimeError as e: res['memory_error'] = str(e)
        else:
            for k, p in zip(models, mem['peaks']): models[k]['peak_bytes'] = p
            res['memory_method'] = mem['method']
    return res

def _kv_tokens(attn, x, size):
    "Key/value source tokens of a timm `GlobalSubSampleAttn`: `x` itself, or its `sr_ratio` reduction"
    if attn.sr is None: return x
    B, N, C = x.shape
    return attn.norm(attn.sr(x.transpose(1, 2).reshape(B, C, *size)).flatten(2).transpose(1, 2))

def _explicit_attend(attn, q_src, k_src, v_src):
    "softmax(q k^T / sqrt(d)) v through `attn`'s projections, the attention weights materialised"
    B, N, C = q_src.shape
    nh, hd = attn.num_heads, C // attn.num_heads
    wk, wv = attn.kv.weight.chunk(2)
    bk, bv = attn.kv.bias.chunk(2)
    q = attn.q(q_src).view(B, N, nh, hd).transpose(1, 2)
    k = F.linear(k_src, wk, bk).view(B, -1, nh, hd).transpose(1, 2)
    v = F.linear(v_src, wv, bv).view(B, -1, nh, hd).transpose(1, 2)
    p = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
    return attn.proj((p @ v).transpose(1, 2).reshape(B, N, C))

def explicit_cross_forward(blk:CrossTransformerBlock, # a cross block (cross attention, no padding)
                           x, h, # tokens of the image and heat-map streams, (B, N, C)
                           size): # token grid (H, W)
    "Reference forward of `blk` with the attention written out"
    bx, bh = blk.x, blk.h
    nx, nh = bx.norm1(x), bh.norm1(h)
    rx, rh = _kv_tokens(bx.attn, nx, size), _kv_tokens(bh.attn, nh, size)
    x = x + bx.drop_path1(_explicit_attend(bx.attn, nx, rx, rh))
    h = h + bh.drop_path1(_explicit_attend(bh.attn, nh, rh, rx))
    return x + bx.drop_path2(bx.mlp(bx.norm2(x))), h + bh.drop_path2(bh.mlp(bh.norm2(h)))

@builder
def cross_step(path:str='sdpa', # 'sdpa' (the block's forward) or 'explicit' (`explicit_cross_forward`)
               bs:int=2, # batch size
               size:int=320, # crop side: the block sees (size/stride)^2 tokens
               dim:int=64, heads:int=2, # stage-1 channels and heads (Table 1)
               stride:int=4, # stage-1 stride
               sr_ratio:int=1, # spatial reduction of keys and values
               seed:int=0, device=None, amp:bool=False):
    "Forward and backward of one cross block on random tokens"
    if path not in ('sdpa', 'explicit'): raise ValueError(f"cross_step: path={path!r}, expected 'sdpa' or 'explicit'")
    dev = _device(device)
    torch.manual_seed(seed)
    blk = CrossTransformerBlock(dim, heads, sr_ratio=sr_ratio).to(dev).train()
    g = (size // stride, size // stride)
    x, h = torch.randn(bs, g[0] * g[1], dim, device=dev), torch.randn(bs, g[0] * g[1], dim, device=dev)
    fwd = (lambda: blk(x, h, g)) if path == 'sdpa' else (lambda: explicit_cross_forward(blk, x, h, g))
    def step():
        blk.zero_grad(set_to_none=True)
        with _precision(dev, amp): a, b = fwd()
        (a.float().square().mean() + b.float().square().mean()).backward()
    def forward():
        with torch.no_grad(), _precision(dev, amp): fwd()
    return SimpleNamespace(model=blk, step=step, forward=forward)

def bench_cross(bs:int=2, size:int=320, # batch and crop side
                reps:int=3, memory:bool=True, device=None):
    "Figure 2: time and peak memory of the stage-1 cross block (`sr_ratio=1`), fused attention against explicit"
    dev = _device(device)
    kw = dict(bs=bs, size=size, device=dev)
    benches = {p: cross_step(p, **kw) for p in ('sdpa', 'explicit')}
    flops = {k: count_flops(b.step)[0] for k, b in benches.items()}
    times = time_interleaved({k: b.step for k, b in benches.items()}, reps, warmup=0, device=dev)
    del benches
    n = (size // 4) ** 2
    res = dict(config=dict(bs=bs, size=size, tokens=n, dim=64, heads=2, sr_ratio=1, reps=reps),
               paths={k: dict(flops=flops[k], seconds=times[k]['best'], seconds_median=times[k]['median']) for k in times},
               attn_matrix_bytes=bs * 2 * n * n * 4, target_memory_ratio=4.)
    res['time_ratio'] = res['paths']['explicit']['seconds'] / res['paths']['sdpa']['seconds']
    if memory:
        try: mem = measure_memory([dict(kind='cross_step', kw=dict(path=p, bs=bs, size=size)) for p in ('sdpa', 'explicit')], dev)
        except RuntimeError as e: res['memory_error'] = str(e)
        else:
            for k, p in zip(('sdpa', 'explicit'), mem['peaks']): res['paths'][k]['peak_bytes'] = p
            res['memory_ratio'], res['memory_method'] = mem['peaks'][1] / mem['peaks'][0], mem['method']
    return res

def torchcam_heatmaps(model, # a `trl_nb.cam.CAMNet`
                      x:torch.Tensor, # normalised images (B, 3, H, W)
                      labels:torch.Tensor, # (B, n_classes) image-level labels, column 0 = background
                      scales:tuple=(0.5, 1.0, 1.5, 2.0), flip:bool=True):
    "Reference `h0`: torchcam's CAM, one image, scale, flip and class at a time"
    from torchcam.methods import CAM
    model.eval()
    B, _, H, W = x.shape
    out = x.new_zeros(B, model.n_classes, H, W)
    with CAM(model, target_layer='backbone', fc_layer='classifier', input_shape=tuple(x.shape[1:])) as ext:
        for b in range(B):
            classes = [int(c) for c in torch.as_tensor(labels[b]).nonzero()[:, 0] if c > 0]
            for s in scales:
                xs = x[b:b + 1] if s == 1 else F.interpolate(x[b:b + 1], size=(round(H * s), round(W * s)), mode='bilinear',
                                                              align_corners=False)
                for f in ((False, True) if flip else (False,)):
                    with torch.no_grad(): scores = model(xs.flip(-1) if f else xs)
                    for c in classes:
                        m = F.relu(ext(c - 1, scores, normalized=False)[0])  # torchcam's CAM does not ReLU by default
                        m = F.interpolate(m[None], size=(H, W), mode='bilinear', align_corners=False)[0, 0]
                        out[b, c] += m.flip(-1) if f else m
    mx = out.amax((2, 3), keepdim=True)
    return torch.where(mx > 0, out / mx.clamp(min=torch.finfo(out.dtype).tiny), 0.)

def _cam_inputs(n, size, n_classes, seed):
    "Random normalised images and labels with one to three foreground classes each"
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, n_classes, dtype=torch.bool)
    labels[:, 0] = True
    for i in range(n): labels[i, 1 + torch.randperm(n_classes - 1, generator=g)[:1 + i % 3]] = True
    return x, labels

def bench_cam(arch:str='resnet50', # CAM backbone (the paper configuration of `trl_run`)
              n_images:int=8, # images extracted by each method
              bs:int=8, # our batch size
              size:int=320, # image side
              scales:tuple=(0.5, 1.0, 1.5, 2.0), flip:bool=True, # Sec. 4.1's multi-scale + flip
              n_classes:int=21, reps:int=1, device=None, seed:int=0,
              one_pass:bool=True): # also time ours with each scale's whole batch in one forward pass (the GPU setting)
    "Figure 3: images/s of batched CAM extraction (`cam_heatmaps`) against torchcam's CAM per image"
    from trl_nb.cam import CAMNet, cam_heatmaps
    dev = _device(device)
    torch.manual_seed(seed)
    model = CAMNet(n_classes, arch).to(dev).eval()
    x, labels = _cam_inputs(n_images, size, n_classes, seed)
    x, labels = x.to(dev), labels.to(dev)
    ours = lambda px=None: [cam_heatmaps(model, x[i:i + bs], labels[i:i + bs], scales, flip, px) for i in range(0, n_images, bs)]
    fns = dict(ours=ours, torchcam=lambda: torchcam_heatmaps(model, x, labels, scales, flip))
    if one_pass: fns['ours_one_pass'] = lambda: ours(2**62)
    flops = dict(ours=count_flops(lambda: cam_heatmaps(model, x[:1], labels[:1], scales, flip))[0],  # also the warm-up
                 torchcam=count_flops(lambda: torchcam_heatmaps(model, x[:1], labels[:1], scales, flip))[0])
    flops['ours_one_pass'] = flops['ours']
    t = time_interleaved(fns, reps, warmup=0, device=dev)
    res = dict(config=dict(arch=arch, n_images=n_images, bs=bs, size=size, scales=list(scales), flip=flip, reps=reps,
                           precision=precision(dev)),  # ours under `autocast`; torchcam in float32
               methods={k: dict(seconds=v['best'], seconds_median=v['median'], images_per_s=n_images / v['best'],
                                flops_per_image=flops[k], flop_per_s=flops[k] * n_images / v['best']) for k, v in t.items()},
               target=3.)
    res['ratio'] = res['methods']['ours']['images_per_s'] / res['methods']['torchcam']['images_per_s']
    return res

def pseudo_label_data(root, # folder to create
                      n:int, # weak images
                      size:int=320, # image side
                      n_classes:int=21, # classes, background included (at most 21: `trl_nb.synth.SHAPES` has 20 shapes)
                      seed:int=0)->SegData:
    "`n` weak images drawn by `synth_fixture`, each with a heat map in `<root>/heatmaps` (for timing, not learning)"
    ds = synth_fixture(root, n_strong=0, n_weak=n, n_val=0, size=size, n_classes=n_classes - 1, seed=seed)
    for i in ds.ids('train_weak'):
        m = torch.from_numpy(ds.eval_mask(i).astype(np.int64))
        m[m == 255] = 0  # the void band counts as background here
        h = F.one_hot(m, n_classes).permute(2, 0, 1).float()[None]
        h = F.interpolate(F.avg_pool2d(h, 16), size=(size, size), mode='bilinear', align_corners=False)[0]  # a blurred mask
        h[0] = 0  # CAM heat maps have no background channel
        h[torch.from_numpy(~ds.labels(i))] = 0
        save_heatmap(h / h.amax((1, 2), keepdim=True).clamp(min=1e-6), Path(root)/'heatmaps'/f'{i}.npz')
    return ds

def pseudo_label_pass(model, # a refinement network (DCTN)
                      data, # the `SegData`
                      ids:list, # images to label
                      heatmaps, # their input heat maps (folder of <id>.npz)
                      out_dir, # folder of the <id>.png pseudo labels
                      bs:int=8, device=None, num_workers:int=0):
    "DCTN inference, softmax, CLF, argmax and palette PNG for each of `ids`: the pseudo-label hot path"
    from trl_nb.refine import predict_heatmaps
    out = Path(out_dir); out.mkdir(parents=True, exist_ok=True)
    for i, p in predict_heatmaps(model, data, ids, heatmaps, bs, device, num_workers, bar=False):
        keep = torch.from_numpy(data.labels(i))[None]
        save_mask(class_label_filter(p[None], keep)[0].argmax(0).byte().numpy(), out/f'{i}.png')

def bench_pseudo(n:int=8, # the smaller number of images
                 factor:int=10, # the larger is `factor * n`
                 variant:str='dctn2', # round-2 network (the one that writes the pseudo labels)
                 cfg:str='svt_s', size:int=320, bs:int=8, n_classes:int=21,
                 device=None, num_workers:int=0, seed:int=0):
    "Figure 4: images/s of the pseudo-label path at `n` and `factor * n` images, and the cost ratio per image"
    dev = _device(device)
    torch.manual_seed(seed)
    model = dctn(variant, cfg, n_classes).eval()
    res = dict(config=dict(n=n, factor=factor, variant=variant, cfg=cfg, size=size, bs=bs, num_workers=num_workers), runs={})
    with tempfile.TemporaryDirectory() as d:
        ds = pseudo_label_data(Path(d)/'data', factor * n, size, n_classes, seed)
        ids, heat = ds.ids('train_weak'), Path(d)/'data'/'heatmaps'
        pseudo_label_pass(model, ds, ids[:min(bs, n)], heat, Path(d)/'warmup', bs, dev, num_workers)
        for k in (n, factor * n):
            t = time.perf_counter()
            pseudo_label_pass(model, ds, ids[:k], heat, Path(d)/f'out{k}', bs, dev, num_workers)
            _sync(dev)
            s = time.perf_counter() - t
            res['runs'][str(k)] = dict(images=k, seconds=s, images_per_s=k / s)
        h = load_heatmap(heat/f'{ids[0]}.npz', n_classes)
        t = time.perf_counter()
        save_heatmap(h, Path(d)/'h.npz'); load_heatmap(Path(d)/'h.npz', n_classes)
        res['heatmap_file_seconds'] = time.perf_counter() - t  # one h'_k written and read back, as the rounds do
    a, b = res['runs'][str(n)], res['runs'][str(factor * n)]
    res['cost_ratio'] = (b['seconds'] / b['images']) / (a['seconds'] / a['images'])  # 1: exactly linear
    res['target'] = 1.15
    return res

def _descendants(pid:int)->list:
    "Pids of the living descendants of `pid` (Linux /proc)"
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for t in Path(f'/proc/{p}/task').glob('*/children'):
            try: kids = [int(c) for c in t.read_text().split()]
            except OSError: continue
            out += kids; todo += kids
    return out

def tree_rss(pid:int)->tuple:
    "Resident memory of `pid` and all its descendants, and the largest peak (VmHWM) among them, in bytes"
    total = hwm = 0
    for p in [pid] + _descendants(pid):
        try: total, hwm = total + _vm('VmRSS', p), max(hwm, _vm('VmHWM', p))
        except (OSError, AttributeError): pass  # exited (or a zombie) between listing and reading
    return total, hwm

def profile_command(cmd:list, # the command and its arguments
                    stage_re:str=r'^(\w+): running', # an output line matching this starts a stage named by its group 1
                    interval:float=0.2, # seconds between memory samples
                    timeout:float=None, # kill the command after this many seconds
                    env:dict=None, cwd=None):
    "Run `cmd`; its wall time, output, and peak resident memory of its process tree overall and per stage"
    env = dict(_child_env() if env is None else env, PYTHONUNBUFFERED='1')
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    lines, marks = [], [('start', 0.)]
    def read():
        for l in p.stdout:
            lines.append(l)
            m = re.match(stage_re, l)
            if m: marks.append((m.group(1), time.perf_counter() - t0))
    reader = threading.Thread(target=read, daemon=True); reader.start()
    samples, status, hwm = [], None, 0
    while status is None:
        pid, st, _ = os.wait4(p.pid, os.WNOHANG)
        if pid: status = os.waitstatus_to_exitcode(st); break
        if timeout is not None and time.perf_counter() - t0 > timeout:
            for q in [p.pid] + _descendants(p.pid):
                try: os.kill(q, 9)
                except OSError: pass
        rss, h = tree_rss(p.pid)
        samples.append((time.perf_counter() - t0, rss)); hwm = max(hwm, h)
        time.sleep(interval)
    p.returncode = status
    wall = time.perf_counter() - t0
    reader.join(5)
    stages = {}
    for k, (name, start) in enumerate(marks):
        end = marks[k + 1][1] if k + 1 < len(marks) else wall
        stages[name] = dict(wall=end - start, peak_rss=max([r for t, r in samples if start <= t < end], default=0))
    return dict(cmd=[str(c) for c in cmd], returncode=status, wall=wall, peak_rss=max([r for _, r in samples], default=0),
                max_process_rss=hwm, stages=stages, output=''.join(lines), samples=len(samples))

def bench_run(out=None, # output folder of the run (default: a temporary folder, deleted after)
              quick:bool=False, # `trl_run --quick` instead of the default configuration
              timeout:float=None, # seconds before the run is killed
              extra:tuple=()): # more `trl_run` arguments
    "Figure 5: `trl_run` on the embedded data, wall time and peak resident memory of each stage"
    with tempfile.TemporaryDirectory() as d:
        out = Path(out or Path(d)/'run')
        exe = shutil.which('trl_run', path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')]))
        cmd = [exe, '--out', str(out), '--fresh', '--quiet',
               *(['--quick'] if quick else []), *extra]
        r = profile_command(cmd, timeout=timeout)
        if r['returncode']: raise RuntimeError(f"trl_run failed ({r['returncode']}):\n{r['output'][-3000:]}")
        rep = json.loads((out/'report.json').read_text())
    return dict(config=dict(quick=quick, name=rep['config']['name'], n_images=rep['n_images'], extra=list(extra)),
                wall=r['wall'], peak_rss=r['peak_rss'], max_process_rss=r['max_process_rss'], seconds=rep['seconds'],
                stages={k: v for k, v in r['stages'].items()}, targets=dict(wall=600., peak_rss=6 * 2**30))

_alloc_child = """
import json, resource, sys, time, torch
from trl_bench import dctn_step
kw, reps = json.loads(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
b = dctn_step(**kw, device='cpu')
b.step()
f0, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, []
for _ in range(reps):
    s = time.perf_counter(); b.step(); t.append(time.perf_counter() - s)
print(json.dumps(dict(seconds=t, faults_per_step=(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / reps)))
"""

def bench_allocator(variant:str='dctn2', cfg:str='svt_s', bs:int=8, size:int=320, reps:int=3, rounds:int=2):
    "Figure 6 (CPU): DCTN step time and page faults with PyTorch's huge-page allocation off and on, in fresh processes"
    kw = dict(variant=variant, cfg=cfg, bs=bs, size=size)
    runs = {'off': [], 'on': []}
    for _ in range(rounds):  # alternate the two settings, so both see the same load
        for k, v in (('off', '0'), ('on', '1')):
            r = subprocess.run([sys.executable, '-c', _alloc_child, json.dumps(kw), str(reps), str(torch.get_num_threads())],
                               env=dict(_child_env(), THP_MEM_ALLOC_ENABLE=v), capture_output=True, text=True)
            if r.returncode: raise RuntimeError(f'allocator child failed ({r.returncode}): {r.stderr[-2000:]}')
            runs[k].append(json.loads(r.stdout.strip().splitlines()[-1]))
    modes = {k: dict(seconds=min(s for r in v for s in r['seconds']),
                     seconds_median=statistics.median(s for r in v for s in r['seconds']),
                     faults_per_step=statistics.median(r['faults_per_step'] for r in v)) for k, v in runs.items()}
    return dict(config=dict(kw, reps=reps, rounds=rounds), modes=modes, speedup=modes['off']['seconds'] / modes['on']['seconds'])

gpu_peak_tflops = {'H200': 989., 'H100': 989., 'A100': 312., 'L40S': 362., 'L4': 121., 'A10': 125., 'RTX 4090': 165.,
                   'RTX 3090': 71., 'V100': 125., 'T4': 65.}  # dense bf16 (fp16 for V100, T4) tensor-core peaks

def peak_tflops(name:str): # a GPU name, as torch.cuda.get_device_name gives it
    "Dense half-precision peak of a GPU from `gpu_peak_tflops`, None when unknown"
    return next((v for k, v in gpu_peak_tflops.items() if k.lower() in name.lower()), None)

def bench_amp(variant:str='dctn1', cfg:str='svt_s', bs:int=8, size:int=320, reps:int=5,
              peak:float=None, # the GPU's peak TFLOP/s (default: `peak_tflops` of its name)
              memory:bool=True, device=None):
    "CUDA only: DCTN step time and memory in fp32 and under autocast, and MFU of the autocast step"
    dev = _device(device)
    if dev.type != 'cuda': return dict(skipped='no CUDA device: mixed precision and MFU are measured on GPUs only')
    kw = dict(variant=variant, cfg=cfg, bs=bs, size=size)
    benches = dict(fp32=dctn_step(**kw, device=dev), amp=dctn_step(**kw, device=dev, amp=True))
    flops = count_flops(benches['fp32'].step)[0]
    t = time_interleaved({k: b.step for k, b in benches.items()}, reps, warmup=2, device=dev)
    del benches
    peak = peak or peak_tflops(torch.cuda.get_device_name(dev))
    res = dict(config=dict(kw, reps=reps, peak_tflops=peak), flops=flops,
               modes={k: dict(seconds=v['best'], seconds_median=v['median'], flop_per_s=flops / v['best']) for k, v in t.items()})
    res['speedup'] = t['fp32']['best'] / t['amp']['best']
    res['mfu'] = flops / t['amp']['best'] / (peak * 1e12) if peak else None
    if memory:
        mem = measure_memory([dict(kind='dctn_step', kw=dict(kw, amp=a)) for a in (False, True)], dev)  # in-process on CUDA
        for k, p in zip(('fp32', 'amp'), mem['peaks']): res['modes'][k]['peak_bytes'] = p
    return res

bench_presets = dict(
    spec=dict(dctn=dict(variants=('dctn1', 'dctn2'), cfg='svt_s', bs=8, size=320, reps=5),
              cross=dict(bs=2, size=320, reps=3),
              cam=dict(arch='resnet50', n_images=8, bs=8, size=320),
              pseudo=dict(n=8, factor=10, cfg='svt_s', size=320, bs=8),
              alloc=dict(variant='dctn2', cfg='svt_s', bs=8, size=320, reps=2, rounds=1),
              run=dict(quick=False),
              amp=dict(variant='dctn1', cfg='svt_s', bs=8, size=320, reps=5)),
    quick=dict(dctn=dict(variants=('dctn1',), cfg='small', bs=1, size=80, reps=1),
               cross=dict(bs=1, size=80, reps=1),
               cam=dict(arch='resnet18', n_images=2, bs=2, size=64, scales=(0.5, 1.0), n_classes=4),
               pseudo=dict(n=1, factor=3, cfg='small', size=80, bs=1, n_classes=4),
               alloc=dict(cfg='small', bs=1, size=80, reps=1, rounds=1),
               run=dict(quick=True),
               amp=dict(cfg='small', bs=2, size=160, reps=3)))

bench_fns = dict(dctn=bench_dctn, cross=bench_cross, cam=bench_cam, pseudo=bench_pseudo, alloc=bench_allocator, run=bench_run,
                 amp=bench_amp)

def _row(figure, measure, ours, ref, ratio, target, higher=True, unit=''):
    ok = None if target is None or ratio is None else (ratio >= target if higher else ratio <= target)
    return dict(figure=figure, measure=measure, ours=ours, reference=ref, ratio=ratio, target=target,
                target_is=('>=' if higher else '<=') if target is not None else None, meets=ok, unit=unit)

def summarise(results:dict)->list:
    "One row per figure: our number, the reference's, their ratio, the target and whether it is met"
    rows = []
    if 'dctn' in results:
        r = results['dctn']; ref = r['config']['reference']
        for v in r['config']['variants']:
            rows.append(_row(1, f'{v} vs {ref}: achieved GFLOP/s', r['models'][v]['flop_per_s'] / 1e9,
                             r['models'][ref]['flop_per_s'] / 1e9, r['ratio'][v], r['target'], unit='GFLOP/s'))
    if 'cross' in results:
        r, p = results['cross'], results['cross']['paths']
        if 'memory_ratio' in r:
            rows.append(_row(2, 'cross block peak memory: explicit / SDPA', p['sdpa']['peak_bytes'] / 2**20,
                             p['explicit']['peak_bytes'] / 2**20, r['memory_ratio'], r['target_memory_ratio'], unit='MiB'))
        rows.append(_row(2, 'cross block step time: explicit / SDPA', p['sdpa']['seconds'], p['explicit']['seconds'],
                         r['time_ratio'], None, unit='s'))
    if 'cam' in results:
        r = results['cam']
        rows.append(_row(3, 'CAM extraction images/s: batched / torchcam', r['methods']['ours']['images_per_s'],
                         r['methods']['torchcam']['images_per_s'], r['ratio'], r['target'], unit='img/s'))
        if 'ours_one_pass' in r['methods']:
            m = r['methods']
            rows.append(_row(3, 'CAM extraction images/s: default passes / whole batch in one pass', m['ours']['images_per_s'],
                             m['ours_one_pass']['images_per_s'], m['ours']['images_per_s'] / m['ours_one_pass']['images_per_s'],
                             None, unit='img/s'))
    if 'pseudo' in results:
        r = results['pseudo']; n, f = r['config']['n'], r['config']['factor']
        rows.append(_row(4, f'pseudo labels, cost per image at {f * n} / at {n} images', r['runs'][str(f * n)]['images_per_s'],
                         r['runs'][str(n)]['images_per_s'], r['cost_ratio'], r['target'], higher=False, unit='img/s'))
    if 'alloc' in results:
        r = results['alloc']; m = r['modes']
        rows.append(_row(6, f"{r['config']['variant']} CPU step time: huge pages off / on", m['on']['seconds'], m['off']['seconds'],
                         r['speedup'], None, unit='s'))
        rows.append(_row(6, 'minor page faults per step: off / on', m['on']['faults_per_step'], m['off']['faults_per_step'],
                         m['off']['faults_per_step'] / max(m['on']['faults_per_step'], 1), None))
    if 'run' in results:
        r = results['run']
        rows.append(_row(5, 'trl_run wall time / 10 min', r['wall'], r['targets']['wall'], r['wall'] / r['targets']['wall'],
                         1., higher=False, unit='s'))
        rows.append(_row(5, 'trl_run peak RSS / 6 GiB', r['peak_rss'] / 2**30, r['targets']['peak_rss'] / 2**30,
                         r['peak_rss'] / r['targets']['peak_rss'], 1., higher=False, unit='GiB'))
    if 'amp' in results and 'skipped' not in results['amp']:
        r = results['amp']
        rows.append(_row('GPU', 'DCTN step time: fp32 / autocast', r['modes']['amp']['seconds'], r['modes']['fp32']['seconds'],
                         r['speedup'], None, unit='s'))
        if r['mfu'] is not None: rows.append(_row('GPU', 'DCTN step MFU (autocast)', r['mfu'], None, None, None))
    return rows

def _fmt(v):
    if v is None: return '-'
    if isinstance(v, bool): return 'yes' if v else 'NO'
    if isinstance(v, float): return f'{v:.3g}'
    return str(v)

def _grid(header, rows):
    "A plain-text table"
    cells = [[_fmt(c) for c in r] for r in [header] + rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ['  '.join(c.ljust(w[i]) for i, c in enumerate(r)) for r in cells]
    return '\n'.join([lines[0], '  '.join('-' * x for x in w)] + lines[1:])

def bench_table(res:dict)->str:
    "A readable report of `run_bench`'s result: the machine, the figures, and the details of figures 1 and 5"
    m = res['machine']
    out = [f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads"
           + (f", GPU {m['gpu']}" if 'gpu' in m else ', no GPU') + f"; load average {m['load_avg']}"]
    out.append(_grid(['fig', 'measure', 'ours', 'reference', 'ratio', 'target', 'met'],
                     [[r['figure'], r['measure'] + (f" [{r['unit']}]" if r['unit'] else ''), r['ours'], r['reference'], r['ratio'],
                       None if r['target'] is None else f"{r['target_is']} {r['target']:g}", r['meets']] for r in res['rows']]))
    r = res['results']
    if 'dctn' in r:
        d = r['dctn']; c = d['config']
        out.append(f"\nFigure 1, training step, batch {c['bs']} at {c['size']}x{c['size']} (DCTN '{c['cfg']}'):")
        out.append(_grid(['model', 'params (M)', 'GFLOP', 's (best)', 's (median)', 'GFLOP/s', 'peak MiB'],
                         [[k, v['params'] / 1e6, v['flops'] / 1e9, v['seconds'], v['seconds_median'], v['flop_per_s'] / 1e9,
                           v.get('peak_bytes', 0) / 2**20 or None] for k, v in d['models'].items()]))
        out.append('forward FLOP shares: ' + '; '.join(f'{v}: ' + ', '.join(f'{k} {s:.1%}' for k, s in sh.items())
                                                      for v, sh in d['shares'].items()))
    if 'run' in r:
        out.append(f"\nFigure 5, trl_run ({r['run']['config']['name']} configuration) per stage:")
        out.append(_grid(['stage', 'wall s', 'report s', 'peak RSS MiB'],
                         [[k, s['wall'], r['run']['seconds'].get(k), s['peak_rss'] / 2**20] for k, s in r['run']['stages'].items()]))
    if 'amp' in r and 'skipped' in r['amp']: out.append(f"\nGPU figures: {r['amp']['skipped']}")
    for k, v in r.items():
        if 'memory_error' in v: out.append(f"\nFigure {k}: peak memory not measured: {v['memory_error']}")
    for k in ('dctn', 'cross'):
        if k in r and 'memory_method' in r[k]: out.append(f"\nCPU peak memory: {r[k]['memory_method']}"); break
    return '\n'.join(out)

def run_bench(which=('dctn', 'cross', 'cam', 'pseudo', 'alloc', 'run', 'amp'), # benchmarks to run, from `bench_fns`
              preset:str='spec', # a key of `bench_presets`
              overrides:dict=None, # {benchmark: {argument: value}} replacing the preset's entries
              memory:bool=True, # peak-memory measurements (figures 1 and 2)
              json_path=None): # write the result so far to this file after each benchmark
    "Run the benchmarks: machine, per-benchmark results, and the summary rows"
    if preset not in bench_presets: raise ValueError(f'run_bench: unknown preset {preset!r}, expected one of {list(bench_presets)}')
    bad = [w for w in which if w not in bench_fns]
    if bad: raise ValueError(f'run_bench: unknown benchmarks {bad}, expected some of {list(bench_fns)}')
    res = dict(machine=machine_info(), preset=preset, results={})
    for w in which:
        kw = dict(bench_presets[preset][w], **(overrides or {}).get(w, {}))
        if w in ('dctn', 'cross', 'amp'): kw['memory'] = memory
        t = time.perf_counter()
        res['results'][w] = bench_fns[w](**kw)
        res['results'][w]['bench_seconds'] = time.perf_counter() - t
        res['rows'] = summarise(res['results'])
        if json_path is not None:
            with atomic_write(json_path, 'w') as f: f.write(json.dumps(res, default=str) + '\n')
    return res

def trl_bench(only:str='dctn,cross,cam,pseudo,alloc,run,amp', # comma-separated benchmarks: dctn, cross, cam, pseudo, alloc, run, amp
              quick:bool=False, # tiny sizes (the 'quick' preset)
              bs:int=None, # batch size of figure 1 (and of the GPU figures)
              size:int=None, # crop side of figures 1, 2, 4 (and of the GPU figures)
              reps:int=None, # timed repetitions of figures 1 and 2
              cross_bs:int=None, # batch size of figure 2
              cam_images:int=None, # images of figure 3
              pseudo_n:int=None, # N of figure 4 (10 N images in its second run)
              no_memory:bool=False, # skip the peak-memory measurements
              json:str=None): # also write the JSON result to this file (updated after each benchmark)
    "Benchmark DCTN, the cross block, CAM extraction, pseudo labels and trl_run against references; print a table and JSON"
    import json as _json  # the argument `json` hides the module
    which = [w.strip() for w in only.split(',') if w.strip()]
    bad = [w for w in which if w not in bench_fns]
    if bad: raise DataError(f'--only: unknown benchmarks {bad}, expected some of {list(bench_fns)}')
    o = {w: {} for w in bench_fns}
    for w, k, v in (('dctn', 'bs', bs), ('amp', 'bs', bs), ('dctn', 'size', size), ('cross', 'size', size), ('pseudo', 'size', size),
                    ('amp', 'size', size), ('dctn', 'reps', reps), ('cross', 'reps', reps), ('cross', 'bs', cross_bs),
                    ('cam', 'n_images', cam_images), ('pseudo', 'n', pseudo_n)):
        if v is not None: o[w][k] = v
    res = run_bench(which, 'quick' if quick else 'spec', o, memory=not no_memory, json_path=json)
    print(bench_table(res))
    print(_json.dumps(res, default=str))
    return res

def plot_bench(res:dict, # `run_bench`'s result
               ax=None):
    "Horizontal bars of each targeted figure over its target (>= 1: met)"
    import matplotlib.pyplot as plt
    rows = [r for r in res['rows'] if r['target'] is not None and r['ratio']]
    if ax is None: _, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.2))
    score = [r['ratio'] / r['target'] if r['target_is'] == '>=' else r['target'] / r['ratio'] for r in rows]
    y = np.arange(len(rows))[::-1]
    ax.barh(y, score, color=['tab:green' if r['meets'] else 'tab:red' for r in rows])
    ax.axvline(1, color='k', lw=1)
    ax.set_yticks(y, [f"{r['figure']}. {r['measure']}" for r in rows], fontsize=8)
    for yi, s_, r in zip(y, score, rows): ax.text(s_, yi, f"  {r['ratio']:.3g} ({r['target_is']} {r['target']:g})", va='center', fontsize=8)
    ax.set_xscale('log'); ax.set_xlabel('figure / target (log scale; right of the line: target met)')
    m = res['machine']
    ax.set_title(f"trl_bench ({res['preset']}) on {m['cpu']}, {m['torch_threads']} threads" + (f", {m['gpu']}" if 'gpu' in m else ''), fontsize=9)
    return ax


if __name__ == '__main__': run_cli(trl_bench)  # one line and exit status 2 for a bad option
