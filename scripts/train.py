"""`segkit train` as a script, and the torchrun entry point:

    python scripts/train.py configs/quickstart.yaml --out runs/quick
    torchrun --nproc_per_node 2 scripts/train.py configs/quickstart.yaml --out runs/ddp
"""

import sys

from segkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
