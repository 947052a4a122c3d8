"""`segkit evaluate` as a script:

    python scripts/evaluate.py --checkpoint runs/quick/best.pt --data data/quickstart --out report.json
    python scripts/evaluate.py --pred preds/ --gt masks/ --num-classes 3 --out report.json
"""

import sys

from segkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
