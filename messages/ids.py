"""Random ids that name things and are not secrets: event ids, trace and span ids.

Python's generator, seeded from the OS once per process (and again in a forked child, so
two processes never draw the same ids), instead of os.urandom for each id: uuid4() and
secrets cost a system call every time - about 40% of the command actor's busy time in an
import of a million projects went to uuid4() (one id per event). 128 random bits make a
collision as unlikely as uuid4's 122. Never use these for tokens or keys (`secrets` is for
those).
"""

from __future__ import annotations

import os
import random

_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)


def random_hex(bits: int = 128) -> str:
    """`bits` random bits as lower-case hex, `bits // 4` digits, never all zeros."""
    return f"{_random.getrandbits(bits) or 1:0{bits // 4}x}"
