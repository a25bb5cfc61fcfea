"""The run's files: run_dir.py (layout and lock), checkpoint.py (rank-0 atomic save, rank 0
chooses what every rank loads, compatibility), best.py (checkpoints/best.pt and its value to
beat), tracking.py (console, metrics.jsonl, wandb), samples.py (grids from fixed inputs,
interpolation), export.py (TorchScript / torch.export files and loading them back). Imports
models, data, distributed, config, errors."""
