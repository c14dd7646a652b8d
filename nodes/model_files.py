"""Model files for the loader nodes: finding a name in a ComfyUI model folder, and loading each file version once."""

import os
from collections import OrderedDict
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
    """The last `size` files loaded, keyed by path, modification time and size (and `variant`): a re-run or a second
    loader node on the same file shares the same weights, and an edited file is read again."""

    def __init__(self, *, size: int):
        self.size = size
        self._loaded: OrderedDict = OrderedDict()

    def get(self, path: str, load: Callable[[str], object], *, variant: Hashable = ()) -> object:
        status = os.stat(path)
        key = (os.path.realpath(path), status.st_mtime_ns, status.st_size, variant)
        if key not in self._loaded:
            self._loaded[key] = load(path)
            while len(self._loaded) > self.size:
                self._loaded.popitem(last=False)
        self._loaded.move_to_end(key)
        return self._loaded[key]
