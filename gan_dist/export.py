"""`python -m gan_dist.export`: an entry point only; the command line is gan_dist/cli/export.py."""

# the docs' import path for exporting from a script: gan_dist.export.export(run_dir, out, ...)
from gan_dist.runs.export import export, load_generator, load_sampler  # noqa: E402,F401

if __name__ == "__main__":
    import runpy

    runpy.run_module("gan_dist.cli.export", run_name="__main__", alter_sys=True)
