"""`python -m gan_dist.dataset_tool`: an entry point only; the command line is gan_dist/cli/dataset_tool.py."""

if __name__ == "__main__":
    import runpy

    runpy.run_module("gan_dist.cli.dataset_tool", run_name="__main__", alter_sys=True)
