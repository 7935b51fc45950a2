#!/usr/bin/env python
"""Test-only launcher: run one of the project's commands in this process with injected faults.

    python tests/hooked_cli.py [FAULT OPTIONS] SCRIPT [ARGS ...]

SCRIPT is the path of ``train.py``, ``sample.py``, ``extract_latents.py``, ``sweep.py`` or
``evaluate_fid.py``; its ``main`` is called with ``ARGS`` and with the faults built from the options
below (:class:`vca_gen.utils.faults.Faults`), so production code never reads a test hook from the
environment. It works under ``accelerate launch`` (give this file as the script) and in processes
started by hand. ``RANK:`` options apply only to the process of that global rank (``RANK`` as the
launcher set it, 0 when unset).

    --save-pause S            checkpoint writes pause S seconds half-way
    --step-sleep S            training sleeps S seconds after every step
    --stall-step RANK:STEP:S  that rank sleeps S seconds once, before training step STEP
    --hide-checkpoint RANK:F  that rank does not see file F of the checkpoint training resumes from
    --shard-sleep RANK:S      that rank sleeps S seconds before each of its shards (sample, extract)
    --hide-shards RANK:K,..   that rank does not see finished sampling shards K, ...
    --fail-stage CELL:STAGE   (sweep.py) that stage's command is replaced by one exiting 9

``sweep.py`` runs its cells' stages through this launcher again, with the same fault options.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

OPTIONS = (
    "--save-pause",
    "--step-sleep",
    "--stall-step",
    "--hide-checkpoint",
    "--shard-sleep",
    "--hide-shards",
    "--fail-stage",
)


def split(argv: list[str]) -> tuple[list[tuple[str, str]], str, list[str]]:
    """(fault options as (name, value) pairs, the script, its arguments)."""
    opts, i = [], 0
    while i < len(argv) and argv[i].startswith("--"):
        if argv[i] not in OPTIONS or i + 1 >= len(argv):
            sys.exit(f"hooked_cli.py: unknown option or missing value: {argv[i]} (accepted: {', '.join(OPTIONS)})")
        opts.append((argv[i], argv[i + 1]))
        i += 2
    if i >= len(argv):
        sys.exit("hooked_cli.py: no script given")
    return opts, argv[i], argv[i + 1 :]


def for_rank(value: str, rank: int) -> str | None:
    """The value of a ``RANK:VALUE`` option for this process's rank, or None."""
    r, sep, v = value.partition(":")
    if not sep:
        sys.exit(f"hooked_cli.py: expected RANK:VALUE, got {value!r}")
    return v if int(r) == rank else None


def faults_for(opts: list[tuple[str, str]], rank: int):
    from vca_gen.utils.faults import Faults

    kw: dict = {}
    for name, value in opts:
        if name == "--save-pause":
            kw["save_pause_s"] = float(value)
        elif name == "--step-sleep":
            kw["step_sleep_s"] = float(value)
        elif name == "--stall-step" and (v := for_rank(value, rank)) is not None:
            step, _, seconds = v.partition(":")
            kw["stall_step"], kw["stall_s"] = int(step), float(seconds)
        elif name == "--hide-checkpoint" and (v := for_rank(value, rank)) is not None:
            kw["hidden_checkpoint_files"] = (*kw.get("hidden_checkpoint_files", ()), v)
        elif name == "--shard-sleep" and (v := for_rank(value, rank)) is not None:
            kw["shard_sleep_s"] = float(v)
        elif name == "--hide-shards" and (v := for_rank(value, rank)) is not None:
            kw["hidden_shards"] = tuple(int(k) for k in v.split(",") if k.strip())
    return Faults(**kw)


def main(argv: list[str]) -> int:
    from vca_gen.utils.dist import launched

    opts, script, args = split(argv)
    path = Path(script).resolve()
    spec = importlib.util.spec_from_file_location(f"hooked_{path.stem}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the script's own ``if __name__ == "__main__"`` does not run
    params = inspect.signature(module.main).parameters
    kw: dict = {}
    if "faults" in params:
        kw["faults"] = faults_for(opts, launched().rank)
    if "hooks" in params:  # sweep.py: its stages run through this launcher with the same options
        from vca_gen.sweep.plan import StageHooks

        passed = [x for name, value in opts if name != "--fail-stage" for x in (name, value)]
        kw["hooks"] = StageHooks(
            launcher=(str(Path(__file__).resolve()), *passed),
            fail=tuple(value for name, value in opts if name == "--fail-stage"),
        )
    sys.argv = [str(path), *args]
    return int(module.main(args, **kw) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
