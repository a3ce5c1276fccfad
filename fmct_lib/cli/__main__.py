"""``python -m fmct_lib.cli`` (and ``torchrun -m fmct_lib.cli pretrain ...``) is ``fmct``."""
import sys

from . import main

sys.exit(main())
