"""`python -m gan_dist.digits_classifier`: an entry point only; the command line is gan_dist/cli/digits_classifier.py."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("gan_dist.cli.digits_classifier", run_name="__main__", alter_sys=True)
