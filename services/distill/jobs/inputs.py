"""Where a job may read its input files from: the data dir (which the front and the workers share) and the
packaged demo folder, nowhere else.

A job's params come from whoever may call SubmitJob, and the front answers before anything is queued, so an
unconfined path would let a caller probe the server's files ("/etc/shadow: not a readable parquet file").
The path is resolved (symlinks followed, `..` folded) and checked against the allowed folders *before* it
is looked at, and the refusal reads the same whether or not something exists there.

    path = input_file("bench.parquet", data_dir, field="params.benchmark", what="benchmark file")
"""

from __future__ import annotations

import os
from pathlib import Path

from escalon.errors import InvalidInput, shown

INPUT_DIRS_ENV = "ESCALON_DISTILL_INPUT_DIRS"



def allowed_roots(data_dir: Path) -> tuple[Path, ...]:
    """The data dir, the packaged demo folder, then the operator's ESCALON_DISTILL_INPUT_DIRS (folders
    separated by os.pathsep, e.g. a shared benchmark volume); set the same on the front and the workers."""
    extra = [Path(p).expanduser().resolve() for p in os.environ.get(INPUT_DIRS_ENV, "").split(os.pathsep) if p]
    return Path(data_dir).expanduser().resolve(), _demo_dir(), *extra


def _demo_dir() -> Path:
    import escalon

    return (Path(next(iter(escalon.__path__))) / "demo").resolve()


def confined(path_text: str, data_dir: Path, *, field: str, extra: tuple[Path, ...] = ()) -> Path:
    """The resolved path, or InvalidInput when it lies outside the data dir and the packaged demo folder.
    Relative paths are read against the data dir."""
    if "\x00" in path_text:
        raise InvalidInput("a path cannot contain NUL characters", field=field)
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        path = Path(data_dir) / path
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError):
        resolved = None
    roots = (*allowed_roots(data_dir), *(r.resolve() for r in extra))
    if resolved is None or not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise InvalidInput(
            f"{shown(path_text)} is outside the folders jobs may read: the data dir ({roots[0]}; relative paths "
            f"are read against it), the packaged demo folder ({roots[1]}) and {INPUT_DIRS_ENV}", field=field)
    return resolved


def input_file(path_text: str, data_dir: Path, *, field: str, what: str, extra: tuple[Path, ...] = ()) -> Path:
    """confined(), and the file must exist: the not-found message comes only for paths inside."""
    path = confined(path_text, data_dir, field=field, extra=extra)
    if not path.is_file():
        raise InvalidInput(f"no {what} at {shown(str(path), 200)} (relative paths are read against the data dir)",
                           field=field)
    return path


def configured_catalogue() -> tuple[Path, ...]:
    """The catalogue the operator configured (ESCALON_CATALOGUE), which a job may name as well."""
    configured = os.environ.get("ESCALON_CATALOGUE")
    return (Path(configured).expanduser(),) if configured else ()


def model_cache() -> tuple[Path, ...]:
    """The serving model cache (ESCALON_MODEL_CACHE), where a job may also be told to keep its models."""
    cache = os.environ.get("ESCALON_MODEL_CACHE")
    return (Path(cache).expanduser(),) if cache else ()
