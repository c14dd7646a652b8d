"""Model files for the loader nodes: finding a name in a ComfyUI model folder, and one copy of each file version
while something uses it."""

import os
import weakref
from collections.abc import Callable, Hashable

import folder_paths

from ..ipadapter_core.errors import IPAdapterError


def model_file_path(folder: str, name: str) -> str:
    """The full path of `name` in ComfyUI's `folder` model folders; a clear error when it is not there."""
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(folder))
        raise IPAdapterError(
            f"'{name}' is not in the {folder} model folders ({folders}). "
            "Put the file there (or fix the name), then refresh the node list."
        )
    return path


class LoadedFiles:
    """The files loaded and still in use, keyed by path, modification time and size (and `variant`): a re-run or a
    second loader node on the same file shares the same weights, and an edited file is read again.

    It holds them weakly, so ComfyUI's memory management decides how long a file stays in memory: once no node
    output in ComfyUI's cache and no loaded model refers to it (after `/free`, a cache eviction, another workflow),
    it is released, and the next use reads it again."""

    def __init__(self):
        self._in_use = weakref.WeakValueDictionary()

    def get(self, path: str, load: Callable[[str], object], *, variant: Hashable = ()) -> object:
        status = os.stat(path)
        key = (os.path.realpath(path), status.st_mtime_ns, status.st_size, variant)
        loaded = self._in_use.get(key)
        if loaded is None:
            loaded = load(path)
            self._in_use[key] = loaded
        return loaded
