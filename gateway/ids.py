"""Request and completion ids: unique, not secret.

`secrets`/`uuid4` read the kernel's entropy pool per call, which cost 4 % of a
request in the profile (scripts/bench); ids only need to be unique, so they come
from the process's Mersenne Twister, seeded from os.urandom at import and reseeded
in every worker process (`reseed`), so forked workers never repeat each other."""

from __future__ import annotations

import os
import random

_random = random.Random(os.urandom(32))


def reseed() -> None:
    """Call in a freshly forked worker: it would otherwise share its parent's sequence."""
    _random.seed(os.urandom(32))


def hex_id(bits: int = 128) -> str:
    return f"{_random.getrandbits(bits):0{bits // 4}x}"
