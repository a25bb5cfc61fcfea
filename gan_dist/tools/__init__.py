"""The tools around training: check.py (is my generator/critic pair safe under DDP?),
bench.py (throughput against a plain loop), plot.py (a run's PNGs). Library code: their
command lines live in gan_dist.cli. Imports training, runs and below."""
