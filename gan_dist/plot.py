"""`python -m gan_dist.plot`: an entry point only; the command line is gan_dist/cli/plot.py."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("gan_dist.cli.plot", run_name="__main__", alter_sys=True)
