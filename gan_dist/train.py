"""`python -m gan_dist.train`: the command line lives in gan_dist/cli/train.py; the training in
gan_dist.fit (api.py)."""
import sys

from gan_dist.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
