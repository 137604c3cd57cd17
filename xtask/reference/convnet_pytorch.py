"""Times a PyTorch training step and inference of the mnist-convnet model, for a same-machine
ratio with `cargo xtask bench convnet` (the `mnist-convnet b64 t2` row of `cargo xtask bench suite`).

Written for gaze (not taken from any repository): the twin of `experiments/mnist-convnet.toml`'s
model: conv3x3 1->32 (padding 1), ReLU, max-pool 2, conv3x3 32->64, ReLU, max-pool 2, linear
3136->128, ReLU, dropout 0.25, linear 128->10; cross-entropy; AdamW. Random 28x28 images (data
loading is left out, as in the bench). Usage:
    python convnet_pytorch.py --threads 2 --batch 64 --steps 50
Prints one JSON line: ms per training step and per inference batch, samples/s.
"""

import argparse
import json
import time

import torch
import torch.nn as nn


def model():
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, 10),
    )


def timed(f, steps):
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(steps):
        f()
    return (time.perf_counter() - t) * 1000.0 / steps


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.rand(a.batch, 1, 28, 28), torch.randint(0, 10, (a.batch,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    def infer():
        with torch.no_grad():
            net.eval()
            net(x).argmax(1)
            net.train()

    step_ms, infer_ms = timed(step, a.steps), timed(infer, a.steps)
    print(json.dumps({
        "model": "mnist-convnet", "framework": f"pytorch {torch.__version__}", "threads": a.threads,
        "batch": a.batch, "step_ms": step_ms, "samples_per_s": a.batch / step_ms * 1000.0,
        "inference_ms": infer_ms, "inference_samples_per_s": a.batch / infer_ms * 1000.0,
    }))


if __name__ == "__main__":
    main()
