"""Latent extraction: ``python -m vca_gen.data.extract --images DIR --out STORE [options]``.

Encodes every image of a class-folder tree (ADM centre crop, as training uses) *and its horizontal
flip* with a diffusers ``AutoencoderKL`` and stores the posterior mean and std (format:
:mod:`vca_gen.data.latents`), so training draws a fresh latent sample every step.

Multi-process (``accelerate launch [--num_processes P] -m vca_gen.data.extract ...``): shard ``k``
covers source indices ``[k*shard_size, (k+1)*shard_size)``. The main process holds a
:class:`~vca_gen.utils.lock.RunLock` (purpose ``"extract"``) on the store, checks / pins the options,
verifies the finished shards and decides which shards remain; that decision is broadcast and every
rank checks it sees the same ``extract_params.json`` (these start-up collectives are the only ones,
all short; ``--timeout-s`` bounds them). The remaining shards are dealt round-robin, so no two
processes write the same file; each shard goes to ``shard_XXXXX.safetensors.tmp`` and is renamed,
then its record ``shard_XXXXX.json`` (sha256, count, channel sums) is written the same way, and the
rank leaves. The main process, after its own share, waits for every record *on disk* (polling the
files with a sleep, no collective, so a slow rank never trips the process-group timeout) and writes
``manifest.json`` (last, atomically).

Resume: re-run the same command. A shard whose record exists and whose sha256 matches is skipped;
anything else (missing, ``.tmp`` leftovers, corrupt) is recomputed. The options that change the
content (images, image size, VAE, dtypes, shard size, ...) are pinned in ``extract_params.json`` and
must match on resume. Unreadable images stop the run with an error naming the file, unless
``--skip-unreadable`` (then they are left out and listed in ``manifest["skipped"]``). A VAE that
gives non-finite latents (inf / nan) stops the run with an error naming the images; nothing of that
shard is stored. ``--dtype float16`` with a VAE whose config sets ``force_upcast`` encodes in fp32
(``manifest["vae"]["compute_dtype"]``).

Exit status: 0 done; 2 bad input (images, VAE, options, non-finite latents, store locked by another
extraction, ranks not seeing the same store, options differing from the store's pinned ones, a damaged
``extract_params.json``). Options are checked (types and ranges, :mod:`vca_gen.utils.cli_types`; the
image root and the store path) before anything is loaded or written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from vca_gen.data.config import DEFAULT_SCALE_FACTOR, DEFAULT_VAE
from vca_gen.data.images import ImageFolderDataset, UnreadableImageError, to_tensor_pm1
from vca_gen.data.latents import FORMAT, MANIFEST, VERSION, shard_name, write_json_atomic
from vca_gen.data.vae import encode_moments, load_vae, parse_dtype, vae_downsample_factor
from vca_gen.errors import UserError, exit_status, report
from vca_gen.utils import cli_types as T
from vca_gen.utils import dist
from vca_gen.utils.faults import Faults
from vca_gen.utils.io import atomic_save_tensors, sha256_file

PARAMS = "extract_params.json"
STORE_DTYPES = ("float32", "float16", "bfloat16")
LOCK_PURPOSE = "extract"
LOCK_HEARTBEAT_S = 600.0
POLL_S = 0.25  # how often the main process looks for the other ranks' shard records


class ExtractionError(UserError, ValueError):
    """Extraction cannot go on (non-finite latents, ranks disagreeing, another rank failed)."""


class PinnedOptionsError(ExtractionError, SystemExit):
    """Options differing from the store's pinned ones: a user error (exit 2); also a ``SystemExit``, as
    callers of :func:`extract` have always caught it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = 2


class _ShardItems(Dataset):
    """Source images ``start..end-1`` for extraction: (x (3,S,S), label, index, ok)."""

    def __init__(self, folder: ImageFolderDataset, start: int, end: int, skip_unreadable: bool):
        self.folder, self.start, self.end, self.skip = folder, start, end, skip_unreadable

    def __len__(self) -> int:
        return self.end - self.start

    def __getitem__(self, i: int):
        index = self.start + i
        try:
            arr, label = self.folder.load_image(index)  # strict folder: raises on unreadable files
        except UnreadableImageError:
            if not self.skip:
                raise
            s = self.folder.image_size
            return torch.zeros(3, s, s), label_of(self.folder, index), index, False
        return to_tensor_pm1(arr), label, index, True


def label_of(folder: ImageFolderDataset, index: int) -> int:
    return folder.samples[index][1]


def shard_complete(out: Path, k: int) -> bool:
    """True when shard ``k`` and its record exist and the checksum matches."""
    rec_path, f = out / f"shard_{k:05d}.json", out / shard_name(k)
    if not (rec_path.is_file() and f.is_file()):
        return False
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError):  # torn, not UTF-8, not JSON: recomputed
        return False
    if not isinstance(rec, dict):
        return False
    return rec.get("bytes") == f.stat().st_size and rec.get("sha256") == sha256_file(f)


@torch.no_grad()
def extract_shard(
    vae,
    folder: ImageFolderDataset,
    out: Path,
    k: int,
    shard_size: int,
    batch_size: int,
    num_workers: int,
    store_dtype: torch.dtype,
    skip_unreadable: bool,
) -> dict:
    """Encode source images of shard ``k`` (and flips), write shard + record; return the record."""
    start, end = k * shard_size, min((k + 1) * shard_size, len(folder))
    loader = DataLoader(
        _ShardItems(folder, start, end, skip_unreadable), batch_size=batch_size, num_workers=num_workers, shuffle=False
    )
    means, stds, labels, indices, skipped = [], [], [], [], []
    for x, y, idx, ok in loader:
        for i in idx[~ok].tolist():
            skipped.append({"index": i, "path": os.path.relpath(folder.samples[i][0], folder.root)})
        x, y, idx = x[ok], y[ok], idx[ok]
        if len(x) == 0:
            continue
        both = torch.cat([x, x.flip(-1)])  # (2B, 3, S, S): originals then flips
        mean, std = encode_moments(vae, both)  # (2B, c, h, w) each
        b = len(x)
        check_finite(mean, std, idx, folder, k)
        means.append(torch.stack([mean[:b], mean[b:]], 1).cpu())  # (B, 2, c, h, w)
        stds.append(torch.stack([std[:b], std[b:]], 1).cpu())
        labels.append(y.long())
        indices.append(idx.long())
    if not means:
        raise RuntimeError(f"shard {k} (source images {start}..{end - 1}) has no readable image")
    mean, std = torch.cat(means), torch.cat(stds)
    tensors = {
        "mean": mean.to(store_dtype).contiguous(),
        "std": std.to(store_dtype).contiguous(),
        "labels": torch.cat(labels).contiguous(),
        "indices": torch.cat(indices).contiguous(),
    }
    f = out / shard_name(k)
    # atomic, mode per umask, a full disk reported (exit 75); one metadata key: safetensors orders them randomly
    atomic_save_tensors(f, tensors, {"format": "pt"}, what=f"latent shard {k}", resumable=True)
    # channel sums of posterior samples z = mean + std * eps over both copies (float64, exact order).
    m64, s64 = tensors["mean"].double(), tensors["std"].double()
    rec = {
        "file": f.name,
        "start": start,
        "end": end,
        "count": len(tensors["labels"]),
        "bytes": f.stat().st_size,
        "sha256": sha256_file(f),
        "skipped": skipped,
        "sum_mean": m64.sum(dim=(0, 1, 3, 4)).tolist(),
        "sum_sq": (m64**2 + s64**2).sum(dim=(0, 1, 3, 4)).tolist(),
        "n_per_channel": int(m64[:, :, 0].numel()),
    }
    write_json_atomic(out / f"shard_{k:05d}.json", rec)
    return rec


def check_finite(mean: torch.Tensor, std: torch.Tensor, idx: torch.Tensor, folder: ImageFolderDataset, k: int) -> None:
    """Refuse non-finite posterior moments of a batch (rows: originals then flips), naming the images."""
    ok = torch.isfinite(mean).flatten(1).all(1) & torch.isfinite(std).flatten(1).all(1)
    if bool(ok.all()):
        return
    b = len(idx)
    bad: dict = {}
    for r in (~ok).nonzero().flatten().tolist():
        bad.setdefault(int(idx[r % b]), []).append("flipped" if r >= b else "original")
    names = ", ".join(
        f"index {i} ({os.path.relpath(folder.samples[i][0], folder.root)}, {'+'.join(c)})"
        for i, c in sorted(bad.items())
    )
    raise ExtractionError(
        f"the VAE gave non-finite latents (inf/nan) for {len(bad)} image(s) of shard {k}: {names}; nothing of "
        f"shard {k} was stored. Check those images; with --dtype float16/bfloat16 try --dtype float32"
    )


def build_manifest(
    out: Path, params: dict, folder: ImageFolderDataset, vae_info: dict, num_shards: int, per_channel: bool
) -> dict:
    recs = [json.loads((out / f"shard_{k:05d}.json").read_text()) for k in range(num_shards)]
    n = sum(r["n_per_channel"] for r in recs)
    mean = [sum(r["sum_mean"][c] for r in recs) / n for c in range(vae_info["latent_channels"])]
    var = [sum(r["sum_sq"][c] for r in recs) / n - mean[c] ** 2 for c in range(len(mean))]
    std = [max(v, 0.0) ** 0.5 for v in var]
    norm = (
        {"kind": "per_channel", "mean": mean, "std": std}
        if per_channel
        else {"kind": "scale", "scale_factor": params["scale_factor"]}
    )
    f = params["image_size"] // vae_info["downsample"]
    return {
        "format": FORMAT,
        "version": VERSION,
        "count": sum(r["count"] for r in recs),
        "num_source_images": len(folder),
        "image_size": params["image_size"],
        "image_channels": 3,
        "latent_shape": [vae_info["latent_channels"], f, f],
        "copies": ["original", "hflip"],
        "vae": vae_info,
        "normalization": norm,
        "latent_stats": {"mean": mean, "std": std},
        "store_dtype": params["store_dtype"],
        "classes": folder.classes,
        "num_classes": len(folder.classes),
        "shard_size": params["shard_size"],
        "shards": [{k: r[k] for k in ("file", "start", "end", "count", "bytes", "sha256")} for r in recs],
        "skipped": [s for r in recs for s in r["skipped"]],
    }


def pin_params(out: Path, params: dict, write: bool = True) -> None:
    """Check the content-defining options against an earlier (interrupted) run, or record them
    (``write``: main process only; every rank checks, so a mismatch stops all of them)."""
    if out.exists() and not out.is_dir():
        raise ExtractionError(f"--out {out} exists and is not a directory; accepted: a store directory")
    p = out / PARAMS
    if p.is_file():
        try:
            old = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            old = e
        if not isinstance(old, dict):
            raise ExtractionError(
                f"{p} is damaged ({type(old).__name__}: {old}); it pins the options of the store {out}: restore "
                f"it, or extract into a new --out directory"
            )
        diff = {k: (old.get(k), params[k]) for k in params if old.get(k) != params[k]}
        if diff:
            lines = "\n  ".join(f"{k}: store has {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise PinnedOptionsError(
                f"{out} was extracted with different options:\n  {lines}\n"
                f"Use the original options to resume, or a new --out directory."
            )
    elif write:
        write_json_atomic(p, params)


def _marker(out: Path, rank: int) -> Path:
    return out / f".rank_{rank:05d}.failed"


def _wait_for_records(out: Path, num_shards: int) -> None:
    """Main process: poll until every shard record is on disk (no collective); stop if a rank failed."""
    for k in range(num_shards):
        while not (out / f"shard_{k:05d}.json").is_file():
            for m in sorted(out.glob(".rank_*.failed")):
                try:
                    info = json.loads(m.read_text())
                except (OSError, ValueError):
                    continue
                raise ExtractionError(
                    f"rank {info.get('rank')} failed ({info.get('message')}); re-run the same command to resume {out}"
                )
            time.sleep(POLL_S)


def leftovers(out: Path) -> list[Path]:
    """Temporary files a killed run can leave in a store: ``shard_*.tmp`` (shard before its rename),
    ``.shard_*.tmp`` (a record being written atomically), safetensors' own ``.tmpXXXXXX`` and the
    failure markers of the ranks."""
    found = list(out.glob("shard_*.tmp")) + list(out.glob(".shard_*.tmp")) + list(out.glob(".rank_*.failed"))
    return found + [p for p in out.glob(".tmp??????") if p.is_file()]


def _decide(group: dist.Collectives, outp: Path, params: dict, num_shards: int):
    """The one decision (:func:`vca_gen.utils.dist.agree`): the main process locks the store, pins
    the options, verifies finished shards and decides the shards to do; every rank checks it sees the
    same pinned options. Returns (todo, the main process's lock or None)."""
    held: list = []

    def decide() -> dict:
        pin_params(outp, params, write=False)  # before anything is created
        from vca_gen.utils.lock import RunLock

        held.append(RunLock(outp, LOCK_PURPOSE, heartbeat_s=LOCK_HEARTBEAT_S).acquire())
        pin_params(outp, params)
        todo = [k for k in range(num_shards) if not shard_complete(outp, k)]
        for k in todo:  # the main waits for these records: no stale one may remain
            (outp / f"shard_{k:05d}.json").unlink(missing_ok=True)
        for stale in leftovers(outp):
            stale.unlink(missing_ok=True)  # of a killed run (nobody writes yet: we hold the lock)
        return {"todo": todo, "params_sha256": sha256_file(outp / PARAMS)}

    def verify(decision: dict) -> str | None:
        p = outp / PARAMS
        if not p.is_file():
            return f"it cannot see {p}, which the main process wrote"
        if sha256_file(p) != decision["params_sha256"]:
            return f"its {p} differs from the main process's (another directory, or not synced)"
        return None

    decision = dist.agree(
        group,
        decide,
        verify,
        error=ExtractionError,
        failure=f"does not see the store {outp} as the main process does",
        advice="Every rank must see the same --out (shared storage); nothing was extracted",
        undo=lambda: [lock.release() for lock in held],
    )
    return decision["todo"], (held[0] if held else None)


def extract(
    images: str,
    out: str,
    vae: str = DEFAULT_VAE,
    vae_subfolder: str | None = None,
    image_size: int = 256,
    batch_size: int = 32,
    shard_size: int = 4096,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
    per_channel_stats: bool = False,
    num_workers: int = 4,
    dtype: str = "float32",
    store_dtype: str = "float32",
    skip_unreadable: bool = False,
    timeout_s: float = dist.DEFAULT_TIMEOUT_S,
    faults: Faults | None = None,
) -> dict | None:
    """Run (or resume) an extraction on this process's share of the shards; the main process returns
    the manifest, other ranks ``None``. Works single-process or under ``accelerate launch``.
    ``faults``: injected by tests (``shard_sleep_s``: this process sleeps before each shard)."""
    state = dist.setup(timeout_s, "--timeout-s")
    if store_dtype not in STORE_DTYPES:
        raise ExtractionError(f"--store-dtype {store_dtype!r} is not valid; accepted: {list(STORE_DTYPES)}")
    for name, v in (("image-size", image_size), ("batch-size", batch_size), ("shard-size", shard_size)):
        if int(v) <= 0:
            raise ExtractionError(f"--{name} must be a positive integer, got {v}")
    _check_scale_factor(scale_factor)
    folder = ImageFolderDataset(images, image_size, random_flip=False, strict=True)
    outp = Path(out)
    import diffusers  # noqa: F401 - imported by every rank now: the main-first wait is only the load itself

    model, _ = dist.main_first(
        state,
        lambda: load_vae(vae, subfolder=vae_subfolder, dtype=parse_dtype(dtype), device=state.device),
        error=ExtractionError,
        failure=f"could not load the VAE {vae}",
    )
    down = vae_downsample_factor(model)
    if image_size % down:
        raise ExtractionError(f"--image-size {image_size} is not divisible by the VAE down-sampling factor {down}")
    vae_info = {
        "id": vae,
        "subfolder": vae_subfolder,
        "dtype": dtype,
        "compute_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "latent_channels": int(model.config.latent_channels),
        "downsample": down,
    }
    params = {
        "images": str(Path(images).resolve()),
        "num_source_images": len(folder),
        "image_size": image_size,
        "vae": vae,
        "vae_subfolder": vae_subfolder,
        "dtype": dtype,
        "store_dtype": store_dtype,
        "shard_size": shard_size,
        "scale_factor": scale_factor,
        "per_channel_stats": per_channel_stats,
        "skip_unreadable": skip_unreadable,
    }
    num_shards = -(-len(folder) // shard_size)
    todo, lock = _decide(state, outp, params, num_shards)
    try:
        mine = todo[state.process_index :: state.num_processes]
        sleep = faults.shard_sleep_s if faults is not None else 0.0
        from tqdm.auto import tqdm

        try:
            for k in tqdm(mine, desc=f"extract rank {state.process_index}", disable=not state.is_local_main_process):
                if sleep:
                    time.sleep(sleep)
                extract_shard(
                    model,
                    folder,
                    outp,
                    k,
                    shard_size,
                    batch_size,
                    num_workers,
                    parse_dtype(store_dtype),
                    skip_unreadable,
                )
        except Exception as e:
            if not state.is_main_process:
                with contextlib.suppress(OSError):
                    write_json_atomic(
                        _marker(outp, state.process_index),
                        {"rank": state.process_index, "message": f"{type(e).__name__}: {e}"},
                    )
            raise
        if not state.is_main_process:
            return None
        _wait_for_records(outp, num_shards)
        manifest = build_manifest(outp, params, folder, vae_info, num_shards, per_channel_stats)
        for stale in outp.glob("shard_*.tmp"):  # every shard is renamed into place by now
            stale.unlink()
        write_json_atomic(outp / MANIFEST, manifest)
        return manifest
    finally:
        if lock is not None:
            lock.release()


def build_parser() -> argparse.ArgumentParser:
    """``extract_latents.py``'s options (the docs' option table is generated from it)."""
    ap = argparse.ArgumentParser(
        prog="extract_latents.py",
        description="Encode an image-folder tree (and its flips) into a sharded latent store.",
    )
    ap.add_argument("--images", required=True, type=T.nonempty, help="class-folder root: DIR/<class>/<image>")
    ap.add_argument("--out", required=True, type=T.output_path, help="store directory (created; re-run to resume)")
    ap.add_argument(
        "--vae",
        default=DEFAULT_VAE,
        type=T.nonempty,
        help=f"hub id or local AutoencoderKL folder (default {DEFAULT_VAE})",
    )
    ap.add_argument(
        "--vae-subfolder", default=None, type=T.nonempty, help="subfolder inside --vae (e.g. 'vae' of a pipeline)"
    )
    ap.add_argument("--image-size", type=T.positive_int, default=256, help="ADM centre-crop resolution (default 256)")
    ap.add_argument("--batch-size", type=T.positive_int, default=32, help="images per VAE call (x2 with flips)")
    ap.add_argument("--shard-size", type=T.positive_int, default=4096, help="source images per shard")
    norm = ap.add_mutually_exclusive_group()
    norm.add_argument(
        "--scale-factor",
        type=float,
        default=DEFAULT_SCALE_FACTOR,
        help="default normalisation recorded in the manifest: z * scale (default 0.18215)",
    )
    norm.add_argument(
        "--per-channel-stats",
        action="store_true",
        help="record per-channel (z - mean_c) / std_c as the store's default normalisation",
    )
    ap.add_argument("--num-workers", type=T.non_negative_int, default=4, help="image-decoding workers per process")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(set(STORE_DTYPES) | {"fp32", "fp16", "bf16"}),
        help="VAE compute dtype",
    )
    ap.add_argument("--store-dtype", default="float32", choices=STORE_DTYPES, help="dtype of stored mean/std")
    ap.add_argument(
        "--skip-unreadable",
        action="store_true",
        help="leave unreadable images out (listed in the manifest) instead of stopping",
    )
    ap.add_argument(
        "--timeout-s",
        type=T.timeout_s,
        default=dist.DEFAULT_TIMEOUT_S,
        help="process-group timeout (s) of the short start-up collectives; the main process's wait "
        "for the other ranks' shards is not bounded by it (default 1800)",
    )
    return ap


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """The option values argparse's types leave open, before anything is loaded or written (one line
    naming the option, exit 2): the image root, the store path, the scale factor."""
    images, out = Path(args.images), Path(args.out)
    if not images.exists():
        raise ExtractionError(f"--images {images} does not exist; accepted: a class-folder root DIR/<class>/<image>")
    if not images.is_dir():
        raise ExtractionError(f"--images {images} is a file; accepted: a class-folder root DIR/<class>/<image>")
    if out.exists() and not out.is_dir():
        raise ExtractionError(f"--out {out} exists and is not a directory; accepted: a store directory")
    _check_scale_factor(args.scale_factor)


def _check_scale_factor(scale_factor: float) -> None:
    if not scale_factor > 0:
        raise ExtractionError(f"--scale-factor must be > 0, got {scale_factor}")
    if not math.isfinite(scale_factor):
        raise ExtractionError(f"--scale-factor must be finite, got {scale_factor}")


def main(argv: Sequence[str] | None = None, faults: Faults | None = None) -> int:
    """``extract_latents.py`` with ``argv``; ``faults``: injected by tests."""
    args = parse_args(argv)
    try:
        check_inputs(args)
        manifest = extract(
            args.images,
            args.out,
            vae=args.vae,
            vae_subfolder=args.vae_subfolder,
            image_size=args.image_size,
            batch_size=args.batch_size,
            shard_size=args.shard_size,
            scale_factor=args.scale_factor,
            per_channel_stats=args.per_channel_stats,
            num_workers=args.num_workers,
            dtype=args.dtype,
            store_dtype=args.store_dtype,
            skip_unreadable=args.skip_unreadable,
            timeout_s=args.timeout_s,
            faults=faults,
        )
    except UserError as e:
        report("extract_latents.py", e)
        return exit_status(e)
    finally:
        dist.close()
    if manifest is not None:
        print(
            f"latent store {args.out}: {manifest['count']} images x 2 copies, latents {manifest['latent_shape']}, "
            f"{len(manifest['shards'])} shards, {len(manifest['skipped'])} skipped"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
