"""``python -m marlhf``: the ``marlhf`` command line (what ``torchrun ... -m marlhf train``
runs on each rank)."""

import sys

from marlhf.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
