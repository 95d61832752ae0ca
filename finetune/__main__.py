"""`python -m finetune train|preview|eval|chat|export|push|runs`: see finetune/cli.py."""

import sys

from finetune.cli import main

if __name__ == "__main__":
    sys.exit(main())
