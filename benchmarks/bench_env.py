"""os.environ settings that hold for one block of a benchmark and are restored after it (A/Bs of a runtime setting
such as QCOMP_PDL or QCOMP_ATTN_SPLIT inside one process)."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def environment(env: dict):
    """os.environ with `env` set inside the block, restored after it (a variable unset before is unset again)."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
