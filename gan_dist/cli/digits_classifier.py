"""`python -m gan_dist.digits_classifier --out FILE [--image-size S]`: train the digits
feature network (see gan_dist/digits_classifier.py)."""
from __future__ import annotations

import sys
import time
from typing import Optional

import torch

from gan_dist import cli
from gan_dist.quality.digits_classifier import FEATURE_DIM, save, train


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.ArgumentParser(prog="python -m gan_dist.digits_classifier", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="TorchScript file to write (FILE.json goes beside it)")
    p.add_argument("--image-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    # one thread: these convolutions are too small to split (busy 2-core box: 4 s at 1 thread, 10-34 s at 2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    return cli.run(lambda: make(args))


def make(args) -> int:
    start = time.perf_counter()
    model, accuracy, held_out = train(args.image_size, args.epochs, args.seed)
    meta = {"image_size": args.image_size, "channels": 1, "num_classes": model.num_classes,
            "feature_dim": FEATURE_DIM, "held_out_accuracy": accuracy, "held_out_images": held_out,
            "epochs": args.epochs, "seed": args.seed}
    files = save(model, args.out, meta)
    print(f"held-out accuracy {accuracy:.4f} ({held_out} images, {time.perf_counter() - start:.1f} s); "
          f"wrote {', '.join(files)}")
    return 0




if __name__ == "__main__":
    sys.exit(main())
