"""`python -m gan_dist.sample`: the command line lives in gan_dist/cli/sample.py."""
import sys

from gan_dist.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
