"""`python -m modelship_testbed.tgi_fake`: the TGI fake, now `modelship_testbed.engine_fake.tgi`
(kept under this name for the benchmarks and tests that start it so)."""

from .engine_fake.core import PrefixCache, render_chat, tokenize  # noqa: F401 (bench/balance_quality.py)
from .engine_fake.tgi import main

if __name__ == "__main__":
    main()
