"""RAM: the recurrent attention model with hard glimpses, trained by REINFORCE.

Mnih, Heess, Graves, Kavukcuoglu, "Recurrent Models of Visual Attention", NIPS 2014,
https://arxiv.org/abs/1406.6247. No official code was released; Element-Research/rnn's ``RecurrentAttention``
(Torch7, by N. Léonard) reproduces the paper's MNIST numbers and is the usual reference.

Per glimpse t = 1..T (§3, Fig. 1):

    ρ(x, l_{t−1})        k patches of g, 2g, 4g... centred at l ∈ [−1, 1]², each averaged to g×g (nn.glimpse_sensor)
    h_g = ReLU(Lin(ρ)), h_l = ReLU(Lin(l_{t−1}))      128 units each
    g_t = ReLU(Lin(h_g) + Lin(h_l))                    256 units: the glimpse network f_g
    h_t = ReLU(Lin(h_{t−1}) + Lin(g_t))                the core f_h (an LSTM with ``core="lstm"``)
    l_t ~ N(tanh(Lin(h_t)), σ²)                        the location policy f_l, fixed σ
    b_t = Lin(h_t)                                     the learned baseline
    a = softmax(Lin(h_T))                              the action (class) after the last glimpse

The first glimpse is at the centre (l_0 = 0). Loss (§3, "hybrid"): the action network by the log-likelihood of
the class, the rest by REINFORCE with reward R = 1 for a correct final class, 0 otherwise (eq. 2):

    L = CE(a, y) − (1/B) Σ_b Σ_t log π(l_t | h_t) · (R − b_t) + (1/(B·T)) Σ_b Σ_t (R − b_t)²

``(R − b_t)`` is held constant in the policy term and the baseline sees h_t without passing gradient into the
core (it only reduces variance). The policy gradient reaches the core and the glimpse network through log π
(the paper, the default); ``detach_policy=True`` stops it at h_t as several re-implementations do. The configs use
``detach_policy: true``: with the paper's form the classifier stayed at chance in every run we could afford
(docs/RESULTS.md, "Issue 14"). Sampling draws from the torch RNG (the trainer seeds it and saves it in
checkpoints); in eval mode the locations are the policy's means, so
``forward`` is deterministic and exports to ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.amp import no_autocast
from ..nn.glimpse_sensor import GlimpseSensor, glimpse_boxes
from .classifier_base import ClassifierModel


class GlimpseNetwork(nn.Module):
    """f_g: (ρ(x, l) flattened, l) -> g (B, hidden)."""

    def __init__(self, in_features: int, glimpse_hidden: int = 128, loc_hidden: int = 128, hidden: int = 256):
        super().__init__()
        self.fc_g, self.fc_l = nn.Linear(in_features, glimpse_hidden), nn.Linear(2, loc_hidden)
        self.out_g, self.out_l = nn.Linear(glimpse_hidden, hidden), nn.Linear(loc_hidden, hidden)

    def forward(self, rho: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        h_g = F.relu(self.fc_g(rho))
        h_l = F.relu(self.fc_l(loc))
        return F.relu(self.out_g(h_g) + self.out_l(h_l))


class RAM(ClassifierModel):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, glimpses: int = 6, glimpse_size: int = 12,
                 scales: int = 3, hidden: int = 256, std: float = 0.1, core: str = "rnn",
                 detach_policy: bool = False):
        super().__init__()
        if glimpses < 2:   # with one glimpse (at the centre) the location policy would never act
            raise ValueError(f"RAM needs glimpses >= 2 (the first is at the centre, the policy picks the others), "
                             f"not {glimpses}")
        if core not in ("rnn", "lstm"):
            raise ValueError(f"RAM core {core!r} unknown; choose rnn (the paper's static tasks) or lstm")
        if not std > 0:
            raise ValueError(f"RAM location std must be > 0, not {std}")
        self.in_channels, self.T, self.std, self.core_kind = in_channels, glimpses, std, core
        self.g, self.k, self.detach_policy = glimpse_size, scales, detach_policy
        self.sensor = GlimpseSensor(glimpse_size, scales)
        self.glimpse_net = GlimpseNetwork(scales * in_channels * glimpse_size ** 2, hidden=hidden)
        if core == "lstm":
            self.core = nn.LSTMCell(hidden, hidden)
        else:
            self.core_h, self.core_g = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.locator = nn.Linear(hidden, 2)
        self.baseline = nn.Linear(hidden, 1)
        self.classifier = nn.Linear(hidden, num_classes)

    def step_core(self, g: torch.Tensor, state):
        if self.core_kind == "lstm":
            h, c = self.core(g, state)
            return h, (h, c)
        h = F.relu(self.core_h(state) + self.core_g(g))
        return h, h

    def forward(self, x: torch.Tensor) -> dict:
        n = self.core_g.out_features if self.core_kind == "rnn" else self.core.hidden_size
        h = x.new_zeros(x.shape[0], n, dtype=torch.float32)             # h_0 (B, hidden)
        state = (h, h.clone()) if self.core_kind == "lstm" else h
        loc = x.new_zeros(x.shape[0], 2, dtype=torch.float32)    # l_0: the centre
        locs, log_pi, baselines = [loc], [], []
        for t in range(self.T):
            rho = self.sensor(x, loc).flatten(1)                 # (B, k, C, g, g) -> (B, k·C·g²)
            g = self.glimpse_net(rho, loc)                       # (B, hidden)
            h, state = self.step_core(g, state)
            baselines.append(self.baseline(h.detach()).squeeze(1).float())          # b_t (B,)
            if t == self.T - 1:
                break
            with no_autocast(x.device.type):   # the location in fp32: bf16 would round it by ~0.2 px on 100 px
                mean = torch.tanh(self.locator((h.detach() if self.detach_policy else h).float()))   # (B, 2)
            if self.training:
                sample = (mean + self.std * torch.randn_like(mean)).detach()
                # log N(sample; mean, σ²) summed over (x, y): the REINFORCE term (eq. 2)
                log_pi.append((-((sample - mean) ** 2) / (2 * self.std ** 2)
                               - math.log(self.std) - 0.5 * math.log(2 * math.pi)).sum(1))
                loc = sample.clamp(-1, 1)
            else:
                loc = mean
            locs.append(loc)
        out = {"logits": self.classifier(h), "locations": torch.stack(locs, 1),     # (B, K), (B, T, 2)
               "baseline": torch.stack(baselines, 1), "input_size": torch.tensor(x.shape[-2:])}   # (B, T)
        if log_pi:
            out["log_pi"] = torch.stack(log_pi, 1)                                  # (B, T − 1)
        return out

    def loss(self, out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = out["logits"].float()
        ce = F.cross_entropy(logits, labels)
        reward = (logits.argmax(1) == labels).float()                               # R (B,)
        b = out["baseline"]                                                          # (B, T)
        baseline_loss = F.mse_loss(b, reward[:, None].expand_as(b))
        parts = {"ce": ce.detach(), "reward": reward.mean().detach(), "baseline": baseline_loss.detach()}
        loss = ce + baseline_loss
        if "log_pi" in out:   # training: the policy term; the advantage of step t uses b_t of the state that chose l_t
            advantage = (reward[:, None] - b[:, :-1]).detach()                     # (B, T − 1)
            reinforce = -(out["log_pi"] * advantage).sum(1).mean()
            loss = loss + reinforce
            parts["reinforce"] = reinforce.detach()
        return loss, parts

    def glimpses(self, out: dict, b: int = 0) -> list[dict]:
        H, W = (int(v) for v in out["input_size"])
        locs = out["locations"][b].detach().float()                                        # (T, 2)
        boxes = glimpse_boxes(locs, H, W, self.g, self.k)                           # (T, k, 4)
        return [{"step": t, "kind": "boxes", "boxes": boxes[t].cpu().numpy(), "location": locs[t].cpu().numpy()}
                for t in range(locs.shape[0])]


def ram(num_classes: int = 10, in_channels: int = 1, glimpses: int = 6, glimpse_size: int = 12, scales: int = 3,
        hidden: int = 256, std: float = 0.1, core: str = "rnn", detach_policy: bool = False):
    return RAM(num_classes, in_channels, glimpses, glimpse_size, scales, hidden, std, core, detach_policy)
