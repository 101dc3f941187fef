"""Paths in requests, resolved inside the Jupyter server's root directory.

A path is refused (400, naming the field) before anything is opened when it is absolute,
has a ``..`` or a hidden component, or resolves (through symlinks) outside the root; a
path inside the root that is no file of the expected kind gives 404 or 400.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from nbdeploy.server.errors import ApiError

NOTEBOOK_SUFFIXES = (".ipynb",)
RUNNABLE_SUFFIXES = (".ipynb", ".yaml", ".yml")


def _relative_parts(text: str, field: str) -> list[str]:
    """The components of a path relative to the root; an ApiError for an absolute, hidden
    or ``..`` path."""
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "give a path relative to the server's root", field)
    if "\\" in text or "\x00" in text:
        raise ApiError(400, f"{text!r}: use '/' between folders", field)
    relative = PurePosixPath(text)
    if relative.is_absolute() or text.startswith("~") or (len(text) > 1 and text[1] == ":"):
        raise ApiError(
            400,
            f"{text!r} is an absolute path",
            field,
            "give the path relative to the Jupyter server's root folder",
        )
    parts = [part for part in relative.parts if part not in ("", ".")]
    if ".." in parts:
        raise ApiError(400, f"{text!r} leaves the server's root folder ('..')", field)
    if any(part.startswith(".") for part in parts):
        raise ApiError(400, f"{text!r} is a hidden path", field)
    if not parts:
        raise ApiError(400, "give a path relative to the server's root", field)
    return parts


def inside_root(root_dir: str | Path, text: str, *, field: str) -> Path:
    """``text`` resolved inside the root: a file or folder that may not exist yet (an
    output), or a glob (``data/*.parquet``: its folder, and every file it matches, must be
    inside the root). An ApiError otherwise."""
    parts = _relative_parts(text, field)
    root = Path(root_dir).expanduser().resolve()
    path = root.joinpath(*parts)
    pattern = any(ch in part for part in parts for ch in "*?[")
    checked = [path.parent.resolve()] if pattern else [path.resolve()]
    if pattern:
        checked += [match.resolve() for match in path.parent.glob(path.name)]
    for resolved in checked:
        if not resolved.is_relative_to(root):
            raise ApiError(
                400, f"{text!r} leads outside the server's root folder (a symbolic link)", field
            )
    return path if pattern else path.resolve()


def resolve_in_root(
    root_dir: str | Path,
    text: str,
    *,
    field: str = "path",
    suffixes: tuple[str, ...] = NOTEBOOK_SUFFIXES,
) -> Path:
    """The file that ``text`` (relative to ``root_dir``, with ``/``) names, resolved; an
    :class:`ApiError` when it is not a file with one of ``suffixes`` inside the root."""
    parts = _relative_parts(text, field)
    root = Path(root_dir).expanduser().resolve()
    resolved = root.joinpath(*parts).resolve()
    if not resolved.is_relative_to(root):
        raise ApiError(
            400,
            f"{text!r} leads outside the server's root folder (a symbolic link)",
            field,
        )
    if resolved.suffix.lower() not in suffixes:
        raise ApiError(
            400, f"{text!r} is not a {' or '.join(repr(s) for s in suffixes)} file", field
        )
    if not resolved.is_file():
        raise ApiError(404, f"no file {text!r} in the server's root folder", field)
    return resolved
