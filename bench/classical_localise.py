"""The classical (ThunderSTORM-like) localiser's command line: `livescope.models.localise.classical`.

``python bench/classical_localise.py stack.tif out.csv --pixel-size 100 --baseline 100 --e-per-adu 0.5``
"""

import sys

from livescope.models.localise.classical import main

if __name__ == "__main__":
    sys.exit(main())
