"""The batch queue (tools/batch_queue.py, tools/batch_jobs.py): pure parts, then the CLI as a user runs it
against two real ComfyUI servers on the SD1.5 stand-ins at 64x64 and 1 step.

Exactly-once is checked where it happens: every run of a job's SaveImage leaves a file named by the job's prefix in
that server's output folder, so across both servers each prefix must appear exactly once.
"""

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image
from server_harness import reference_png, restartable_comfy_server, standin_models

import batch_jobs
import comfy_client
import server_process
from batch_jobs import BatchError, Job

CLI = Path(__file__).resolve().parents[1] / "tools" / "batch_queue.py"
PNG_END = b"IEND\xaeB`\x82"  # the last chunk of every PNG file
PROMPTS = ["a red fox", "a lighthouse", "a bowl of fruit", "a city at night", "an old map"]
WEIGHTS = [0.0, 0.25, 0.5, 0.75, 1.0]
REFERENCE_SIZE = 64


# --- pure parts ------------------------------------------------------------------------------------------------


def write_reference(path: Path, *, flip: bool = False) -> Path:
    picture = Image.open(BytesIO(reference_png())).resize((REFERENCE_SIZE, REFERENCE_SIZE))
    (picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else picture).save(path)
    return path


def example_workflow() -> dict:
    return json.loads(comfy_client.EXAMPLE_WORKFLOW.read_text())


def test_jobs_expand_grouped_by_image_then_prompt(tmp_path):
    jobs = batch_jobs.expand_jobs([tmp_path / "a.png", tmp_path / "b.png"], ["p", "q"], [0, 0.5, 1], [7])
    assert len(jobs) == 12
    assert [job.image.name for job in jobs] == ["a.png"] * 6 + ["b.png"] * 6
    assert [job.prompt for job in jobs[:6]] == ["p"] * 3 + ["q"] * 3
    assert jobs[1] == Job(image=tmp_path / "a.png", prompt="p", weight=0.5, seed=7)


def test_job_ids_are_stable_and_follow_every_parameter(tmp_path):
    job = Job(image=tmp_path / "a.png", prompt="p", weight=0.5, seed=1)
    ident = batch_jobs.job_id(job, image_digest="d1", workflow_name="w.json")
    assert ident == batch_jobs.job_id(Job(tmp_path / "a.png", "p", 0.50, 1), image_digest="d1", workflow_name="w.json")
    assert len(ident) == 16 and int(ident, 16) >= 0
    variants = [
        (Job(tmp_path / "b.png", "p", 0.5, 1), "d1", "w.json"),
        (Job(tmp_path / "a.png", "q", 0.5, 1), "d1", "w.json"),
        (Job(tmp_path / "a.png", "p", 0.6, 1), "d1", "w.json"),
        (Job(tmp_path / "a.png", "p", 0.5, 2), "d1", "w.json"),
        (job, "d2", "w.json"),  # same name, other picture
        (job, "d1", "other.json"),
    ]
    ids = {batch_jobs.job_id(other, image_digest=digest, workflow_name=name) for other, digest, name in variants}
    assert len(ids) == len(variants) and ident not in ids


def test_csv_rows_become_jobs(tmp_path):
    (tmp_path / "refs").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "refs" / name).write_bytes(b"x")
    table = tmp_path / "jobs.csv"
    table.write_text('image,prompt,weight,seed\nrefs/b.png,"a cat, sitting",0.5,3\nrefs/a.png,dog,1,\nrefs/b.png,x,0,9\n')
    jobs = batch_jobs.read_jobs_csv(table, default_seed=42)
    assert jobs == [
        Job(tmp_path / "refs/b.png", "a cat, sitting", 0.5, 3),
        Job(tmp_path / "refs/b.png", "x", 0.0, 9),
        Job(tmp_path / "refs/a.png", "dog", 1.0, 42),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("image,prompt,seed\nrefs/a.png,x,1\n", "lacks the column(s) weight"),
        ("picture,text\n", "lacks the column(s) image, prompt, weight"),
        ("image,prompt,weight\nrefs/a.png,x,heavy\n", "line 2: column 'weight' holds 'heavy'"),
        ("image,prompt,weight\nrefs/nope.png,x,1\n", "line 2: image"),
        ("image,prompt,weight\n", "no rows"),
    ],
)
def test_bad_csv_is_refused_with_the_line(tmp_path, text, message):
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "a.png").write_bytes(b"x")
    (tmp_path / "jobs.csv").write_text(text)
    with pytest.raises(BatchError, match="jobs.csv") as caught:
        batch_jobs.read_jobs_csv(tmp_path / "jobs.csv", default_seed=0)
    assert message in str(caught.value)


def test_journal_tells_done_submitted_and_failed_jobs(tmp_path):
    journal = tmp_path / "journal.jsonl"
    for record in (
        {"event": "batch", "batch_id": "b1"},
        {"event": "submit", "job_id": "j1", "server": "s", "prompt_id": "p1"},
        {"event": "submit", "job_id": "j2", "server": "s", "prompt_id": "p2"},
        {"event": "submit", "job_id": "j3", "server": "s", "prompt_id": "p3"},
        {"event": "submit", "job_id": "j4", "server": "s", "prompt_id": "p4"},
        {"event": "done", "job_id": "j1", "file": "j1.png"},
        {"event": "failed", "job_id": "j2", "error": "bad"},
        {"event": "released", "job_id": "j4"},
        {"event": "submit", "job_id": "j2", "server": "t", "prompt_id": "p5"},
    ):
        batch_jobs.append_record(journal, record)
    with open(journal, "a") as handle:
        handle.write('{"event": "done", "job_id": "j3", "fi')  # a crash in the middle of a line
    state = batch_jobs.read_journal(journal)
    assert state.batch_id == "b1"
    assert state.done == {"j1": "j1.png"}
    assert {job: record["prompt_id"] for job, record in state.submitted.items()} == {"j2": "p5", "j3": "p3"}
    assert state.failed == {}
    assert batch_jobs.read_journal(tmp_path / "none.jsonl").done == {}


def test_job_prompt_sets_reference_text_weight_seed_and_prefix():
    workflow = example_workflow()
    targets = batch_jobs.find_targets(workflow, name="example")
    job = Job(Path("ref.png"), "a lighthouse", 0.25, 123)
    prompt = batch_jobs.job_prompt(workflow, targets, job, image_name="up.png", prefix="dipa_x", size=64, steps=1)
    (sampler,) = comfy_client.nodes_of_class(prompt, "KSampler")
    positive = prompt[sampler["inputs"]["positive"][0]]["inputs"]["text"]
    negative = prompt[sampler["inputs"]["negative"][0]]["inputs"]["text"]
    assert positive == "a lighthouse" and negative != "a lighthouse"
    assert (sampler["inputs"]["seed"], sampler["inputs"]["steps"]) == (123, 1)
    assert [node["inputs"]["weight"] for node in comfy_client.nodes_of_class(prompt, "DecoupledIPAdapterApply")] == [0.25]
    assert [node["inputs"]["image"] for node in comfy_client.nodes_of_class(prompt, "LoadImage")] == ["up.png"]
    assert comfy_client.nodes_of_class(prompt, "SaveImage")[0]["inputs"]["filename_prefix"] == "dipa_x"
    assert workflow == example_workflow()  # the loaded workflow is not changed


def test_positive_text_is_found_through_a_controlnet():
    workflow = example_workflow()
    (sampler_id,) = [key for key, node in workflow.items() if node["class_type"] == "KSampler"]
    positive, negative = workflow[sampler_id]["inputs"]["positive"], workflow[sampler_id]["inputs"]["negative"]
    workflow["90"] = {"class_type": "ControlNetApplyAdvanced",
                      "inputs": {"negative": negative, "positive": positive, "strength": 1.0}}  # fmt: skip
    workflow[sampler_id]["inputs"].update(positive=["90", 0], negative=["90", 1])
    targets = batch_jobs.find_targets(workflow, name="cn")
    assert targets.positive_text == (positive[0],)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda w: {"nodes": [], "links": []}, "editor's format"),
        (lambda w: {k: v for k, v in w.items() if v["class_type"] != "KSampler"}, "no KSampler"),
        (lambda w: {k: v for k, v in w.items() if v["class_type"] != "LoadImage"}, "no LoadImage"),
        (lambda w: {k: v for k, v in w.items() if v["class_type"] != "DecoupledIPAdapterApply"}, "λ"),
        (lambda w: {k: v for k, v in w.items() if v["class_type"] != "SaveImage"}, "0 SaveImage"),
    ],
)
def test_unusable_workflows_are_refused(edit, message):
    with pytest.raises(BatchError, match="workflow w.json") as caught:
        batch_jobs.find_targets(edit(example_workflow()), name="w.json")
    assert message in str(caught.value)


def test_png_chunk_is_added_and_comfy_chunks_kept():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", '{"1": {}}')
    buffer = BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="PNG", pnginfo=info)
    record = batch_jobs.job_record(Job(Path("r.png"), "café ✓", 0.5, 3), job_id_="abc", server="http://s",
                                   workflow_name="w.json")  # fmt: skip
    stamped = Image.open(BytesIO(batch_jobs.add_png_text(buffer.getvalue(), "decoupled_ipadapter", record)))
    assert stamped.text["prompt"] == '{"1": {}}'
    assert json.loads(stamped.text["decoupled_ipadapter"]) == {
        "job_id": "abc", "image": "r.png", "prompt": "café ✓", "weight": 0.5, "seed": 3, "server": "http://s",
        "workflow": "w.json",
    }  # fmt: skip
    assert stamped.getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(BatchError, match="truncated"):
        batch_jobs.add_png_text(buffer.getvalue()[:-12], "k", "v")


def test_servers_keep_to_their_reference():
    a, b, c = Path("a"), Path("b"), Path("c")
    pending = [Job(a, "p", 0, 0), Job(b, "p", 0, 0), Job(c, "p", 0, 0)]
    assert batch_jobs.pick_next(pending, last_image=c, images_elsewhere={a}) == 2
    assert batch_jobs.pick_next(pending, last_image=None, images_elsewhere={a}) == 1
    assert batch_jobs.pick_next(pending[:1], last_image=None, images_elsewhere={a}) == 0
    assert batch_jobs.pick_next([], last_image=None, images_elsewhere=set()) is None


# --- the command line ------------------------------------------------------------------------------------------


def cli(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CLI), *map(str, args)], cwd=CLI.parents[1], text=True, **popen)


def run_cli(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLI), *map(str, args)], cwd=CLI.parents[1], text=True,
                          capture_output=True, timeout=timeout)  # fmt: skip


def test_cli_explains_bad_inputs(tmp_path):
    images = tmp_path / "refs"
    images.mkdir()
    write_reference(images / "a.png")
    unreachable = f"http://127.0.0.1:{server_process.free_port()}"
    common = ["--out", tmp_path / "out", "--server", unreachable]
    cases = [
        (["--images", images, "--workflow", tmp_path / "missing.json"], "missing.json does not exist"),
        (["--images", tmp_path / "nothing"], "nothing does not exist"),
        (["--images", images], "cannot reach the ComfyUI server(s)"),
    ]
    (tmp_path / "jobs.csv").write_text("image,weight\nrefs/a.png,1\n")
    cases.append((["--csv", tmp_path / "jobs.csv"], "lacks the column(s) prompt"))
    for args, message in cases:
        result = run_cli(*common, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "out").exists()


# --- against real servers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_servers():
    """Two servers with one torch thread each: on the 2-core machine that is twice as fast as both oversubscribed."""
    models = standin_models()
    with restartable_comfy_server(models_dir=models, threads=1) as first, \
            restartable_comfy_server(models_dir=models, threads=1) as second:  # fmt: skip
        yield first, second


@pytest.fixture(scope="module")
def fast_workflow(tmp_path_factory) -> Path:
    """The example workflow with cfg 1 (ComfyUI then skips the unconditional pass): 1.5 s a job instead of 3.4."""
    workflow = example_workflow()
    for node in comfy_client.nodes_of_class(workflow, "KSampler"):
        node["inputs"]["cfg"] = 1.0
    path = tmp_path_factory.mktemp("workflow") / "example_cfg1.json"
    path.write_text(json.dumps(workflow))
    return path


def references(folder: Path, count: int) -> Path:
    folder.mkdir()
    for index in range(count):
        write_reference(folder / f"ref_{index}.png", flip=index % 2 == 1)
    return folder


def journal_records(out: Path, event: str) -> list[dict]:
    path = out / "journal.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [record for record in map(json.loads, filter(None, lines[:-1])) if record.get("event") == event]


def batch_id_of(out: Path) -> str:
    return json.loads((out / "journal.jsonl").read_text().splitlines()[0])["batch_id"]


def server_runs(servers, batch_id: str) -> Counter:
    """How many times each job of the batch ran: its SaveImage files over every server's output folder."""
    mark = f"dipa_{batch_id}_"
    runs = Counter()
    for server in servers:
        for path in (server.base / "output").glob(f"{mark}*.png"):
            runs[path.name[len(mark) : len(mark) + 16]] += 1
    return runs


def results(out: Path) -> dict:
    """job id -> the "decoupled_ipadapter" record of every result PNG."""
    found = {}
    for path in sorted(out.glob("*.png")):
        with Image.open(path) as image:
            assert "prompt" in image.text, f"{path.name} lost ComfyUI's prompt chunk"
            record = json.loads(image.text["decoupled_ipadapter"])
        assert path.stem == record["job_id"]
        found[record["job_id"]] = record
    return found


def wait_for(condition, *, timeout: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the CLI ended (code {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.server
def test_fifty_jobs_on_two_servers_one_restarted_midway(two_servers, fast_workflow, tmp_path):
    first, second = two_servers
    images, out = references(tmp_path / "refs", 2), tmp_path / "out"
    started = time.monotonic()
    with open(tmp_path / "cli.log", "w") as log:
        process = cli(
            "--server", first.url, "--server", second.url, "--images", images, "--prompts", *PROMPTS,
            "--weights", *WEIGHTS, "--seeds", 5, "--size", 64, "--steps", 1, "--out", out, "--retry-for", 300,
            "--workflow", fast_workflow,
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        on_second = lambda: [r for r in journal_records(out, "done") if r["server"] == second.url]  # noqa: E731
        wait_for(lambda: len(on_second()) >= 4, timeout=300, what="4 jobs done on the second server", process=process)
        before = set((second.base / "output").glob("*.png"))
        deadline = time.monotonic() + 60
        while not (new := set((second.base / "output").glob("*.png")) - before) and time.monotonic() < deadline:
            time.sleep(0.01)
        while new and not all(path.read_bytes().endswith(PNG_END) for path in new) and time.monotonic() < deadline:
            time.sleep(0.005)  # the file appears when ComfyUI starts writing it: wait until it is whole
        # Killed just after it saved an image, likely before the CLI collected it; one more prompt waits there.
        # (A server killed in the middle of writing a PNG leaves half a file, and the job runs again elsewhere:
        # the batch tool's documented limit, not what this test is about.)
        second.kill()
        done_before_kill = len(journal_records(out, "done"))
        killed_at = time.monotonic()
        time.sleep(2)
        second.start()
        restart_seconds = time.monotonic() - killed_at
        assert process.wait(timeout=420) == 0, (tmp_path / "cli.log").read_text()[-4000:]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    seconds = time.monotonic() - started
    output = (tmp_path / "cli.log").read_text()

    found = results(out)
    assert len(found) == 50
    expected = {(f"ref_{i}.png", p, w, 5) for i in range(2) for p in PROMPTS for w in WEIGHTS}
    assert {(r["image"], r["prompt"], r["weight"], r["seed"]) for r in found.values()} == expected
    runs = server_runs((first, second), batch_id_of(out))
    assert runs == Counter({job: 1 for job in found}), f"jobs run other than once: {runs}"
    assert {r["server"] for r in found.values()} == {first.url, second.url}
    assert "dropped" in output and "step 1/1" in output
    summary = next(line for line in output.splitlines() if "job(s) done in" in line)
    drops, again, collected = map(int, re.search(r"(\d+) server drop.*?(\d+) job\(s\) queued again, (\d+) collected",
                                                 summary).groups())  # fmt: skip
    assert drops == 1 and again + collected >= 1, summary
    print(f"\n50 jobs, 2 servers, one killed after {done_before_kill} done and back in {restart_seconds:.1f} s: "
          f"{seconds:.1f} s in all\n{summary}")  # fmt: skip


@pytest.mark.server
def test_stopped_run_resumes_without_redoing_jobs(two_servers, fast_workflow, tmp_path):
    first, second = two_servers
    images, out = references(tmp_path / "refs", 1), tmp_path / "out"
    args = ["--server", first.url, "--server", second.url, "--images", images, "--prompts", "a kite",
            "--weights", 0.3, 0.6, "--seeds", 1, 2, 3, 4, 5, "--size", 64, "--steps", 1, "--out", out,
            "--workflow", fast_workflow]  # fmt: skip
    with open(tmp_path / "first.log", "w") as log:
        process = cli(*args, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: len(journal_records(out, "done")) >= 3, timeout=300, what="3 jobs done", process=process)
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
    first_output = (tmp_path / "first.log").read_text()
    assert "stopping" in first_output and "run the same command again to resume" in first_output
    kept = {path.name: path.stat().st_mtime_ns for path in out.glob("*.png")}
    assert 3 <= len(kept) < 10

    second_run = run_cli(*args, timeout=400)
    assert second_run.returncode == 0, second_run.stdout + second_run.stderr
    assert f"{len(kept)} already done" in second_run.stdout
    found = results(out)
    assert len(found) == 10
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # not written again
    batch_id = batch_id_of(out)
    assert server_runs((first, second), batch_id) == Counter({job: 1 for job in found})

    third_run = run_cli(*args, timeout=60)  # all done: nothing queued
    assert third_run.returncode == 0 and "10 already done" in third_run.stdout
    assert server_runs((first, second), batch_id) == Counter({job: 1 for job in found})


@pytest.mark.server
def test_rejected_prompt_fails_the_job_not_the_run(two_servers, tmp_path):
    first, _ = two_servers
    workflow = example_workflow()
    for node in comfy_client.nodes_of_class(workflow, "CheckpointLoaderSimple"):
        node["inputs"]["ckpt_name"] = "no-such-checkpoint.safetensors"
    (tmp_path / "broken.json").write_text(json.dumps(workflow))
    images = references(tmp_path / "refs", 1)
    result = run_cli("--server", first.url, "--images", images, "--weights", 0.5, 1, "--workflow",
                     tmp_path / "broken.json", "--out", tmp_path / "out", timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 job(s) failed" in result.stderr
    assert "ComfyUI rejected the prompt" in result.stderr and "no-such-checkpoint" in result.stderr
    assert not list((tmp_path / "out").glob("*.png"))
