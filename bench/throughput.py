#!/usr/bin/env python
"""Same as ``archlab bench train|generate|all``; kept so the recorded commands still work:

    python bench/throughput.py --mode all --rounds 14 --steps-per-round 1 --compile peer-xt-flash,ours
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from archlab.lab.throughput import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
