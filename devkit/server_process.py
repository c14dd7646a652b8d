"""A headless ComfyUI with this pack, for the demo and the tests.

`running_server()` starts `main.py --cpu` on a free localhost port with a temporary base directory (input, output,
user, custom_nodes), the pack linked into its custom_nodes, and models read from an optional folder in ComfyUI's
layout. ComfyUI's own files are never changed. The server is stopped by its PID when the block ends, also on errors.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from comfy_client import ComfyClient, ComfyError

REPO = Path(__file__).resolve().parents[1]
PACK_LINK = "decoupled-ipadapter"
# Model folders passed to ComfyUI from a models directory, where present (ComfyUI's layout).
MODEL_FOLDERS = ("checkpoints", "clip_vision", "ipadapter", "controlnet", "loras", "vae", "embeddings",
                 "diffusion_models", "text_encoders", "insightface")  # fmt: skip


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_comfyui_dir() -> Path:
    return Path(os.environ.get("COMFYUI_DIR") or REPO / ".host" / "ComfyUI")


def _write_model_paths(models_dir: Path, config: Path) -> None:
    """An extra_model_paths.yaml naming the folders of `models_dir` (plain YAML, written by hand: no yaml needed)."""
    lines = ["decoupled_ipadapter_models:", f"  base_path: {json.dumps(str(models_dir.resolve()))}"]
    lines += [f"  {folder}: {folder}" for folder in MODEL_FOLDERS if (models_dir / folder).is_dir()]
    config.write_text("\n".join(lines) + "\n")


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    base: Path
    log_path: Path

    @property
    def client(self) -> "ComfyClient":
        return ComfyClient(self.url)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log()[-chars:]


def _wait_until_ready(server: Server, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise ComfyError(f"ComfyUI exited with code {code} while starting. Its log:\n{server.log_tail()}")
        try:
            if requests.get(f"{server.url}/system_stats", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ComfyError(f"ComfyUI did not answer on {server.url} within {timeout:.0f} s. Its log:\n{server.log_tail()}")


def _stop(process: subprocess.Popen, *, grace: float = 15.0) -> None:
    """Terminate the server by its PID, then kill it if it has not gone after `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)


class ServerProcess:
    """`main.py` of a ComfyUI tree on a free localhost port with its own temporary base directory (input, output,
    user, custom_nodes with this pack linked in, plus any `extra_custom_nodes` pack folders). `start()` can be called
    again after `kill()`: the same URL and base directory, as a server that crashed and was restarted (its queue
    and /history are lost, its output folder is kept). `threads` sets OMP_NUM_THREADS: servers sharing a small
    machine are faster with one thread each than oversubscribed."""

    def __init__(self, *, comfyui_dir: Path, python: str, models_dir: Path | None, startup_timeout: float,
                 extra_custom_nodes=(), cpu: bool = True, threads: int | None = None):  # fmt: skip
        if not (comfyui_dir / "main.py").is_file():
            raise ComfyError(f"{comfyui_dir} is not a ComfyUI folder (no main.py); set COMFYUI_DIR")
        self.comfyui_dir = comfyui_dir
        self.startup_timeout = startup_timeout
        self.base = Path(tempfile.mkdtemp(prefix="comfyui-base-"))
        custom_nodes = self.base / "custom_nodes"
        custom_nodes.mkdir()
        (custom_nodes / PACK_LINK).symlink_to(REPO, target_is_directory=True)
        for pack in extra_custom_nodes:
            pack = Path(pack).resolve()
            (custom_nodes / pack.name).symlink_to(pack, target_is_directory=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "comfyui.log"
        self.command = [
            python, str(comfyui_dir / "main.py"), "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:", "--disable-api-nodes",
            *(["--cpu"] if cpu else []),
        ]  # fmt: skip
        if os.environ.get("COMFYUI_FRONT_END_ROOT"):  # another front-end than the host's (scripts/with_host.sh --frontend)
            self.command += ["--front-end-root", os.environ["COMFYUI_FRONT_END_ROOT"]]
        if models_dir is not None:
            config = self.base / "extra_model_paths.yaml"
            _write_model_paths(Path(models_dir), config)
            self.command += ["--extra-model-paths-config", str(config)]
        self.env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
        self.server: Server | None = None

    def start(self) -> Server:
        with open(self.log_path, "ab") as log:
            # Its own session: a Ctrl-C reaches this process, which then stops the server in order.
            process = subprocess.Popen(
                self.command, cwd=self.comfyui_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=self.env,
            )  # fmt: skip
        self.server = Server(url=self.url, process=process, base=self.base, log_path=self.log_path)
        _wait_until_ready(self.server, timeout=self.startup_timeout)
        return self.server

    def kill(self) -> None:
        """Stops the server at once (SIGKILL), as a crash would."""
        if self.server is not None and self.server.process.poll() is None:
            self.server.process.kill()
            self.server.process.wait(timeout=30)

    def close(self) -> None:
        if self.server is not None:
            _stop(self.server.process)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def server_process(*, comfyui_dir: Path | None = None, python: str = sys.executable, models_dir: Path | None = None,
                   startup_timeout: float = 180.0, extra_custom_nodes=(), cpu: bool = True,
                   threads: int | None = None):  # fmt: skip
    """Yields a started `ServerProcess`; stopped by its PID and its base directory removed when the block ends."""
    process = ServerProcess(
        comfyui_dir=Path(comfyui_dir or default_comfyui_dir()), python=python, models_dir=models_dir,
        startup_timeout=startup_timeout, extra_custom_nodes=extra_custom_nodes, cpu=cpu, threads=threads,
    )  # fmt: skip
    try:
        process.start()
        yield process
    finally:
        process.close()


@contextlib.contextmanager
def running_server(*, comfyui_dir: Path | None = None, python: str = sys.executable, models_dir: Path | None = None,
                   extra_custom_nodes=(), startup_timeout: float = 180.0, cpu: bool = True):  # fmt: skip
    """Yields a started `Server`; `extra_custom_nodes` are further pack folders (test-only nodes) to link in."""
    with server_process(comfyui_dir=comfyui_dir, python=python, models_dir=models_dir,
                        extra_custom_nodes=extra_custom_nodes, startup_timeout=startup_timeout, cpu=cpu) as process:  # fmt: skip
        yield process.server


