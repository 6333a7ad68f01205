"""Residual diffusion: an AdaLN MLP that denoises the continuous residual of each final-scale token.

Per token (N rows): the target x0 is the residual latent vector (Cz), divided by ``vae_scale``; the
condition z (C) is ``decoder_norm(last hidden state + word_embed(code vector of the sampled discrete
token))`` from the transformer. The network predicts **epsilon** plus a learned-range variance value
v in [-1, 1] (log σ² = (v+1)/2 · log β_t + (1-v)/2 · log β̃_t), so it outputs 2·Cz channels.

Schedule: cosine ᾱ(s) = cos²((s + 0.008)/1.008 · π/2), T = ``train_steps`` (1000) betas capped at
0.999, respaced to ``sample_steps`` (8) evenly spaced original steps (0 and T-1 included); the
network always sees the original step index. Training loss = MSE(ε̂, ε) + the variational bound
term for the variance (mean detached; Gaussian NLL at step 0). Sampling: ancestral steps, x̂0
clipped to [-1, 1], noise scaled by ``temperature``; classifier-free guidance mixes ε only:
ε = (1 + t) ε_cond - t ε_uncond.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .configs import DiffusionConfig
from .layers import TimestepEmbedder


# --- schedule ------------------------------------------------------------------------------------
def cosine_betas(steps: int, max_beta: float = 0.999) -> np.ndarray:
    """float64 betas of the cosine schedule over ``steps`` steps."""
    abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - abar((i + 1) / steps) / abar(i / steps), max_beta) for i in range(steps)])


def space_timesteps(steps: int, count: int) -> list[int]:
    """``count`` original steps evenly spread over [0, steps - 1] (rounded), ascending."""
    if not 1 <= count <= steps:
        raise ValueError(f"cannot respace {steps} steps to {count}")
    stride = (steps - 1) / (count - 1) if count > 1 else 1
    return sorted({round(i * stride) for i in range(count)})


class Schedule:
    """Gaussian diffusion quantities (float64 numpy) over the kept steps ``timesteps`` of a base
    schedule ``betas``; ``timesteps[k]`` is the original index the network sees at step k."""

    def __init__(self, betas: np.ndarray, keep: list[int] | None = None):
        base_abar = np.cumprod(1.0 - betas)
        keep = list(range(len(betas))) if keep is None else keep
        abar = base_abar[keep]
        prev = np.append(1.0, abar[:-1])
        self.timesteps = np.array(keep)
        self.betas = 1.0 - abar / prev
        self.abar, self.abar_prev = abar, prev
        self.sqrt_abar, self.sqrt_1m_abar = np.sqrt(abar), np.sqrt(1.0 - abar)
        self.sqrt_recip_abar, self.sqrt_recipm1_abar = np.sqrt(1.0 / abar), np.sqrt(1.0 / abar - 1)
        self.post_var = self.betas * (1.0 - prev) / (1.0 - abar)
        clip = self.post_var[1] if len(self.post_var) > 1 else self.betas[0]
        self.post_logvar = np.log(np.append(clip, self.post_var[1:]))
        self.coef_x0 = self.betas * np.sqrt(prev) / (1.0 - abar)
        self.coef_xt = (1.0 - prev) * np.sqrt(1.0 - self.betas) / (1.0 - abar)
        self._f32: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.timesteps)

    def take(self, name: str, k: torch.Tensor) -> torch.Tensor:
        """Per-row float32 values (N×1) of array ``name`` at step indices ``k`` (N,)."""
        table = self._f32.get(name)
        if table is None:
            table = self._f32[name] = torch.from_numpy(getattr(self, name)).float()
        return table[k][:, None]

    def model_mean_logvar(self, out: torch.Tensor, x: torch.Tensor, k: torch.Tensor, clip: bool = True):
        """Network output N×2C at x (N×C), step k -> (mean, log variance, x̂0) of p(x_{k-1} | x_k)."""
        eps, v = out.chunk(2, dim=1)
        frac = (v + 1) / 2
        logvar = frac * torch.log(self.take("betas", k)) + (1 - frac) * self.take("post_logvar", k)
        x0 = self.take("sqrt_recip_abar", k) * x - self.take("sqrt_recipm1_abar", k) * eps
        if clip:
            x0 = x0.clamp(-1, 1)
        return self.take("coef_x0", k) * x0 + self.take("coef_xt", k) * x, logvar, x0


# --- network -------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class ResidualMLP(nn.Module):
    """x: N×Cz noisy residual, t: N original step indices, c: N×C condition -> N×2Cz (ε, v)."""

    def __init__(self, channels: int, cond_dim: int, width: int, depth: int):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.time_embed.mlp[0], self.time_embed.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for blk in self.res_blocks:  # AdaLN-zero: every block starts as the identity
            nn.init.zeros_(blk.adaLN_modulation[-1].weight), nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight), nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.embedded(x, self.time_embed(t) + self.cond_embed(c))

    def embedded(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` after the step + condition embedding y (N×width)."""
        h = self.input_proj(x)
        for blk in self.res_blocks:
            h = blk(h, y)
        return self.final_layer(h, y)


class CachedEmbeddings:
    """``net(x, t, c)`` of a frozen denoiser of the form ``embedded(x, time_embed(t) + cond_embed(c))`` (the
    residual-diffusion MLP, the DiT baseline) for sampling, with the per-step constants reused: the step
    embedding per distinct ``t`` (by value, kept across calls) and the condition embedding of the last ``c``
    (by identity: the samplers pass the same tensor at every step). Same outputs as ``net``; build a new one
    after the weights change."""

    def __init__(self, time_embed: Callable[[torch.Tensor], torch.Tensor],
                 cond_embed: Callable[[torch.Tensor], torch.Tensor],
                 embedded: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.time_embed, self.cond_embed, self.embedded = time_embed, cond_embed, embedded
        self._t: dict[bytes, torch.Tensor] = {}
        self._c: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def of(cls, net: ResidualMLP) -> CachedEmbeddings:
        return cls(net.time_embed, net.cond_embed, net.embedded)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        key = t.numpy().tobytes()
        te = self._t.get(key)
        if te is None:
            te = self._t[key] = self.time_embed(t)
        if self._c is None or self._c[0] is not c:
            self._c = (c, self.cond_embed(c))
        return self.embedded(x, te + self._c[1])


def _normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


class ResidualDiffusion(nn.Module):
    def __init__(self, cfg: DiffusionConfig, channels: int, cond_dim: int):
        super().__init__()
        self.cfg, self.channels = cfg, channels
        self.net = ResidualMLP(channels, cond_dim, cfg.width, cfg.depth)
        betas = cosine_betas(cfg.train_steps)
        self.train_schedule = Schedule(betas)
        self.sample_schedule = Schedule(betas, space_timesteps(cfg.train_steps, cfg.sample_steps))

    def loss(self, target: torch.Tensor, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss. target: N×Cz residual vectors, z: N×C conditions (both repeated
        ``batch_mul`` times with independent steps/noise)."""
        s, rep = self.train_schedule, self.cfg.batch_mul
        x0 = (target / self.cfg.vae_scale).repeat(rep, 1)
        z = z.repeat(rep, 1)
        k = torch.randint(0, len(s), (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        xt = s.take("sqrt_abar", k) * x0 + s.take("sqrt_1m_abar", k) * noise
        out = self.net(xt, k, z)
        eps, v = out.chunk(2, dim=1)
        mse = (eps - noise).pow(2).mean(1)
        # Variance term: the bound with the mean frozen, so it trains only v.
        mean, logvar, _ = s.model_mean_logvar(torch.cat([eps.detach(), v], 1), xt, k, clip=False)
        true_mean = s.take("coef_x0", k) * x0 + s.take("coef_xt", k) * xt
        kl = _normal_kl(true_mean, s.take("post_logvar", k), mean, logvar).mean(1) / math.log(2.0)
        nll = (0.5 * (math.log(2 * math.pi) + logvar + (x0 - mean) ** 2 * torch.exp(-logvar))).mean(1) / math.log(2.0)
        return (mse + torch.where(k == 0, nll, kl)).mean()

    def sample(self, z: torch.Tensor, guidance: float | None, generator: torch.Generator | None,
               temperature: float = 1.0, net: Callable | None = None) -> torch.Tensor:
        """Residual vectors N×Cz for conditions z. With ``guidance`` not None, z is 2N×C (conditional
        rows first, unconditional second), both halves share the noise and ε is guided. ``net`` replaces the
        eager MLP (e.g. an exported program with the same signature)."""
        net = net or CachedEmbeddings.of(self.net)
        s = self.sample_schedule
        guided = guidance is not None
        n = z.shape[0] // 2 if guided else z.shape[0]
        x = torch.randn((n, self.channels), generator=generator)
        for k in reversed(range(len(s))):
            kk = torch.tensor([k])  # one row of schedule values, broadcast over the n rows
            tt = torch.full((z.shape[0],), int(s.timesteps[k]), dtype=torch.long)
            out = net(torch.cat([x, x]) if guided else x, tt, z)
            if guided:
                eps, v = out.chunk(2, dim=1)
                eps = (1 + guidance) * eps[:n] - guidance * eps[n:]
                out = torch.cat([eps, v[:n]], dim=1)
            mean, logvar, _ = s.model_mean_logvar(out, x, kk)
            x = mean
            if k > 0:
                x = x + torch.exp(0.5 * logvar) * torch.randn(x.shape, generator=generator) * temperature
        return x * self.cfg.vae_scale
