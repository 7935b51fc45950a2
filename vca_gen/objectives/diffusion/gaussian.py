"""DiT's Gaussian diffusion: forward process, posterior, ε-parameterised reverse step, hybrid loss.

Coefficients are computed in float64 (numpy, the attributes below) and, the first time a device
needs them, copied there once as float64 tensors (:meth:`GaussianDiffusion.table`); every lookup
is then a gather on that device, cast to the dtype of the batch (no host→device copy per call).
Indices ``t`` are positions in *this* chain (0..K-1); a respaced chain keeps ``timestep_map``
(the original indices given to the model); respaced chains are cached per set of kept steps. Variances:

* learned range (model outputs 2·C channels): ``log σ² = f·log β_t + (1 − f)·log β̃_t`` with
  ``f = (v + 1)/2``, v the second half of the output;
* fixed "large": σ² = β_t (β̃_1 at t = 0), improved-DDPM/DiT's choice without learned σ;
* fixed "small": σ² = β̃_t (posterior variance, clipped at t = 0).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vca_gen.objectives.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from vca_gen.objectives.diffusion.respace import respace_betas

VARIANCE_TYPES = ("learned_range", "large", "small")


def resolve_variance(in_channels: int, out_channels: int, fixed_variance: str = "large") -> str:
    """ "learned_range" for 2·C outputs, ``fixed_variance`` for C outputs, else a clear error."""
    if fixed_variance not in ("large", "small"):
        raise ValueError(f"unknown fixed_variance {fixed_variance!r}; accepted: large, small")
    if out_channels == 2 * in_channels:
        return "learned_range"
    if out_channels == in_channels:
        return fixed_variance
    raise ValueError(
        f"diffusion objective: model outputs {out_channels} channels for {in_channels} input channels; "
        f"accepted: {in_channels} (eps, fixed variance) or {2 * in_channels} (eps + learned-range variance)"
    )


def _device_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """float64 where the device has it; MPS has no float64 and gets float32 tables."""
    return torch.float32 if dtype == torch.float64 and device.type == "mps" else dtype


def gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``table[t]`` (a gather on the table's device) shaped (B, 1, ..., 1) against ``like``, in
    ``like``'s dtype/device."""
    out = table.index_select(0, t.reshape(-1).long()).to(device=like.device, dtype=like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


def extract(arr: np.ndarray | torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``arr[t]`` shaped (B, 1, ..., 1) to broadcast against ``like``, in ``like``'s dtype/device.

    ``arr``: a device table (see :meth:`GaussianDiffusion.table`; no copy) or a NumPy array
    (copied to ``t``'s device on every call: prefer :meth:`GaussianDiffusion.extract`).
    """
    if not isinstance(arr, torch.Tensor):
        arr = torch.as_tensor(arr, device=t.device)
        arr = arr.to(_device_dtype(arr.device, arr.dtype))
    return gather(arr.to(t.device), t, like)


class GaussianDiffusion:
    """Discrete-time diffusion with β of shape (K,) and the original-index map ``timestep_map``."""

    def __init__(
        self, betas: np.ndarray, timestep_map: np.ndarray | None = None, original_num_timesteps: int | None = None
    ):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        self.timestep_map = np.arange(len(betas)) if timestep_map is None else np.asarray(timestep_map, dtype=np.int64)
        self.original_num_timesteps = original_num_timesteps or self.num_timesteps

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # posterior q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        pv1 = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(pv1, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)
        self.log_variance_large = np.log(np.append(pv1, betas[1:]))
        self._tables: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._respaced: dict[tuple[int, ...], GaussianDiffusion] = {}

    # -- device tables -----------------------------------------------------------------------
    def table(self, name: str, device: torch.device | str) -> torch.Tensor:
        """The NumPy table ``name`` (e.g. ``"alphas_cumprod"``, ``"timestep_map"``) as a tensor on
        ``device``: float64 (int64 for ``timestep_map``), copied the first time and cached."""
        device = torch.device(device)
        key = (name, device)
        out = self._tables.get(key)
        if out is None:
            arr = np.ascontiguousarray(getattr(self, name))
            out = torch.from_numpy(arr).to(device=device)
            out = out.to(_device_dtype(device, out.dtype))
            self._tables[key] = out
        return out

    def extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at chain indices ``t`` (B,), shaped (B, 1, ..., 1) in ``like``'s dtype."""
        return gather(self.table(name, t.device), t, like)

    # -- respacing --------------------------------------------------------------------------
    def respaced(self, use_timesteps: list[int]) -> GaussianDiffusion:
        """Chain over the kept original steps (ᾱ unchanged there, β recomputed)."""
        key = tuple(sorted(set(int(k) for k in use_timesteps)))
        chain = self._respaced.get(key)
        if chain is None:  # cached, so its device tables survive from one sample() call to the next
            betas, keep = respace_betas(self.alphas_cumprod, use_timesteps)
            chain = self._respaced[key] = GaussianDiffusion(betas, self.timestep_map[keep], self.original_num_timesteps)
        return chain

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """Original timestep indices (float) for chain indices ``t`` — what the model receives."""
        return self.table("timestep_map", t.device)[t.long()].float()

    # -- forward process ---------------------------------------------------------------------
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        e = self.extract
        return e("sqrt_alphas_cumprod", t, x_start) * x_start + e("sqrt_one_minus_alphas_cumprod", t, x_start) * noise

    def q_posterior_mean_variance(self, x_start, x_t, t):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        e = self.extract
        mean = e("posterior_mean_coef1", t, x_t) * x_start + e("posterior_mean_coef2", t, x_t) * x_t
        return mean, e("posterior_variance", t, x_t), e("posterior_log_variance_clipped", t, x_t)

    def predict_xstart_from_eps(self, x_t, t, eps):
        e = self.extract
        return e("sqrt_recip_alphas_cumprod", t, x_t) * x_t - e("sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def predict_eps_from_xstart(self, x_t, t, x_start):
        e = self.extract
        return (e("sqrt_recip_alphas_cumprod", t, x_t) * x_t - x_start) / e("sqrt_recipm1_alphas_cumprod", t, x_t)

    # -- reverse step ------------------------------------------------------------------------
    def p_mean_variance(
        self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, variance: str, clip_denoised: bool = False
    ) -> dict:
        """Mean / log-variance of p(x_{t-1} | x_t) from the raw model output.

        ``model_output``: (B, C, ...) ε, or (B, 2C, ...) [ε, v] when ``variance == "learned_range"``.
        Returns dict with ``mean``, ``log_variance``, ``pred_xstart``, ``eps`` (all (B, C, ...)).
        """
        c = x.shape[1]
        model_output = model_output.to(x.dtype)  # bf16 under autocast → the sampler's dtype
        if variance == "learned_range":
            if model_output.shape[1] != 2 * c:
                raise ValueError(f"learned-range variance needs {2 * c} output channels, got {model_output.shape[1]}")
            eps, v = model_output[:, :c], model_output[:, c:]
            frac = (v + 1.0) / 2.0
            log_beta, log_post = self.extract("log_betas", t, x), self.extract("posterior_log_variance_clipped", t, x)
            log_var = frac * log_beta + (1.0 - frac) * log_post
        elif variance in ("large", "small"):
            eps = model_output[:, :c]
            table = "log_variance_large" if variance == "large" else "posterior_log_variance_clipped"
            log_var = self.extract(table, t, x).expand_as(x)
        else:
            raise ValueError(f"unknown variance type {variance!r}; accepted: {', '.join(VARIANCE_TYPES)}")
        pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
            eps = self.predict_eps_from_xstart(x, t, pred_xstart)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "log_variance": log_var, "pred_xstart": pred_xstart, "eps": eps}

    # -- variational bound -------------------------------------------------------------------
    def vb_terms_bpd(self, model_output, x_start, x_t, t, variance: str) -> torch.Tensor:
        """Per-sample VLB term in bits/dim: KL(q(x_{t-1}|x_t,x_0) ‖ p) for t > 0, decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, variance)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)
