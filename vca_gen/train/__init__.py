"""Training helpers used by :mod:`vca_gen.train.trainer` (set-up checks, sample grids, in-loop FID)."""
