"""Times a PyTorch RAM training step of the ram-mnist-28 shape, for a same-machine ratio with
`cargo xtask bench ram`.

Written for gaze (not taken from any repository). The model follows "Recurrent Models of Visual
Attention" as the public PyTorch reimplementation sets it up for MNIST: 6 glimpses of one 8x8
patch, what/where layers of 128, a glimpse layer of 256, a ReLU RNN core of 256, a location
network with a 128-unit ReLU layer on the detached state (Gaussian, sigma 0.05, sample clamped),
a baseline on the detached state, the hybrid loss (NLL + MSE + REINFORCE), Adam.

Two retinas:
- `loop`: each image's patch sliced from the zero-padded batch in a Python loop, as the public
  reimplementation does;
- `gather`: every patch at once with one index gather (a faster PyTorch than the reference).

Data loading is left out (random 28x28 images), as in the bench. Usage:
    python ram_pytorch.py --threads 1 --retina loop --steps 100
Prints one JSON line: samples/s and ms per step.
"""

import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Ram(nn.Module):
    def __init__(self, patch=8, glimpses=6, hidden=256, retina="loop"):
        super().__init__()
        self.patch, self.glimpses, self.retina = patch, glimpses, retina
        self.what = nn.Linear(patch * patch, 128)
        self.where = nn.Linear(2, 128)
        self.mix_what = nn.Linear(128, hidden)
        self.mix_where = nn.Linear(128, hidden)
        self.core_in = nn.Linear(hidden, hidden)
        self.core_h = nn.Linear(hidden, hidden)
        self.loc_hidden = nn.Linear(hidden, hidden // 2)
        self.loc = nn.Linear(hidden // 2, 2)
        self.baseline = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, 10)

    def patches(self, x, l):
        b, _, h, w = x.shape
        g = self.patch
        pad = g // 2
        xp = F.pad(x, (pad, pad, pad, pad))
        # top-left corner of each patch in the padded image
        cx = (0.5 * (l[:, 0] + 1.0) * w).long().clamp(0, w)
        cy = (0.5 * (l[:, 1] + 1.0) * h).long().clamp(0, h)
        if self.retina == "loop":
            out = [xp[i, :, cy[i] : cy[i] + g, cx[i] : cx[i] + g] for i in range(b)]
            return torch.stack(out).reshape(b, -1)
        r = torch.arange(g, device=x.device)
        rows = (cy[:, None] + r[None, :])[:, :, None]  # (b, g, 1)
        cols = (cx[:, None] + r[None, :])[:, None, :]  # (b, 1, g)
        idx = rows * xp.shape[3] + cols  # (b, g, g)
        return xp.reshape(b, -1).gather(1, idx.reshape(b, -1))

    def forward(self, x, sigma=0.05):
        b = x.shape[0]
        l = torch.empty(b, 2).uniform_(-1, 1)
        h = torch.zeros(b, self.core_h.in_features)
        log_pi, baselines = [], []
        for t in range(self.glimpses):
            what = F.relu(self.what(self.patches(x, l)))
            where = F.relu(self.where(l))
            g = F.relu(self.mix_what(what) + self.mix_where(where))
            h = F.relu(self.core_in(g) + self.core_h(h))
            if t + 1 < self.glimpses:
                hd = h.detach()
                mu = torch.tanh(self.loc(F.relu(self.loc_hidden(hd))))
                sample = (mu + sigma * torch.randn_like(mu)).detach()
                log_pi.append(torch.distributions.Normal(mu, sigma).log_prob(sample).sum(1))
                baselines.append(self.baseline(hd).squeeze(1))
                l = sample.clamp(-1, 1)
        return F.log_softmax(self.classifier(h), dim=1), torch.stack(log_pi, 1), torch.stack(baselines, 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--retina", choices=["loop", "gather"], default="loop")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = Ram(retina=a.retina)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    x = torch.rand(a.batch, 1, 28, 28)
    y = torch.randint(0, 10, (a.batch,))

    def step():
        log_probs, log_pi, baselines = model(x)
        reward = (log_probs.argmax(1) == y).float()
        r = reward[:, None].expand_as(baselines)
        loss = (
            F.nll_loss(log_probs, y)
            + F.mse_loss(baselines, r)
            + 0.01 * -(log_pi * (r - baselines).detach()).sum(1).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = (time.perf_counter() - t0) / a.steps
    print(json.dumps({
        "torch": torch.__version__, "threads": a.threads, "retina": a.retina, "batch": a.batch,
        "step_ms": round(dt * 1e3, 2), "train_samples_per_s": round(a.batch / dt, 1),
    }))


if __name__ == "__main__":
    main()
