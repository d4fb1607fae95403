"""`python -m videopanda.train ...` (what the launchers run under torchrun): the same as `videopanda train ...`."""
import sys

from videopanda.train.cli import main

sys.exit(main())
