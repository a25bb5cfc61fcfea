"""`python -m gan_dist.bench`: an entry point only; the command line is gan_dist/cli/bench.py."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("gan_dist.cli.bench", run_name="__main__", alter_sys=True)
