"""Timestep respacing: improved-DDPM's ``space_timesteps`` rule and the respaced β.

A respaced chain keeps a subset S of the original steps and redefines
``β'_k = 1 − ᾱ_{s_k} / ᾱ_{s_{k-1}}`` so that ᾱ on the kept steps is unchanged. The model is
still called with the *original* index ``s_k`` (``timestep_map[k]``), without any rescaling.
"""

from __future__ import annotations

import numpy as np


def space_timesteps(num_timesteps: int, section_counts: str | int | list) -> list[int]:
    """Sorted list of original timesteps to keep.

    ``section_counts``: ``"ddimN"`` → the integer stride ``i`` (smallest first) such that
    ``range(0, T, i)`` has exactly ``N`` elements; otherwise a comma list (or int) of counts:
    ``T`` is split into ``len(counts)`` near-equal sections (the first ``T % len`` one step
    longer) and each section is sampled at ``count`` evenly spaced, rounded, fractional strides
    ``(size − 1)/(count − 1)`` from its start.
    """
    if isinstance(section_counts, (int, np.integer)):
        counts = [int(section_counts)]
    elif isinstance(section_counts, (list, tuple)):
        counts = [int(c) for c in section_counts]
    else:
        spec = str(section_counts).strip().lower()
        if spec.startswith("ddim"):
            try:
                desired = int(spec[4:])
            except ValueError:
                raise ValueError(f"bad respacing {section_counts!r}: expected 'ddimN' with an integer N") from None
            if desired < 1:
                raise ValueError(f"steps must be >= 1, got {section_counts!r}")
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            if desired == 1:  # stride >= T (improved-DDPM's loop stops at T - 1)
                return [0]
            raise ValueError(f"cannot create exactly {desired} steps from {num_timesteps} with an integer stride")
        try:
            counts = [int(c) for c in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"bad respacing {section_counts!r}: expected an int, 'N', 'N1,N2,...' or 'ddimN'"
            ) from None
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"steps must be >= 1 in every section, got {section_counts!r}")
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide a section of {size} steps into {count} (num_timesteps={num_timesteps})")
        step = 1.0 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0  # accumulated (not j * step) and Python-rounded, exactly as improved-DDPM
        for _ in range(count):
            kept.append(start + round(pos))
            pos += step
        start += size
    return sorted(set(kept))


def respace_betas(alphas_cumprod: np.ndarray, use_timesteps: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(β' of the kept steps, timestep_map) with ᾱ'_k = ᾱ_{use_timesteps[k]}."""
    keep = np.asarray(sorted(set(int(t) for t in use_timesteps)), dtype=np.int64)
    if keep.size == 0 or keep[0] < 0 or keep[-1] >= len(alphas_cumprod):
        raise ValueError(f"timesteps to keep must lie in 0..{len(alphas_cumprod) - 1}")
    ac = np.asarray(alphas_cumprod, dtype=np.float64)[keep]
    prev = np.concatenate([[1.0], ac[:-1]])
    return 1.0 - ac / prev, keep
