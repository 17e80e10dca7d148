"""Classifier training and inference throughput on the CPU: medti's step vs the usual DataLoader loop, and
onnxruntime vs torch eager.

Side by side in one run, same model (ResNet-18 from transformers, random init, one logit), batch, images:

- training, ``medti``: the step of :func:`medti.classify.train._train` - every case decoded once into a uint8
  tensor (:func:`medti.classify.data.load_cases`), the batch drawn with ``index_select``, augmented on the
  whole batch with kornia (:func:`medti.classify.augment.build_augment` / ``augment_batch``), then the
  probability model's logits, BCE-with-logits and an AdamW step;
- training, ``reference``: the albumentations / Lightning-Flash style loop - a torch ``Dataset`` whose
  ``__getitem__`` opens the PNG with PIL, converts it to float numpy and augments that one image on the CPU
  (numpy/PIL versions of albumentations' HorizontalFlip, GaussNoise, RandomGamma, ShiftScaleRotate,
  RandomBrightnessContrast, OpticalDistortion and ChannelDropout, with medti's probabilities and ranges), a
  ``DataLoader`` (shuffle, ``--workers`` processes) collating the batch, then the same model, loss and AdamW step;
- inference: :func:`medti.classify.onnx.open_predictor` on the exported ``.onnx`` (onnxruntime) vs on the
  classifier dir (torch eager), the same images in batches of ``--infer-batch``.

Rounds of the two sides are interleaved (which goes first alternates); best and median round are reported
(the machine may be shared; the best round is the least disturbed one).

    python benchmarks/bench_classifier.py                                # defaults: 3 rounds, 20 steps, batch 32
    python benchmarks/bench_classifier.py --rounds 1 --steps 2 --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

N_CASES = 600
SIZE = 64
TARGET = "csPCa"
WARMUP = 3
TRAIN_TARGET, INFER_TARGET = 2.0, 1.5


# ----------------------------------------------------------------------------- data
def make_data(out: Path) -> Path:
    from medti.data.phantoms import PhantomConfig, generate_phantoms

    generate_phantoms(PhantomConfig(kind="prostate", out=out, n=N_CASES, size=SIZE, preset="subtle"))
    return out


# ----------------------------------------------------------------------------- medti side
class MedtiLoop:
    """medti's training step: :func:`medti.classify.train.draw_batch` and ``optimizer_step``, as ``_train`` calls them."""

    def __init__(self, data: Path, batch: int):
        import torch

        from medti.classify.augment import build_augment
        from medti.classify.data import image_spec, load_cases
        from medti.classify.model import build_resnet, probability_model
        from medti.classify.train import ClassifierConfig

        self.cfg = ClassifierConfig(train=[data], val=data, targets=[TARGET], out=data.parent / "unused", batch=batch,
                                    steps=10_000)
        train = load_cases([data], "train", [TARGET], role="train")
        self.n = len(train)
        self.images, self.labels = torch.from_numpy(train.images), torch.from_numpy(train.labels)
        torch.manual_seed(0)
        self.model = probability_model(build_resnet(1)).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.aug = build_augment(image_spec(data).modality)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        self.step_no = 0

    def input_batch(self):
        return self.batch()

    def batch(self):
        """The augmented batch of the next step, and its labels."""
        from medti.classify.train import draw_batch

        x, y = draw_batch(self.images, self.labels, self.aug, self.cfg.seed, self.step_no, self.cfg.batch)
        self.step_no += 1
        return x, y

    def step(self) -> None:
        from medti.classify.train import lr_at, optimizer_step

        x, y = self.batch()
        optimizer_step(self.model, self.opt, self.loss_fn, x, y, lr_at(self.step_no - 1, self.cfg))


def _remap_bilinear(img, mx, my):
    """``img`` (H x W x C float) sampled at (my, mx) with bilinear weights; outside the image reads 0 (cv2.remap)."""
    import numpy as np

    h, w = img.shape[:2]
    x0, y0 = np.floor(mx).astype(np.int64), np.floor(my).astype(np.int64)
    fx, fy = (mx - x0)[..., None], (my - y0)[..., None]
    pad = np.pad(img, ((1, 2), (1, 2), (0, 0)))
    x0, y0 = np.clip(x0 + 1, 0, w + 1), np.clip(y0 + 1, 0, h + 1)
    a, b = pad[y0, x0], pad[y0, x0 + 1]
    c, d = pad[y0 + 1, x0], pad[y0 + 1, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def augment_one(a, rng):
    """One H x W x 3 float32 image in [0, 1], augmented the albumentations way (each transform on its own draw);
    probabilities and ranges are medti's (``medti.classify.augment.build_augment``)."""
    import numpy as np
    from PIL import Image

    h, w = a.shape[:2]
    if rng.random() < 0.5:  # HorizontalFlip
        a = a[:, ::-1]
    if rng.random() < 0.5:  # ShiftScaleRotate, through PIL's affine transform (one float plane per channel)
        th, s = math.radians(rng.uniform(-10, 10)), rng.uniform(0.9, 1.1)
        tx, ty = rng.uniform(-0.0625, 0.0625) * w, rng.uniform(-0.0625, 0.0625) * h
        cx, cy = w / 2, h / 2
        cs, sn = math.cos(th) / s, math.sin(th) / s  # output -> input: rotate back, unscale, unshift
        coef = (cs, sn, cx - cs * (cx + tx) - sn * (cy + ty), -sn, cs, cy + sn * (cx + tx) - cs * (cy + ty))
        a = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(a[..., k])).transform(
            (w, h), Image.Transform.AFFINE, coef, resample=Image.Resampling.BILINEAR)) for k in range(a.shape[2])], -1)
    if rng.random() < 0.3:  # OpticalDistortion: a radial (barrel / pincushion) warp about a shifted centre
        k = rng.uniform(-0.05, 0.05)
        cx, cy = w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2 + rng.uniform(-0.05, 0.05) * h
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        dx, dy = (xs - cx) / w, (ys - cy) / h
        f = 1 + k * (dx * dx + dy * dy) * 4
        a = _remap_bilinear(a, cx + (xs - cx) * f, cy + (ys - cy) * f)
    if rng.random() < 0.5:  # RandomBrightnessContrast
        a = a * (1 + rng.uniform(-0.15, 0.15)) + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.5:  # RandomGamma
        a = np.power(np.clip(a, 0, 1), rng.uniform(0.8, 1.25))
    if rng.random() < 0.5:  # GaussNoise
        a = a + rng.normal(0.0, 0.03, a.shape)
    if rng.random() < 0.1:  # ChannelDropout
        a = a.copy()
        a[..., rng.integers(a.shape[2])] = 0.0
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def reference_dataset(paths, labels):
    """A map-style Dataset that decodes and augments one image per ``__getitem__`` (what DataLoader workers run)."""
    import numpy as np
    import torch
    from PIL import Image

    from medti.classify.model import MEAN, STD

    class PngDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            # torch seeds each worker (and each epoch) differently; seeding numpy from it keeps workers apart
            rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ())))
            with Image.open(paths[i]) as im:
                a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
            a = (augment_one(a, rng) - MEAN) / STD  # Normalize, the last transform
            return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))), torch.tensor([labels[i]])

    return PngDataset()


class ReferenceLoop:
    """``for x, y in DataLoader(PngDataset, batch, shuffle)``: forward, BCE-with-logits, AdamW, loss read."""

    def __init__(self, data: Path, batch: int, workers: int):
        import torch

        from medti.classify.model import build_resnet
        from medti.classify.train import ClassifierConfig
        from medti.data.dataset import Dataset

        cfg = ClassifierConfig(train=[data], val=data, targets=[TARGET], out=data.parent / "unused")
        cases = Dataset(data).cases("train")
        ds = reference_dataset([c.path for c in cases], [float(c.labels[TARGET]) for c in cases])
        # drop_last: every step is a full batch, as medti's; persistent workers: not restarted every epoch
        self.loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                                  drop_last=True, persistent_workers=workers > 0)
        self.it = iter(self.loader)
        # the input-pipeline rows time the per-sample work itself, in this process, whatever --workers is
        self.serial = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
        self.serial_it = iter(self.serial)
        torch.manual_seed(0)
        self.net = build_resnet(1).train()
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.loss_fn = torch.nn.BCEWithLogitsLoss()

    def batch(self):
        try:
            return next(self.it)
        except StopIteration:  # next epoch
            self.it = iter(self.loader)
            return next(self.it)

    def input_batch(self):
        try:
            return next(self.serial_it)
        except StopIteration:
            self.serial_it = iter(self.serial)
            return next(self.serial_it)

    def close(self) -> None:
        self.it = self.loader = None

    def step(self) -> None:
        x, y = self.batch()
        loss = self.loss_fn(self.net(pixel_values=x).logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        float(loss.detach())


# ----------------------------------------------------------------------------- measuring
def time_steps(loop, steps: int) -> float:
    for _ in range(WARMUP):
        loop.step()
    t = time.perf_counter()
    for _ in range(steps):
        loop.step()
    return time.perf_counter() - t


def time_batches(loop, steps: int) -> float:
    """Seconds for ``steps`` batches of the input pipeline alone, in this process (decode, augment, collate; no model)."""
    loop.input_batch()
    t = time.perf_counter()
    for _ in range(steps):
        loop.input_batch()
    return time.perf_counter() - t


def time_predict(pred, images, batch: int) -> float:
    t = time.perf_counter()
    pred(images, batch=batch)
    return time.perf_counter() - t


def threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


def train_model(data: Path, out: Path) -> Path:
    from medti.classify.train import ClassifierConfig, train_classifier

    train_classifier(ClassifierConfig(train=[data], val=data, targets=[TARGET], out=out, steps=2, eval_every=1,
                                      progress=False))
    return out


# ----------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help=f"timed training steps per round (after {WARMUP} warm-up)")
    ap.add_argument("--batch", type=int, default=32, help="training batch (both loops)")
    ap.add_argument("--workers", type=int, default=0, help="reference DataLoader worker processes")
    ap.add_argument("--infer-batch", type=int, default=64, help="inference batch (both backends)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice); onnxruntime keeps its own default either way")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = ap.parse_args()
    from _report import check_positive

    check_positive(ap, args, ("rounds", "steps", "batch", "infer_batch", "threads"))
    if args.workers < 0:
        ap.error(f"--workers={args.workers} must be >= 0")

    import onnxruntime as ort
    import torch

    from _report import command_line, interleave, machine, write_section
    from medti._quiet import quiet_libraries
    from medti.classify.data import load_cases
    from medti.classify.onnx import ExportConfig, export_onnx, open_predictor

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "data")

        # 1. Training: medti's step vs the DataLoader loop, whole steps, then the input pipelines alone
        medti, ref = MedtiLoop(data, args.batch), ReferenceLoop(data, args.batch, args.workers)
        n_train = medti.n
        samples = args.steps * args.batch
        train_rates = interleave({"medti": lambda: time_steps(medti, args.steps),
                                  "reference": lambda: time_steps(ref, args.steps)},
                                 args.rounds, samples, "samples/s", "train")
        input_rates = interleave({"medti input": lambda: time_batches(medti, args.steps),
                                  "ref input": lambda: time_batches(ref, args.steps)},
                                 args.rounds, samples, "samples/s", "input")
        ref.close()  # its DataLoader workers, if any, stop before the inference rounds

        # 2. Inference: onnxruntime vs torch eager, through the same predictor API
        model_dir = train_model(data, Path(tmp) / "classifier")
        onnx_path = export_onnx(ExportConfig(model=model_dir, out=Path(tmp) / "classifier.onnx")).out
        images = load_cases([data], None, [TARGET], role="benchmark").images
        before = threads_now()
        onnx_pred = open_predictor(onnx_path)  # onnxruntime's default threads (one per physical core)
        ort_pool = threads_now() - before  # intra-op pool threads it started; the calling thread is one more
        torch_pred = open_predictor(model_dir)
        intra = onnx_pred.session.get_session_options().intra_op_num_threads
        for p in (onnx_pred, torch_pred):  # warm-up: allocator, kernels
            p(images[: args.infer_batch], batch=args.infer_batch)
        infer_rates = interleave({"onnxruntime": lambda: time_predict(onnx_pred, images, args.infer_batch),
                                  "torch eager": lambda: time_predict(torch_pred, images, args.infer_batch)},
                                 args.rounds, len(images), "images/s", "infer")

    # 3. Report
    load_end = os.getloadavg()[0]
    rates = {**train_rates, **input_rates, **infer_rates}
    best = {k: max(v) for k, v in rates.items()}
    med = {k: statistics.median(v) for k, v in rates.items()}
    tx, tx_med = best["medti"] / best["reference"], med["medti"] / med["reference"]
    ix, ix_med = best["onnxruntime"] / best["torch eager"], med["onnxruntime"] / med["torch eager"]
    # share of the reference step spent producing its batch; a free input pipeline could gain at most 1 / (1 - share)
    share = min(med["reference"] / med["ref input"], 0.999)
    if args.workers:
        ceiling = "With workers, the reference makes its batches beside the step, on the same cores."
    else:
        ceiling = (f"The reference's input pipeline is {100 * share:.0f} % of its step (medians), so a loop whose batches "
                   f"cost nothing could be at most {1 / (1 - share):.2f}x faster than it at these settings.")
    if intra:
        ort_threads = f"{intra} (set in the session options)"
    else:
        ort_threads = (f"{ort_pool + 1} = onnxruntime's default, one per physical core ({ort_pool} pool thread(s) "
                       "seen starting with the session + the calling thread)")
    cmd = command_line(ap, args, "bench_classifier.py")
    thread_note = f"torch set to {threads} thread(s)" if args.threads else f"torch's default {threads} thread(s)"

    def met(x: float, target: float) -> str:
        return "met" if x >= target else "missed"

    def row(measure: str, side: str, key: str) -> str:
        return f"| {measure} | {side} | {best[key]:.1f} | {med[key]:.1f} |"

    body = f"""## Classifier training and inference (CPU)

`{cmd}` on {machine()}, onnxruntime {ort.__version__}; {thread_note}.
Model: ResNet-18 (transformers, random init, 1 logit); {N_CASES} `subtle` prostate phantoms at {SIZE} px, 3 channels
({n_train} in the train split, what both training loops draw from). Training: batch {args.batch}, {args.steps} timed steps
after {WARMUP} warm-up steps per round, AdamW + BCE-with-logits; inference: all {len(images)} images in batches of
{args.infer_batch}. Best of {args.rounds} interleaved rounds (median also shown). 1-minute load average {load_start:.2f} at
the start, {load_end:.2f} at the end: this benchmark accounts for up to {threads}, more means other jobs shared the
{len(os.sched_getaffinity(0))} cores (the gap between best and median shows how much they took).

Reference loop = the albumentations / Lightning-Flash style pipeline: a torch `Dataset` whose `__getitem__` opens the
PNG with PIL, converts it to float numpy and augments that one image (numpy/PIL versions of horizontal flip, Gaussian
noise, gamma, shift-scale-rotate by PIL affine, brightness/contrast, optical distortion as a radial warp, channel
dropout; medti's probabilities and ranges), a `DataLoader` (shuffle, {args.workers} worker process(es)), then the
same model, loss and optimizer step. medti = `medti.classify.train`'s step: cases decoded once into a uint8 tensor,
`index_select` batch, kornia augmentation of the whole batch. "Input pipeline" rows time making the batches alone
(decode, augment, collate; no model) in the main process (the reference's without workers), in rounds of their own. Inference: `open_predictor` on the exported `.onnx`
(onnxruntime, intra-op threads: {ort_threads}) vs on the classifier dir (torch eager, {threads} thread(s)).

| measure | side | best | median |
|---|---|---|---|
{row("training samples/s", "reference (DataLoader, per-sample PIL/numpy)", "reference")}
{row("training samples/s", "medti", "medti")}
{row("input pipeline samples/s", "reference", "ref input")}
{row("input pipeline samples/s", "medti (kornia, batched)", "medti input")}
{row("inference images/s", "torch eager", "torch eager")}
{row("inference images/s", "onnxruntime", "onnxruntime")}

Training, medti / reference: **{tx:.2f}x** (median {tx_med:.2f}x; target >= {TRAIN_TARGET:g}x: {met(tx, TRAIN_TARGET)}).
{ceiling}
Inference, onnxruntime / torch eager: **{ix:.2f}x** (median {ix_med:.2f}x; target >= {INFER_TARGET:g}x: {met(ix, INFER_TARGET)}).
"""
    print(body)
    if not args.no_write:
        write_section("classifier-cpu" + (f"-{args.threads}thread" if args.threads else ""), body)


if __name__ == "__main__":
    main()
