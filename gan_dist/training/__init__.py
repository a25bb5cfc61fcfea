"""THE training loop and its strategies: trainer.py (the loop; its stateful parts in one
registry), losses.py (WGAN-GP, BCE, hinge, NS+R1), ema.py (generator EMA), divergence.py
(the verdict; stop or roll back). Imports runs, quality, data, models, distributed, config."""
