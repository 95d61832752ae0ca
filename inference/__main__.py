"""`python -m inference ...` is `python -m finetune chat ...`, kept for the commands written before the two met.

    python -m inference --adapter runs/demo --compare "What is the first-line treatment of anaphylaxis?"
"""

import sys

from finetune.cli import main

if __name__ == "__main__":
    sys.exit(main(["chat", *sys.argv[1:]]))
