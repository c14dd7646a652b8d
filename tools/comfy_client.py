"""A small client for ComfyUI's HTTP API (POST /prompt, /queue, /history, /view, uploads, the websocket), and the
few edits of an API-format workflow that the tools make. Used by tools/batch_queue.py, the demo and the tests.

Needs `requests` (ComfyUI's Python has it) and, for `run_prompt` and `follow`, `websocket-client`.
"""

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_WORKFLOW = REPO / "workflows" / "api" / "01_image_prompt.json"

REJECTED = "ComfyUI rejected the prompt:"  # how a ComfyError from run_prompt begins when /prompt said 400


class ComfyError(RuntimeError):
    """Anything that went wrong with the server or a prompt, with a message meant for the user."""


def load_workflow(path: Path = EXAMPLE_WORKFLOW) -> dict:
    return json.loads(Path(path).read_text())


def nodes_of_class(prompt: dict, class_type: str) -> list[dict]:
    return [node for node in prompt.values() if node["class_type"] == class_type]


def configure(prompt: dict, *, image: str | None = None, size: int | None = None, steps: int | None = None,
              seed: int | None = None) -> dict:  # fmt: skip
    """Sets the reference image (LoadImage), the square picture size (EmptyLatentImage), steps and seed (KSampler);
    None leaves a value as the workflow has it."""
    for node in nodes_of_class(prompt, "LoadImage"):
        node["inputs"].update({} if image is None else {"image": image})
    for node in nodes_of_class(prompt, "EmptyLatentImage"):
        node["inputs"].update({} if size is None else {"width": size, "height": size})
    for node in nodes_of_class(prompt, "KSampler"):
        node["inputs"].update({key: value for key, value in (("steps", steps), ("seed", seed)) if value is not None})
    return prompt


def node_title(prompt: dict, node_id) -> str:
    node = prompt.get(str(node_id), {})
    return node.get("_meta", {}).get("title") or node.get("class_type") or f"node {node_id}"


def describe_rejection(body) -> str:
    """The text of a 400 answer to POST /prompt: the error and each node's errors."""
    if not isinstance(body, dict):
        return str(body)
    error = body.get("error", {})
    lines = [f"{error.get('message', 'prompt rejected')} {error.get('details', '')}".strip()]
    for node_id, node_error in (body.get("node_errors") or {}).items():
        for item in node_error.get("errors", []):
            where = f"node {node_id} ({node_error.get('class_type')})"
            lines.append(f"  {where}: {item.get('message')}: {item.get('details')}")
    return "\n".join(lines)


def describe_failure(entry: dict) -> str:
    """The error of a failed prompt, from its /history entry."""
    status = entry.get("status", {})
    for event, data in status.get("messages", []):
        if event == "execution_error":
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) raised "
                f"{str(data.get('exception_type')).rsplit('.', 1)[-1]}: {data.get('exception_message')}"
            )
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
    return f"status {status.get('status_str')!r} without an error message"


@dataclass
class Queued:
    """The answer to POST /prompt: a prompt id, or (status 400) the error body."""

    prompt_id: str | None
    error: dict | None = None


class ComfyClient:
    def __init__(self, url: str, *, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, **params) -> requests.Response:
        response = requests.get(f"{self.url}{path}", params=params or None, timeout=self.timeout)
        if response.status_code != 200:
            raise ComfyError(f"GET {path} answered {response.status_code}: {response.text[:2000]}")
        return response

    def system_stats(self) -> dict:
        """GET /system_stats: the server's ComfyUI version (`system.comfyui_version`), Python, devices."""
        return self._get("/system_stats").json()

    def object_info(self, node_class: str | None = None) -> dict:
        return self._get(f"/object_info/{node_class}" if node_class else "/object_info").json()

    def upload_image(self, data: bytes, name: str, *, overwrite: bool = True) -> str:
        """Stores an image (or any input file) in the input folder, `name` may hold a sub-folder (`folder/a.png`);
        returns the name LoadImage takes."""
        subfolder, _, base = name.rpartition("/")
        response = requests.post(
            f"{self.url}/upload/image",
            files={"image": (base, data, "image/png")},
            data={"type": "input", "overwrite": "true" if overwrite else "false", "subfolder": subfolder},
            timeout=self.timeout,
        )
        if response.status_code != 200:
            raise ComfyError(f"POST /upload/image answered {response.status_code}: {response.text[:2000]}")
        stored = response.json()
        return f"{stored['subfolder']}/{stored['name']}" if stored.get("subfolder") else stored["name"]

    def queue_prompt(self, prompt: dict, *, client_id: str | None = None, prompt_id: str | None = None) -> Queued:
        """POST /prompt; with `prompt_id` the prompt gets that id (ComfyUI keeps it), so a caller who lost the
        answer can still look it up in /queue and /history."""
        payload = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        payload.update({"prompt_id": prompt_id} if prompt_id else {})
        response = requests.post(f"{self.url}/prompt", json=payload, timeout=self.timeout)
        if response.status_code == 200:
            return Queued(prompt_id=response.json()["prompt_id"])
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"message": response.text[:2000]}}
        return Queued(prompt_id=None, error=body)

    def queued_prompt_ids(self) -> tuple[set, set]:
        """The ids of the prompts running and of those waiting in the server's queue (GET /queue)."""
        queue = self._get("/queue").json()
        return {item[1] for item in queue.get("queue_running", [])}, {item[1] for item in queue.get("queue_pending", [])}

    def delete_from_queue(self, prompt_ids) -> None:
        """Takes waiting prompts off the queue (POST /queue delete); a prompt already running is not touched."""
        response = requests.post(f"{self.url}/queue", json={"delete": list(prompt_ids)}, timeout=self.timeout)
        if response.status_code != 200:
            raise ComfyError(f"POST /queue answered {response.status_code}: {response.text[:2000]}")

    def output_file_if_present(self, filename: str, *, subfolder: str = "") -> bytes | None:
        """An output file's bytes (GET /view, type output), or None when the server has no such file. The output
        folder outlives a restart of the server, /history does not."""
        params = {"filename": filename, "subfolder": subfolder, "type": "output"}
        response = requests.get(f"{self.url}/view", params=params, timeout=self.timeout)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise ComfyError(f"GET /view answered {response.status_code}: {response.text[:2000]}")
        return response.content

    def history(self, prompt_id: str) -> dict | None:
        """The prompt's /history entry once it has finished (successfully or not), else None."""
        return self._get(f"/history/{prompt_id}").json().get(prompt_id)

    def history_if_answered(self, prompt_id: str) -> dict | None:
        """A quick look at /history; None also when a busy server does not answer within a few seconds."""
        try:
            response = requests.get(f"{self.url}/history/{prompt_id}", timeout=5)
            return response.json().get(prompt_id) if response.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def wait_for_history(self, prompt_id: str, *, timeout: float, poll: float = 0.5) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            if entry is not None:
                return entry
            time.sleep(poll)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    def follow(self, websocket, prompt_id: str, *, timeout: float, report=None, titles=None) -> dict:
        """Reads the websocket (opened before queueing) until the prompt ends; `report(line)` gets progress lines.

        Returns the /history entry. `titles(node_id) -> str` names nodes in the lines.
        """
        from websocket import WebSocketTimeoutException

        titles = titles or (lambda node_id: f"node {node_id}")
        report = report or (lambda line: None)
        deadline = time.monotonic() + timeout
        websocket.settimeout(5.0)
        while time.monotonic() < deadline:
            try:
                message = websocket.recv()
            except WebSocketTimeoutException:
                entry = self.history_if_answered(prompt_id)  # a missed end message must not hang us
                if entry is not None:
                    return entry
                continue
            if not isinstance(message, str):
                continue  # binary frames: previews
            event = json.loads(message)
            kind, data = event.get("type"), event.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            if kind == "execution_cached" and data.get("nodes"):
                report("cached: " + ", ".join(titles(node) for node in data["nodes"]))
            elif kind == "executing" and data.get("node") is not None:
                report(f"running: {titles(data['node'])}")
            elif kind == "progress":
                report(f"  {titles(data.get('node'))}: {data.get('value')}/{data.get('max')}")
            elif kind == "execution_error":
                report(f"error in {titles(data.get('node_id'))}: {data.get('exception_message')}")
            ended = kind in ("execution_success", "execution_error", "execution_interrupted")
            if ended or (kind == "executing" and data.get("node") is None):
                return self.wait_for_history(prompt_id, timeout=max(deadline - time.monotonic(), 10.0))
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")

    @staticmethod
    def output_images(entry: dict) -> list[dict]:
        """The image references ({filename, subfolder, type}) of every output node, in node order."""
        outputs = entry.get("outputs", {})
        return [image for node_id in sorted(outputs, key=str) for image in outputs[node_id].get("images", [])]

    def fetch(self, image: dict) -> bytes:
        return self._get(
            "/view", filename=image["filename"], subfolder=image.get("subfolder", ""), type=image.get("type", "output")
        ).content


def run_prompt(client: ComfyClient, prompt: dict, *, timeout: float, report=None) -> dict:
    """Queues `prompt`, follows it over the websocket, and returns its /history entry; raises ComfyError with
    ComfyUI's own message when the prompt is rejected or fails."""
    import websocket  # websocket-client

    client_id = uuid.uuid4().hex
    connection = websocket.create_connection(f"ws{client.url[4:]}/ws?clientId={client_id}", timeout=client.timeout)
    try:
        queued = client.queue_prompt(prompt, client_id=client_id)
        if queued.prompt_id is None:
            raise ComfyError(f"{REJECTED}\n" + describe_rejection(queued.error))
        entry = client.follow(
            connection, queued.prompt_id, timeout=timeout, report=report, titles=lambda node: node_title(prompt, node)
        )
    finally:
        connection.close()
    if entry.get("status", {}).get("status_str") != "success":
        raise ComfyError("the prompt failed: " + describe_failure(entry))
    return entry

