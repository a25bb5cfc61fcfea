"""`python -m gan_dist.dataset_tool --source SRC --dest DEST.zip [--resolution N] [--transform
center-crop|center-crop-wide|none] [--channels 1|3] [--format png|jpg] [--max-images K] [--force]`:
a dataset as one zip of images (stylegan2-ada's layout); see gan_dist/data/dataset_tool.py."""
from __future__ import annotations

import sys
from typing import Optional

from gan_dist import cli
from gan_dist.data.dataset_tool import TRANSFORMS, convert


def main(argv: Optional[list[str]] = None) -> int:
    p = cli.ArgumentParser(prog="python -m gan_dist.dataset_tool",
                           description="A dataset as one uncompressed zip of images with dataset.json (stylegan2-ada's "
                                       "layout): train on it with data.name=zip data.root=DEST.zip")
    p.add_argument("--source", required=True, help="an ImageFolder tree, a flat folder, an IDX images file (or its "
                                                    "folder), or a zip")
    p.add_argument("--dest", required=True, help="the zip to write")
    p.add_argument("--resolution", help="N: resize and crop to N x N (center-crop-wide: WxH, the band kept)")
    p.add_argument("--transform", choices=TRANSFORMS, default="center-crop",
                   help="center-crop (default; the short side to N, then the center: what data.name=image_folder "
                        "does), center-crop-wide (a letterbox: scaled to W, aspect kept, the center H rows; stylegan2-ada's "
                        "of the same name crops first and stretches) or none (images already one square size)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 (grayscale) or 3 (RGB); default: the source's (1 when its images are "
                                                                    "grayscale)")
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="png (lossless, default) or jpg (quality 95)")
    p.add_argument("--max-images", type=int, help="K images spread evenly over the source (every class keeps its "
                                                      "share), not the first K")
    p.add_argument("--workers", type=int, help="processes (default: the CPUs this task may use)")
    p.add_argument("--force", action="store_true", help="replace DEST if it exists")
    args = p.parse_args(argv)

    def run() -> int:
        r = convert(args.source, args.dest, args.resolution, args.transform, args.channels, args.format,
                    args.max_images, args.force, args.workers)
        print(f"wrote {r['dest']}: {r['images']} images {r['size']}x{r['size']}x{r['channels']} ({r['format']}), "
              f"{r['classes']} classes" + (f" ({r['classes_with_images']} with images)"
                                           if r["classes_with_images"] < r["classes"] else "")
              + (f"; skipped {r['skipped']} unreadable" if r["skipped"] else "")
              + (f"; {r['upscaled']} upscaled" if r["upscaled"] else ""))
        return 0
    return cli.run(run)


if __name__ == "__main__":
    sys.exit(main())
