"""Training helpers used by :mod:`vca_gen.training` (set-up checks, sample grids, in-loop FID)."""
