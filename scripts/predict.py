"""`segkit predict` as a script:

    python scripts/predict.py --checkpoint runs/quick/best.pt --input images/ --output predictions/
"""

import sys

from segkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["predict", *sys.argv[1:]]))
