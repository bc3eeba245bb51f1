__version__ = "0.1.0"

import warnings as _warnings
# A dependency scripts a function at import time; torch's deprecation notice about it says nothing to our users.
_warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated', category=FutureWarning)
