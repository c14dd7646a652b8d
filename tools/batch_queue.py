"""Queue many image-prompt jobs to one or more ComfyUI servers, follow them, and save each result.

    python tools/batch_queue.py --server http://127.0.0.1:8188 --images refs/ \\
        --prompts "a cat" "a lighthouse" --weights 0 0.5 1 --seeds 1 2 --out results/
    python tools/batch_queue.py --server URL1 --server URL2 --csv jobs.csv --out results/

A job is a reference image × a text prompt × λ × a seed. Each job runs an API-format workflow (default: the
example workflow) with the reference on its LoadImage, the prompt on the CLIPTextEncode wired to KSampler's
positive, λ on every DecoupledIPAdapterApply and the seed on KSampler. Results are <out>/<job id>.png with
ComfyUI's own "prompt" chunk and a "decoupled_ipadapter" chunk holding the job's parameters (JSON).

Every job is journalled in <out>/journal.jsonl before it is queued and after its result is saved, so a stopped
run (Ctrl-C, SIGTERM, a crash) started again with the same arguments skips the finished jobs and collects those
a server finished meanwhile. A job whose server dropped is looked up on that server when it is back (its queue,
its /history, then its output folder, which outlives a restart) and queued again only if it never ran there.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

try:
    import requests
    import websocket  # noqa: F401  (websocket-client: each server's progress)
    from tqdm import tqdm
except ImportError as missing:
    sys.exit(
        f"batch_queue: the Python package '{missing.name}' is missing. Install the tools' requirements: "
        f"{sys.executable} -m pip install -r {Path(__file__).resolve().parent / 'requirements.txt'}"
    )

import batch_jobs
import comfy_client
from batch_jobs import BatchError, Job
from comfy_client import ComfyClient, ComfyError

JOURNAL = "journal.jsonl"
CONNECTION_ERRORS = (requests.ConnectionError, requests.Timeout, ConnectionError, OSError)
HISTORY_CHECK_EVERY = 10.0  # seconds without websocket news after which in-flight prompts are looked up in /history


class ServerDropped(Exception):
    """The server stopped answering (connection refused or reset, websocket closed)."""


@dataclass
class Entry:
    job: Job
    id: str
    prefix: str
    submissions: int = 0


@dataclass
class Counts:
    resubmitted: int = 0  # queued again after their server dropped without having run them
    collected: int = 0  # found finished on a server after a drop or a stop, not run again
    drops: int = 0


@dataclass
class Batch:
    """What all server threads share, under `lock`."""

    out: Path
    workflow: dict
    targets: batch_jobs.Targets
    workflow_name: str
    size: int | None
    steps: int | None
    pending: list
    total: int
    bar: tqdm
    outstanding: int = 0
    failed: dict = field(default_factory=dict)  # job_id -> error
    abandoned: list = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    lock: threading.Condition = field(default_factory=threading.Condition)
    stopping: threading.Event = field(default_factory=threading.Event)
    leaving: threading.Event = field(default_factory=threading.Event)
    working_on: dict = field(default_factory=dict)  # server url -> the reference it encoded last
    states: dict = field(default_factory=dict)  # server url -> a short state for the bar

    def journal(self, record: dict) -> None:
        with self.lock:
            batch_jobs.append_record(self.out / JOURNAL, {**record, "time": round(time.time(), 3)})

    def say(self, line: str) -> None:
        with self.lock:
            self.bar.write(line)

    def show(self, server: str, state: str) -> None:
        with self.lock:
            self.states[server] = state
            self.bar.set_postfix_str(" | ".join(f"{url.split('//')[-1]}: {text}" for url, text in self.states.items()))

    def take(self, server: str) -> Entry | None:
        with self.lock:
            elsewhere = {image for url, image in self.working_on.items() if url != server}
            index = batch_jobs.pick_next(
                [entry.job for entry in self.pending], last_image=self.working_on.get(server), images_elsewhere=elsewhere
            )
            if index is None:
                return None
            entry = self.pending.pop(index)
            self.working_on[server] = entry.job.image
            return entry

    def give_back(self, entry: Entry) -> None:
        with self.lock:
            self.pending.insert(0, entry)
            self.lock.notify_all()

    def settle(self, entry: Entry, *, error: str | None = None) -> None:
        with self.lock:
            self.outstanding -= 1
            if error is None:
                self.bar.update(1)
            else:
                self.failed[entry.id] = error
                self.bar.write(f"job {entry.id} failed: {error}")
            self.lock.notify_all()

    def settled(self) -> bool:
        with self.lock:
            return self.outstanding <= 0

    def wait(self, seconds: float) -> None:
        with self.lock:
            self.lock.wait(seconds)


class ServerWorker(threading.Thread):
    """Feeds one server, `ahead` prompts at a time, and follows them over its websocket."""

    def __init__(self, url: str, batch: Batch, *, ahead: int, retry_for: float, unresolved: list):
        super().__init__(name=f"server {url}", daemon=True)
        self.url = url
        self.batch = batch
        self.client = ComfyClient(url, timeout=30.0)
        self.client_id = uuid.uuid4().hex
        self.ahead = ahead
        self.retry_for = retry_for
        self.unresolved = list(unresolved)  # (Entry, prompt_id): submitted here, fate unknown
        self.inflight: dict = {}  # prompt_id -> Entry
        self.uploaded: dict = {}  # reference path -> its name on the server, for this connection
        self.websocket = None
        self.released = False
        self.error: BaseException | None = None

    # --- the loop ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # reported by main(); the jobs stay in the journal for a resume
            self.error = error
            self.batch.leaving.set()
        finally:
            self._close()

    def _loop(self) -> None:
        backoff, down_since = 1.0, None
        while not self.batch.leaving.is_set():
            if self.websocket is None:
                if self.batch.stopping.is_set():
                    return  # jobs still to look up here stay in the journal for the next run
                try:
                    self._connect()
                    backoff, down_since = 1.0, None
                except ServerDropped as drop:
                    down_since = down_since or time.monotonic()
                    if self.batch.settled() and not self.unresolved:
                        return
                    if time.monotonic() - down_since > self.retry_for:
                        if self.unresolved:
                            self._abandon(str(drop))
                        return
                    self.batch.show(self.url, f"down, retry in {backoff:.0f} s")
                    self.batch.leaving.wait(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
            try:
                if not self._step():
                    return
            except ServerDropped as drop:
                self._drop(str(drop))

    def _step(self) -> bool:
        """One round: stop or fill the queue, then read the websocket. False when this server is done."""
        if self.batch.stopping.is_set():
            if not self.released:
                self._release_waiting()
        else:
            self._fill()
        if not self.inflight:
            if self.batch.stopping.is_set() or self.batch.settled():
                return False
            self.batch.show(self.url, "idle")
            self.batch.wait(1.0)
            return True
        self._read_events()
        return True

    # --- connecting, dropping, resolving ----------------------------------------------------------------------

    def _connect(self) -> None:
        import websocket

        try:
            requests.get(f"{self.url}/system_stats", timeout=5).raise_for_status()
            self.websocket = websocket.create_connection(
                f"ws{self.url[4:]}/ws?clientId={self.client_id}", timeout=10
            )
        except (*CONNECTION_ERRORS, websocket.WebSocketException, requests.HTTPError) as error:
            self._close()
            raise ServerDropped(f"{type(error).__name__}: {error}") from None
        self.websocket.settimeout(1.0)
        self.uploaded = {}  # a restarted server may have another input folder
        self.batch.show(self.url, "connected")
        if self.unresolved:
            try:
                self._resolve_all()
            except ServerDropped:
                self._close()
                raise

    def _close(self) -> None:
        if self.websocket is not None:
            try:
                self.websocket.close()
            except Exception:  # noqa: BLE001  (closing a dead socket may fail in many ways; it is gone either way)
                pass
        self.websocket = None

    def _drop(self, reason: str) -> None:
        self._close()
        self.unresolved += [(entry, prompt_id) for prompt_id, entry in self.inflight.items()]
        self.inflight = {}
        with self.batch.lock:
            self.batch.counts.drops += 1
        self.batch.say(
            f"{self.url} dropped ({reason}); {len(self.unresolved)} job(s) will be looked up there when it is back"
        )

    def _abandon(self, reason: str) -> None:
        with self.batch.lock:
            self.batch.abandoned += [(entry, self.url) for entry, _ in self.unresolved]
        self.batch.say(
            f"{self.url} has been down for over {self.retry_for:.0f} s ({reason}); giving up on it. "
            f"{len(self.unresolved)} job(s) queued there stay in the journal: run again when it is back."
        )

    def _resolve_all(self) -> None:
        running, waiting = self._call(self.client.queued_prompt_ids)
        while self.unresolved:
            entry, prompt_id = self.unresolved[0]
            self._resolve(entry, prompt_id, queued=running | waiting)
            self.unresolved.pop(0)

    def _resolve(self, entry: Entry, prompt_id: str, *, queued: set) -> None:
        """Decides what became of a job submitted here whose end we did not see; never runs a job twice."""
        history = self._call(self.client.history_if_answered, prompt_id)
        if history is not None:
            self._collect(entry, prompt_id, history, after_drop=True)
        elif prompt_id in queued:
            self.inflight[prompt_id] = entry  # still running or waiting: follow it as usual
        elif self._collect_output_file(entry):
            pass
        else:
            with self.batch.lock:
                self.batch.counts.resubmitted += 1
            self.batch.give_back(entry)

    def _collect_output_file(self, entry: Entry) -> bool:
        """The job's image from the server's output folder (it ran, but its /history is gone): saved, True."""
        name = batch_jobs.first_output_name(entry.prefix)
        png = self._call(self.client.output_file_if_present, name)
        if png is None:
            return False
        try:
            self._save(entry, [png])
        except BatchError as error:  # a file cut short by a crash: the job did not finish
            self.batch.say(f"{self.url}: {name} is unusable ({error}); queueing job {entry.id} again")
            return False
        with self.batch.lock:
            self.batch.counts.collected += 1
        return True

    def _call(self, function, *args, **kwargs):
        """`function(...)`, with a dropped connection turned into ServerDropped."""
        try:
            return function(*args, **kwargs)
        except CONNECTION_ERRORS as error:
            raise ServerDropped(f"{type(error).__name__}: {error}") from None

    # --- queueing ---------------------------------------------------------------------------------------------

    def _fill(self) -> None:
        while len(self.inflight) < self.ahead and not self.batch.stopping.is_set():
            entry = self.batch.take(self.url)
            if entry is None:
                return
            try:
                self._submit(entry)
            except ServerDropped:
                if entry not in self.inflight.values():
                    self.batch.give_back(entry)
                raise

    def _reference_name(self, image: Path) -> str:
        if image not in self.uploaded:
            name = f"dipa_{batch_jobs.file_digest(image)[:12]}{image.suffix.lower()}"
            self.uploaded[image] = self._call(self.client.upload_image, image.read_bytes(), name)
        return self.uploaded[image]

    def _submit(self, entry: Entry) -> None:
        batch = self.batch
        prompt = batch_jobs.job_prompt(
            batch.workflow, batch.targets, entry.job, image_name=self._reference_name(entry.job.image),
            prefix=entry.prefix, size=batch.size, steps=batch.steps,
        )  # fmt: skip
        prompt_id = str(uuid.uuid4())
        batch.journal({"event": "submit", "job_id": entry.id, "server": self.url, "prompt_id": prompt_id,
                       "prefix": entry.prefix})  # fmt: skip
        entry.submissions += 1
        self.inflight[prompt_id] = entry  # before POST: if the answer is lost, the drop looks the prompt up
        queued = self._call(self.client.queue_prompt, prompt, prompt_id=prompt_id,
                            client_id=self.client_id)  # fmt: skip
        if queued.prompt_id is None:
            del self.inflight[prompt_id]
            error = "ComfyUI rejected the prompt: " + comfy_client.describe_rejection(queued.error)
            batch.journal({"event": "failed", "job_id": entry.id, "error": error})
            batch.settle(entry, error=error)

    def _release_waiting(self) -> None:
        """On stop: takes our waiting prompts off the server's queue; running ones are followed to their end."""
        self.released = True
        if not self.inflight:
            return
        self._call(self.client.delete_from_queue, list(self.inflight))
        running, waiting = self._call(self.client.queued_prompt_ids)
        for prompt_id, entry in list(self.inflight.items()):
            if prompt_id in running | waiting:
                continue
            history = self._call(self.client.history_if_answered, prompt_id)
            if history is not None:
                self._collect(entry, prompt_id, history, after_drop=False)
            else:
                self.batch.journal({"event": "released", "job_id": entry.id})
            del self.inflight[prompt_id]

    # --- following --------------------------------------------------------------------------------------------

    def _read_events(self) -> None:
        import websocket

        quiet_since = time.monotonic()
        while self.inflight and time.monotonic() - quiet_since < HISTORY_CHECK_EVERY:
            if self.batch.leaving.is_set() or (self.batch.stopping.is_set() and not self.released):
                return
            try:
                message = self.websocket.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketException, *CONNECTION_ERRORS) as error:
                raise ServerDropped(f"websocket closed: {type(error).__name__} {error}".strip()) from None
            if not isinstance(message, str):
                continue  # binary frames: previews
            event = json.loads(message)
            kind, data = event.get("type"), event.get("data") or {}
            prompt_id = data.get("prompt_id")
            if prompt_id not in self.inflight:
                continue
            quiet_since = time.monotonic()
            entry = self.inflight[prompt_id]
            if kind == "progress":
                self.batch.show(self.url, f"job {entry.id[:6]} step {data.get('value')}/{data.get('max')}")
            elif kind == "executing" and data.get("node") is not None:
                title = comfy_client.node_title(self.batch.workflow, data["node"])
                self.batch.show(self.url, f"job {entry.id[:6]} {title}")
            elif kind in ("execution_success", "execution_error", "execution_interrupted"):
                try:
                    history = self._call(self.client.wait_for_history, prompt_id, timeout=30.0)
                except ComfyError as error:  # ended but no history: looked up like a drop
                    raise ServerDropped(str(error)) from None
                # Only once collected: a server that drops while we fetch the image leaves the job in flight, to
                # be looked up there (its output folder) when it is back.
                self._collect(entry, prompt_id, history, after_drop=False)
                del self.inflight[prompt_id]
                return
        for prompt_id, entry in list(self.inflight.items()):  # a missed end message must not hang us
            history = self._call(self.client.history_if_answered, prompt_id)
            if history is not None:
                self._collect(entry, prompt_id, history, after_drop=False)
                del self.inflight[prompt_id]

    def _collect(self, entry: Entry, prompt_id: str, history: dict, *, after_drop: bool) -> None:
        status = history.get("status", {}).get("status_str")
        if status != "success":
            error = f"the prompt failed on {self.url}: " + comfy_client.describe_failure(history)
            self.batch.journal({"event": "failed", "job_id": entry.id, "error": error})
            self.batch.settle(entry, error=error)
            return
        images = self.client.output_images(history)
        pngs = [self._call(self.client.fetch, image) for image in images]
        if not pngs:
            error = f"the prompt on {self.url} saved no image (check the workflow's SaveImage)"
            self.batch.journal({"event": "failed", "job_id": entry.id, "error": error})
            self.batch.settle(entry, error=error)
            return
        self._save(entry, pngs)
        if after_drop:
            with self.batch.lock:
                self.batch.counts.collected += 1

    def _save(self, entry: Entry, pngs: list) -> None:
        """Writes <out>/<job id>.png (further images of a batch: <job id>_2.png, ...) and journals the job done."""
        record = batch_jobs.job_record(entry.job, job_id_=entry.id, server=self.url,
                                       workflow_name=self.batch.workflow_name)  # fmt: skip
        names = [f"{entry.id}.png"] + [f"{entry.id}_{number}.png" for number in range(2, len(pngs) + 1)]
        for name, png in zip(names, pngs):
            data = batch_jobs.add_png_text(png, batch_jobs.PNG_CHUNK_KEY, record)
            write_durably(self.batch.out / name, data)
        self.batch.journal({"event": "done", "job_id": entry.id, "file": names[0], "server": self.url})
        self.batch.settle(entry)


def write_durably(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


# --- the command line ----------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Queue reference images × prompts × λ (× seeds) to ComfyUI servers and save the results.",
        epilog="Stop with Ctrl-C (waits for the running jobs; twice: at once); run again with the same arguments "
        "to resume.",
    )
    parser.add_argument("--server", action="append", required=True, metavar="URL",
                        help="a ComfyUI server, e.g. http://127.0.0.1:8188; repeat for several")  # fmt: skip
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR", help="a folder of reference images (png, jpg, webp)")
    source.add_argument("--csv", type=Path, metavar="FILE",
                        help="jobs, one a row: columns image (path relative to the CSV), prompt, weight, "
                             "and optionally seed")  # fmt: skip
    parser.add_argument("--prompts", nargs="+", metavar="TEXT", help="text prompts (default: the workflow's)")
    parser.add_argument("--weights", nargs="+", type=float, metavar="λ", help="λ values (default: the workflow's)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="N", help="seeds (default: the workflow's)")
    parser.add_argument("--workflow", type=Path, default=comfy_client.EXAMPLE_WORKFLOW,
                        help="an API-format workflow (default: %(default)s)")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="where results and the journal go; the same folder resumes a run")  # fmt: skip
    parser.add_argument("--size", type=int, help="square picture size, set on EmptyLatentImage (default: as is)")
    parser.add_argument("--steps", type=int, help="sampling steps, set on KSampler (default: as is)")
    parser.add_argument("--ahead", type=int, default=2,
                        help="prompts kept queued on each server (default: %(default)s)")  # fmt: skip
    parser.add_argument("--retry-for", type=float, default=600.0, metavar="SECONDS",
                        help="how long a server that went down is waited for (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.csv and (args.prompts or args.weights or args.seeds):
        parser.error("--prompts, --weights and --seeds go with --images; a CSV gives them per row")
    if args.ahead < 1:
        parser.error("--ahead must be at least 1")
    return args


def load_workflow(path: Path) -> tuple[dict, batch_jobs.Targets]:
    if not path.is_file():
        raise BatchError(f"workflow {path} does not exist: pass an API-format workflow with --workflow")
    try:
        workflow = json.loads(path.read_text())
    except ValueError as error:
        raise BatchError(f"workflow {path} is not JSON: {error}") from None
    return workflow, batch_jobs.find_targets(workflow, name=str(path))


def make_jobs(args, workflow: dict, targets: batch_jobs.Targets) -> list[Job]:
    defaults = batch_jobs.workflow_defaults(workflow, targets)
    if args.csv:
        return batch_jobs.read_jobs_csv(args.csv, default_seed=defaults["seed"])
    return batch_jobs.expand_jobs(
        batch_jobs.list_images(args.images),
        args.prompts or [defaults["prompt"]],
        args.weights or [defaults["weight"]],
        args.seeds or [defaults["seed"]],
    )


def check_servers(urls) -> None:
    down = []
    for url in urls:
        try:
            requests.get(f"{url.rstrip('/')}/system_stats", timeout=10).raise_for_status()
        except (requests.RequestException, ValueError) as error:
            down.append(f"  {url}: {type(error).__name__}: {error}")
    if down:
        raise BatchError("cannot reach the ComfyUI server(s):\n" + "\n".join(down) + "\nstart them or fix --server")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import websocket  # noqa: F401  (websocket-client: read by the server threads)
    except ImportError:
        print("batch_queue: needs the websocket-client package: pip install websocket-client", file=sys.stderr)
        return 2
    servers = list(dict.fromkeys(url.rstrip("/") for url in args.server))
    try:
        workflow, targets = load_workflow(args.workflow)
        jobs = make_jobs(args, workflow, targets)
        check_servers(servers)
        args.out.mkdir(parents=True, exist_ok=True)
        state = batch_jobs.read_journal(args.out / JOURNAL)
    except BatchError as error:
        print(f"batch_queue: {error}", file=sys.stderr)
        return 2
    batch_id = state.batch_id or uuid.uuid4().hex[:8]
    if state.batch_id is None:
        batch_jobs.append_record(args.out / JOURNAL, {"event": "batch", "batch_id": batch_id,
                                                      "workflow": args.workflow.name})  # fmt: skip
    digests = {image: batch_jobs.file_digest(image) for image in dict.fromkeys(job.image for job in jobs)}
    entries = {}
    for job in jobs:
        job_id = batch_jobs.job_id(job, image_digest=digests[job.image], workflow_name=args.workflow.name)
        entries.setdefault(job_id, Entry(job=job, id=job_id, prefix=batch_jobs.output_prefix(batch_id, job_id)))
    finished = [job_id for job_id in entries if job_id in state.done and (args.out / state.done[job_id]).is_file()]
    unresolved = {url: [] for url in servers}
    pending = []
    for job_id, entry in entries.items():
        submitted = state.submitted.get(job_id)
        if job_id in finished:
            continue
        if submitted is not None and submitted["server"] in unresolved:
            unresolved[submitted["server"]].append((entry, submitted["prompt_id"]))
            continue
        if submitted is not None:
            print(f"batch_queue: job {job_id} was queued on {submitted['server']}, which is not among --server "
                  "now; it is queued again (it may have run there too)", file=sys.stderr)  # fmt: skip
        pending.append(entry)
    duplicates = len(jobs) - len(entries)
    print(f"batch_queue: {len(entries)} jobs ({duplicates} duplicate rows merged), {len(finished)} already done, "
          f"{sum(map(len, unresolved.values()))} to look up on their servers, {len(pending)} to queue; "
          f"{len(servers)} server(s); results in {args.out}", flush=True)  # fmt: skip

    bar = tqdm(total=len(entries), initial=len(finished), unit="job", dynamic_ncols=True, file=sys.stderr)
    batch = Batch(
        out=args.out, workflow=workflow, targets=targets, workflow_name=args.workflow.name, size=args.size,
        steps=args.steps, pending=pending, total=len(entries), bar=bar,
        outstanding=len(entries) - len(finished),
    )  # fmt: skip
    workers = [
        ServerWorker(url, batch, ahead=args.ahead, retry_for=args.retry_for, unresolved=unresolved[url])
        for url in servers
    ]

    def on_signal(number, frame):
        if batch.stopping.is_set():
            batch.leaving.set()
            batch.say("stopping now; jobs still on the servers are collected by the next run")
        else:
            batch.stopping.set()
            batch.say("stopping: waiting for the running jobs (Ctrl-C again to leave them to the next run)")
        with batch.lock:
            batch.lock.notify_all()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        while worker.is_alive():
            worker.join(0.2)
    bar.close()
    return report(batch, workers, finished=len(finished), seconds=time.monotonic() - started)


def report(batch: Batch, workers, *, finished: int, seconds: float) -> int:
    done = batch.total - batch.outstanding - len(batch.failed) - finished
    rate = done / seconds * 60 if seconds > 0 else 0.0
    counts = batch.counts
    print(f"batch_queue: {done} job(s) done in {seconds:.1f} s ({rate:.1f} jobs/min); {finished} were done before; "
          f"{counts.drops} server drop(s), {counts.resubmitted} job(s) queued again, {counts.collected} collected "
          "after a drop instead of run again", flush=True)  # fmt: skip
    code = 0
    for worker in workers:
        if worker.error is not None:
            print(f"batch_queue: the thread for {worker.url} failed: {type(worker.error).__name__}: {worker.error}",
                  file=sys.stderr)  # fmt: skip
            code = 1
    if batch.failed:
        print(f"batch_queue: {len(batch.failed)} job(s) failed:", file=sys.stderr)
        for error, number in Counter(batch.failed.values()).most_common():
            print(f"  {number} job(s): {error}", file=sys.stderr)
        code = 1
    if batch.abandoned:
        print(f"batch_queue: {len(batch.abandoned)} job(s) are left on servers that stayed down; run again to "
              "collect them", file=sys.stderr)  # fmt: skip
        code = 1
    left = batch.outstanding - len(batch.abandoned)
    if batch.stopping.is_set() and left > 0:
        print(f"batch_queue: stopped; {left} job(s) not done: run the same command again to resume", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
