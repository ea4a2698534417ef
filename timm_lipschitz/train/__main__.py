"""``python -m timm_lipschitz.train --recipe ...`` and ``accelerate launch -m timm_lipschitz.train --recipe ...``: the
same as ``timm-lipschitz train`` (exit code 2 for a mistake, 75 when stopped by a signal: resume to continue)."""
import sys

from ..cli import main

if __name__ == '__main__':
    sys.exit(main(['train', *sys.argv[1:]]))
