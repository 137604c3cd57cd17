"""The side-by-side table of gaze against PyTorch on one machine, in one sitting: runs the PyTorch
twins under this folder and gaze's own benches (`xtask bench ... --json`), then prints a Markdown
table of step times and their ratio (gaze's speed over PyTorch's: above 1, gaze is faster).

Written for gaze. Usage (from the repository root, with torch and numpy installed and the release
xtask built by `cargo build --release -p xtask`):
    python xtask/reference/ratios.py [--xtask target/release/xtask] [--rounds 2]
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# (row, gaze bench args, PyTorch script and args)
ROWS = [
    ("mnist-convnet training step, b64, 2 threads", ["convnet", "--batch", "64", "--threads", "2"],
     ["convnet_pytorch.py", "--threads", "2", "--batch", "64"], "step_ms"),
    ("mnist-convnet inference, b64, 2 threads", ["convnet", "--batch", "64", "--threads", "2"],
     ["convnet_pytorch.py", "--threads", "2", "--batch", "64"], "inference_ms"),
    ("ram-mnist-28 training step, b128, 1 thread (PyTorch: gather retina)", ["ram", "--batch", "128", "--threads", "1"],
     ["ram_pytorch.py", "--threads", "1", "--retina", "gather"], "step_ms"),
]


def gaze(xtask, args):
    out = os.path.join("runs", "bench", "ratio-row.json")
    subprocess.run([xtask, "bench", *args, "--json", out], check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)[0]


def torch_row(args):
    text = subprocess.run([sys.executable, os.path.join(HERE, args[0]), *args[1:]], check=True,
                          capture_output=True, text=True).stdout
    return json.loads(text.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--xtask", default=os.path.join("target", "release", "xtask"))
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    print("| what | gaze ms | PyTorch ms | gaze / PyTorch speed |")
    print("|---|---|---|---|")
    for name, gargs, targs, key in ROWS:
        g, t = [], []
        for _ in range(a.rounds):  # interleaved, so both see the same machine
            g.append(gaze(a.xtask, gargs)[key])
            t.append(torch_row(targs)[key])
        lo_g, hi_g, lo_t, hi_t = min(g), max(g), min(t), max(t)
        print(f"| {name} | {lo_g:.1f}-{hi_g:.1f} | {lo_t:.1f}-{hi_t:.1f} | {lo_t / hi_g:.2f}-{hi_t / lo_g:.2f}x |")


if __name__ == "__main__":
    main()
