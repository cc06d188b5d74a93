"""Training-batch throughput of the streamed path (``image_folder``: PNG files decoded and augmented per
sample by ``DataLoader`` workers) against the in-memory path (``fashion_mnist``: uint8 tensors augmented
batch-wise), on the same Fashion-MNIST images, as ratios measured in the same run.

The first ``--images`` training images of Debian's Fashion-MNIST are written out as a PNG tree
(``root/train/<class>/<i>.png``, once; ``--tree`` keeps it between runs). Both paths then produce what the
engine trains on: the same epoch order (``epoch_batches``), random crop with 2 pixels of padding, no flip,
float [0, 1] batches of 128 on the CPU. Rounds interleave the pipelines (in memory, 0 workers, 2, 4, ...)
and the median epoch time per pipeline is reported, with the CPU seconds the epoch cost in all processes
(the main one and its workers), which a loaded machine distorts less than wall-clock time.

Usage: python benchmarks/bench_data_streaming.py [--images 10000] [--workers 0 2 4] [--rounds 3] [--tree DIR]
       [--threads 1]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image

from robust_distill.core.manager import get_registries
from robust_distill.data.splits import make_splits


def write_tree(bundle, root: Path, n: int) -> float:
    """The first ``n`` training and ``n // 6`` test images as PNG files; returns the seconds it took."""
    t0 = time.perf_counter()
    for split, x, y in (("train", bundle.train_x[:n], bundle.train_y[:n]), ("test", bundle.test_x[:n // 6],
                                                                             bundle.test_y[:n // 6])):
        for name in bundle.info.class_names:
            (root / split / name.replace("/", "-")).mkdir(parents=True, exist_ok=True)
        for i in range(x.shape[0]):
            name = bundle.info.class_names[int(y[i])].replace("/", "-")
            Image.fromarray(x[i, 0].numpy(), mode="L").save(root / split / name / f"{i:05d}.png")
    return time.perf_counter() - t0


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loaders' workers, joined every epoch)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def epoch_time(splits, epoch: int) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds) of one epoch of training batches."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    n = 0
    for x, _ in splits.train_batches(epoch, batch_size=128, seed=0, device="cpu"):
        n += x.shape[0]
    assert n == splits.n_train
    return time.perf_counter() - t0, cpu_seconds() - c0


def per_image_costs(tree: Path, folder: Path, n: int = 200) -> list[tuple[str, float]]:
    """CPU milliseconds per image of decoding and transforming, in this process: a Fashion-MNIST PNG of the
    tree (random crop + flip) and an ImageNet-size JPEG (500x375, quality 90; RandomResizedCrop(224) + flip,
    and the Res256Crop224 evaluation transform)."""
    import numpy as np

    from robust_distill.data.streaming import CropFlip, RandomResizedCropFlip, read_image, sample_rng

    png = str(next((tree / "train").rglob("*.png")))
    rng = np.random.default_rng(0)
    smooth = Image.fromarray((rng.random((47, 63, 3)) * 255).astype(np.uint8)).resize((500, 375), Image.BICUBIC)
    jpeg = str(folder / "imagenet_size.JPEG")
    smooth.save(jpeg, quality=90)
    crop, rrc = CropFlip(28, padding=2, flip=True), RandomResizedCropFlip(224, eval_resize=256)
    cases = [("Fashion-MNIST PNG: decode", lambda i: read_image(png, "L")),
             ("Fashion-MNIST PNG: decode + crop + flip",
              lambda i: crop.train(read_image(png, "L"), sample_rng(0, 0, i))),
             ("500x375 JPEG: decode", lambda i: read_image(jpeg, "RGB")),
             ("500x375 JPEG: decode + RandomResizedCrop(224) + flip",
              lambda i: rrc.train(read_image(jpeg, "RGB"), sample_rng(0, 0, i))),
             ("500x375 JPEG: decode + Res256Crop224", lambda i: rrc.eval(read_image(jpeg, "RGB")))]
    out = []
    for name, fn in cases:
        c0 = time.process_time()
        for i in range(n):
            fn(i)
        out.append((name, 1e3 * (time.process_time() - c0) / n))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", default=None, help="folder for the PNG tree (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the main process (workers use 1 each); on a shared machine more "
                             "threads spin against other jobs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*worker processes in total.*")  # 4 workers on 2 cores

    regs = get_registries()
    memory = regs.datasets.get("fashion_mnist").load()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.tree or tmp)
        written = 0.0
        if not (root / "train").is_dir():
            written = write_tree(memory, root, args.images)
        streamed = regs.datasets.get("image_folder").load(root=str(root), padding=2, flip=False)
        assert len(streamed.train) == args.images and streamed.info.input_shape == (1, 28, 28)
        sub = type(memory)(memory.info, memory.train_x[:args.images], memory.train_y[:args.images], memory.test_x,
                           memory.test_y, crop_padding=2, flip=False)
        pipelines = {"in memory (fashion_mnist), batch-wise augmentation": make_splits(sub, val_size=0)}
        for w in args.workers:
            pipelines[f"streamed PNG tree (image_folder), {w} workers"] = make_splits(streamed, val_size=0, workers=w)
        for splits in pipelines.values():
            epoch_time(splits, 0)  # warm-up: file cache, worker start-up code paths
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
        for r in range(args.rounds):
            for name, splits in pipelines.items():
                torch.manual_seed(r)
                times[name].append(epoch_time(splits, r + 1))
        costs = per_image_costs(root, Path(tmp))
    base = statistics.median(t for t, _ in times[next(iter(times))])
    base_cpu = statistics.median(c for _, c in times[next(iter(times))])
    print(f"One epoch of {args.images} Fashion-MNIST training images (28x28, random crop, padding 2), batch 128, "
          f"float batches on the CPU; median of {args.rounds} interleaved rounds; {torch.get_num_threads()} torch "
          f"threads in the main process" + (f"; PNG tree written in {written:.1f} s" if written else ""))
    print("| pipeline | s / epoch | images / s | time ratio to in-memory | CPU s / epoch (all processes) | "
          "CPU ratio |\n|---|---|---|---|---|---|")
    for name, ts in times.items():
        t, c = statistics.median(t for t, _ in ts), statistics.median(c for _, c in ts)
        print(f"| {name} | {t:.2f} | {args.images / t:,.0f} | {t / base:.1f} | {c:.2f} | {c / base_cpu:.1f} |")
    print("\nCPU time per image of the streamed transforms (one process, 200 images each)\n")
    print("| work | CPU ms / image |\n|---|---|")
    for name, ms in costs:
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
