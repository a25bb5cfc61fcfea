"""`python -m gan_dist.train`: an entry point only; the command line is gan_dist/cli/train.py."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("gan_dist.cli.train", run_name="__main__", alter_sys=True)
