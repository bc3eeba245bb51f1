__version__ = "0.1.0"

import os as _os, warnings as _warnings
# A dependency scripts a function at import time; torch's deprecation notice about it says nothing to our users.
_warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
# PyTorch's CPU allocator backs large tensors with transparent huge pages when this is set (read once, at torch's first
# allocation, so it takes effect when trl_nb is imported before torch). On the CPU the full-resolution activations of
# DCTN otherwise cost millions of page faults per training step: the benchmark notebook measures a DCTN_2 step 20% faster.
# Set THP_MEM_ALLOC_ENABLE=0 to turn it off.
_os.environ.setdefault('THP_MEM_ALLOC_ENABLE', '1')
