"""The editor-format workflows in the real ComfyUI front-end (comfyui_frontend_package of the host), in headless
Chromium.

Each template is fetched the way the template menu fetches it (/api/workflow_templates/<pack>/<name>.json),
loaded with app.loadGraphData (the front-end's schema validation on), and must show: every node type registered,
no node with errors, no dialog (the missing-nodes one) and no toast (validation alerts), no console error from the
page's own code. The prompt the front-end makes from it (app.graphToPrompt) must equal the committed API-format
file, and the links and widget values it would save must equal the file's. Then the graph is shrunk in the page
(64x64, 2 steps), queued from the front-end (app.queuePrompt) and must finish on the stand-ins without error (all
but the training workflow, whose run tests/test_workflows.py makes). A
screenshot of each lands in tests-output/screenshots/<name>.png. A broken workflow shows that these checks fail.
The SDXL workflows get the same checks in tests/test_workflows_sdxl.py (a server of their own).

ComfyUI_IPAdapter_plus workflows (../shared/data/ipadapter-plus-workflows, skipped when absent) opened in the same page
are offered for conversion (nodes/web/port_workflows.js): accepted, they hold this pack's nodes; declined, they stay
as they were; a file the converter cannot map says why.
"""

import importlib.metadata
import json
import os
from pathlib import Path

import pytest
import requests
from browser import FIT_VIEW, LOAD_AND_INSPECT, MISSING_MODELS, QUEUE, SETTINGS, SHRINK, SWAP_NODES, frontend_page, playwright_driver
from server_harness import PACK_LINK, comfy_server, run_prompt, standin_models
from workflow_checks import (
    FACE_PICTURES,
    SD15_WORKFLOWS,
    SIZE_INPUTS,
    SMALL_SIZE,
    SMALL_STEPS,
    STANDIN_SWAPS,
    STEP_NODES,
    TRAINING_WORKFLOW,
    WORKFLOW_NAMES,
    api_workflow,
    editor_workflow,
    input_files,
    shrunk,
)


pytestmark = [pytest.mark.server, pytest.mark.frontend]

SCREENSHOTS = Path(__file__).resolve().parents[1] / "tests-output" / "screenshots"
# Console lines that come from the page being offline (no internet) or from files not there, not from a workflow;
# and from the newest front-ends asking for the job list at /api/jobs, which ComfyUI 0.3.75 does not serve (their
# queue panel stays empty there; the prompts run).
OFFLINE_NOISE = ("Failed to load resource", "Content Security Policy", "api.comfy.org", "Failed to fetch jobs: 404")
SETTINGS.update({"Comfy.Validation.Workflows": True, "Comfy.Workflow.ShowMissingNodesWarning": True})


@pytest.fixture(scope="module")
def playwright():
    with playwright_driver() as driver:
        yield driver


@pytest.fixture(scope="module")
def page_on_server(playwright):
    models = standin_models(groups=("demo", "workflows"))
    with comfy_server(models_dir=models) as server:
        for name, data in input_files().items():
            server.client.upload_image(data, name)
        with frontend_page(playwright, server.url) as page:
            yield server, page


def _page_errors(page, since: int) -> list[str]:
    return [line for line in page.console[since:]
            if line.startswith(("error", "pageerror")) and not any(noise in line for noise in OFFLINE_NOISE)]  # fmt: skip


def _load(server, page, name: str, workflow: dict | None = None) -> dict:
    if workflow is None:
        response = requests.get(f"{server.url}/api/workflow_templates/{PACK_LINK}/{name}.json", timeout=30)
        response.raise_for_status()
        workflow = response.json()
    return page.evaluate(LOAD_AND_INSPECT, [workflow, f"{name}.json"])


def _history_ids(server) -> set[str]:
    return set(requests.get(f"{server.url}/history", timeout=30).json())


def _queue_from_the_frontend(server, page, name: str, *, timeout: float = 600.0) -> dict:
    page.evaluate(SHRINK, [{kind: list(names) for kind, names in SIZE_INPUTS.items()}, SMALL_SIZE, SMALL_STEPS, 1, list(STEP_NODES)])
    for swap in STANDIN_SWAPS:  # what workflow_checks.on_standins does to the API prompt
        page.evaluate(SWAP_NODES, list(swap))
    before = _history_ids(server)
    with page.expect_response(lambda response: response.url.endswith("/api/prompt")) as answer:
        page.evaluate(QUEUE)
    body = answer.value.json()
    assert answer.value.status == 200, f"{name}: the front-end's prompt was rejected: {json.dumps(body)[:3000]}"
    prompt_id = body["prompt_id"]
    assert prompt_id not in before
    entry = server.client.wait_for_history(prompt_id, timeout=timeout)
    assert entry["status"]["status_str"] == "success", f"{name}: {entry['status']}\n{server.log_tail(3000)}"
    return entry


def check_in_the_editor(server, page, name: str) -> None:
    since = len(page.console)
    seen = _load(server, page, name)
    assert seen["unregistered"] == [], f"{name}: node types the front-end does not know: {seen['unregistered']}"
    assert seen["withErrors"] == [] and seen["dialogs"] == [] and seen["toasts"] == [] and seen["errorCards"] == [], (name, seen)
    missing = page.evaluate(MISSING_MODELS)
    assert missing["rows"] == [] and missing["summary"] is None, f"{name}: reported missing with the stand-ins: {missing}"
    assert seen["output"] == api_workflow(name), f"{name}: graphToPrompt differs from workflows/api/{name}.json"
    editor = editor_workflow(name)
    assert seen["links"] == editor["links"], f"{name}: the editor would save other links"
    assert seen["widgets"] == {str(node["id"]): node["widgets_values"] for node in editor["nodes"]}, name
    if name != TRAINING_WORKFLOW:  # its run (training the full-size stand-in) is test_workflows.py's, once per CI
        entry = _queue_from_the_frontend(server, page, name)
        saved = {key for key, node in api_workflow(name).items() if node["class_type"] == "SaveImage"}
        assert saved <= set(entry["outputs"]), f"{name}: outputs {sorted(entry['outputs'])}, expected {sorted(saved)}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate(FIT_VIEW)
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    assert _page_errors(page, since) == [], f"{name}: the page logged errors: {_page_errors(page, since)}"


@pytest.mark.parametrize("name", SD15_WORKFLOWS)
def test_workflow_opens_in_the_editor_matches_its_api_file_and_runs(page_on_server, name):
    check_in_the_editor(*page_on_server, name)


def test_a_broken_workflow_is_caught(page_on_server):
    """The checks can fail: an unknown node type and a schema-invalid workflow are both reported."""
    server, page = page_on_server
    broken = editor_workflow(SD15_WORKFLOWS[0])
    broken["nodes"][1]["type"] = "NoSuchNodeType"
    seen = _load(server, page, "broken", broken)
    assert "NoSuchNodeType" in " ".join(seen["unregistered"]), seen
    if seen["dialogs"]:  # older front-ends: the missing-nodes dialog names the type
        assert "NoSuchNodeType" in " ".join(seen["dialogs"]), seen
        page.keyboard.press("Escape")
        page.wait_for_function("![...document.querySelectorAll('.p-dialog')].some(dialog => dialog.offsetParent)")
    else:  # newer ones: the issues overlay, and its details panel names it under the missing nodes
        assert seen["errorCards"], seen
        page.click('[data-testid="error-overlay-see-errors"]')
        missing_nodes = page.locator('[data-testid="error-group-missing-node"]')
        missing_nodes.wait_for()
        assert "NoSuchNodeType" in missing_nodes.inner_text()
    invalid = editor_workflow(SD15_WORKFLOWS[0])
    invalid["nodes"][1]["pos"] = "not a position"
    seen = _load(server, page, "invalid", invalid)
    assert any("valid" in toast.lower() for toast in seen["toasts"]), seen  # the front-end's schema alert


def test_the_page_runs_the_front_end_of_this_pass(page_on_server):
    """The front-end the page runs is the one this test run installs: the host's own under `make test`, the newest
    (laid over the host and served with --front-end-root) under `make test-latest`."""
    _, page = page_on_server
    assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == importlib.metadata.version("comfyui_frontend_package")


def test_the_templates_menu_lists_the_packs_workflows_and_opens_them(page_on_server):
    """Workflow > Browse Templates as a user opens it: ComfyUI's own templates are there (the templates package this
    front-end reads is served), the pack has its entry with every example workflow, and a click opens one."""
    server, page = page_on_server
    page.evaluate("() => window.app.graph.clear()")
    page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.BrowseTemplates'); }")
    cards = page.locator('[data-testid^="template-workflow-"]')
    cards.first.wait_for()
    core = {card.get_attribute("data-testid") for card in cards.all()}
    assert core and not core & {f"template-workflow-{name}" for name in WORKFLOW_NAMES}, core
    page.get_by_role("dialog").get_by_text(PACK_LINK, exact=True).click()
    page.locator(f'[data-testid="template-workflow-{WORKFLOW_NAMES[0]}"]').wait_for()
    listed = {card.get_attribute("data-testid").removeprefix("template-workflow-") for card in cards.all()}
    assert listed == set(WORKFLOW_NAMES)
    name = SD15_WORKFLOWS[0]
    page.locator(f'[data-testid="template-workflow-{name}"]').click()
    page.wait_for_function("() => window.app.graph.nodes.length > 0")
    page.wait_for_timeout(1000)
    opened = page.evaluate("() => window.app.graph.serialize().nodes.map(node => [node.id, node.type])")
    assert sorted(map(tuple, opened)) == sorted((node["id"], node["type"]) for node in editor_workflow(name)["nodes"])


VISIBLE_DIALOGS = "() => [...document.querySelectorAll('.p-dialog')].filter(d => d.offsetParent !== null).map(d => d.innerText)"


def _browsable(url: str) -> str:
    """The link the front-end copies for a Hugging Face file: its page (`/blob/`), not the raw download."""
    return url.replace("/resolve/", "/blob/") if "huggingface.co" in url else url


def _declared_models(node: dict, *, named_by_a_widget: bool) -> list[dict]:
    """The node's `properties.models` entries; with `named_by_a_widget`, only those whose file name one of its widgets
    holds (newer front-ends check no other: the Unified Loader's preset names no file, so its files are not listed
    there, and the node itself names them when the prompt is queued)."""
    entries = node["properties"].get("models", [])
    return [entry for entry in entries if not named_by_a_widget or entry["name"] in node["widgets_values"]]


def test_missing_models_are_listed_with_their_folder_and_link(playwright):
    """With no model files at all, opening each workflow lists the files it needs, under their folder, with the link
    of the one table (newer front-ends: the Errors panel; older ones: the Missing Models dialog, without links)."""
    with comfy_server(models_dir=None) as server, frontend_page(playwright, server.url) as page:
        for name in WORKFLOW_NAMES:
            _load(server, page, name)
            page.wait_for_timeout(1500)
            missing = page.evaluate(MISSING_MODELS)
            expected = {(entry["directory"], entry["name"], entry["url"]) for node in editor_workflow(name)["nodes"]
                        for entry in _declared_models(node, named_by_a_widget=missing["panel"])}  # fmt: skip
            if missing["panel"]:
                listed = {(row["folder"], row["file"], row["url"]) for row in missing["rows"]}
                assert listed == {(folder, file, _browsable(url)) for folder, file, url in expected}, (name, missing)
                assert missing["summary"] is not None, (name, missing)
            else:
                dialog = "\n".join(page.evaluate(VISIBLE_DIALOGS))
                assert "Missing Models" in dialog, (name, dialog)
                assert all(f"{folder} / {file}" in dialog for folder, file, _ in expected), (name, dialog)
                page.keyboard.press("Escape")
                page.wait_for_function("![...document.querySelectorAll('.p-dialog')].some(dialog => dialog.offsetParent)")


# --- ComfyUI_IPAdapter_plus workflows, converted when opened (nodes/web/port_workflows.js) ---------------------------

PORT_WORKFLOWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ipadapter-plus-workflows"
needs_port_workflows = pytest.mark.skipif(not PORT_WORKFLOWS.is_dir(), reason="../shared/data/ipadapter-plus-workflows is absent")
# The stand-ins' SD1.5 files for what the port's workflows name: every checkpoint is the SD1.5 stand-in, plus adapters
# the plus stand-in, others the base one; SDXL presets run as their SD1.5 counterparts.
STANDIN_CHECKPOINT, STANDIN_VIT_H = "v1-5-pruned-emaonly.safetensors", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


def _port_editor_files() -> list[Path]:
    """The shared port workflows in the editor format that the converter maps: those tests/port_workflow_files.py
    does not list as refused (tests/test_convert_workflow.py holds the converter to that list)."""
    import port_workflow_files

    if not PORT_WORKFLOWS.is_dir():
        return []
    return [path for path in sorted(PORT_WORKFLOWS.glob("*/*.json"))
            if f"{path.parent.name}/{path.name}" not in port_workflow_files.REFUSED
            and "nodes" in json.loads(path.read_text())]  # fmt: skip


def _on_sd15_standins(prompt: dict, pictures: list[str]) -> dict:
    prompt = json.loads(json.dumps(prompt))
    faces = any(node["class_type"] == "DecoupledIPAdapterEncodeFace" for node in prompt.values())
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if kind == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = STANDIN_CHECKPOINT
        elif kind == "CLIPVisionLoader":
            inputs["clip_name"] = STANDIN_VIT_H
        elif kind == "LoadImage":
            inputs["image"] = FACE_PICTURES[0] if faces else pictures[0]  # the stand-in InsightFace pack finds its face
        elif kind == "DecoupledIPAdapterUnifiedLoaderFaceID":
            inputs["base"] = "SD1.5"  # the stand-ins have the SD1.5 FaceID, PlusV2 and Portrait files
        elif kind == "DecoupledIPAdapterLoader":
            plus = "plus" in inputs["ipadapter_name"]
            inputs["ipadapter_name"] = "ip-adapter-plus_sd15.safetensors" if plus else "ip-adapter_sd15.safetensors"
        elif kind == "DecoupledIPAdapterUnifiedLoader":
            inputs["preset"] = "SD1.5 plus" if "plus" in inputs["preset"] else "SD1.5 standard"
    return shrunk(prompt, steps=1)  # one step: each file runs end to end; the samplers are not what is checked


def _group_nodes_of_other_packs(workflow: dict, registered: set) -> set[str]:
    """The names the front-end gives a group node (`workflow/<name>`, `workflow><name>`; an unregistered one is
    reported as `workflow<name>`) whose inner nodes include one of a third pack."""
    names = set()
    for name, group in workflow.get("extra", {}).get("groupNodes", {}).items():
        if {node["type"] for node in group.get("nodes", [])} - registered:
            names |= {f"workflow/{name}", f"workflow>{name}", f"workflow{name}"}
    return names


LOAD_ANSWERING = """async ([workflow, name, accept, settle]) => {
    const asked = [];
    const confirm = window.confirm;
    window.confirm = question => { asked.push(question); return accept; };
    try {
        window.app.graph.clear();
        await window.app.loadGraphData(workflow, true, true, name);
    } finally {
        window.confirm = confirm;
    }
    await new Promise(resolve => setTimeout(resolve, settle));  // the notices take a moment to show
    const nodes = window.app.graph.nodes;
    return {
        asked,
        types: nodes.map(node => node.type),
        unregistered: nodes.filter(node => !window.LiteGraph.registered_node_types[node.type]).map(node => node.type),
        output: (await window.app.graphToPrompt()).output,
        toasts: [...document.querySelectorAll('.p-toast-message, [data-testid="toast"]')]
            .filter(element => element.offsetParent !== null).map(element => element.innerText.trim()),
    };
}"""


@needs_port_workflows
def test_port_workflows_are_offered_converted_in_the_editor_and_run(page_on_server):
    """Each shared port workflow the converter maps, opened one after another in one page: the editor asks, the
    answer yes gives this pack's nodes and no missing node the file did not already miss (a third pack's), the
    front-end's prompt uses only them, and a file of core nodes and ours runs on the SD1.5 stand-ins (but those
    tests/port_workflow_files.py lists as not run): once, in the pass on the host's own front-end (the newest
    front-end's pass converts and checks the graphs; the prompts the runs would send are the backend's business, the
    same in both passes)."""
    import port_workflow_files
    from port_workflows.rules import is_port_node

    server, page = page_on_server
    run_them = not os.environ.get("COMFYUI_FRONT_END_ROOT")  # scripts/with_host.sh --frontend sets it
    registered = set(server.client.object_info())
    pictures = sorted(name for name in input_files() if name.endswith(".png"))
    ran = []
    for path in _port_editor_files():
        workflow = json.loads(path.read_text())
        third_party = {node["type"] for node in workflow["nodes"]} - registered
        third_party = {node_type for node_type in third_party if not is_port_node(node_type)}
        third_party |= _group_nodes_of_other_packs(workflow, registered)
        print(f"port workflow: {path.parent.name}/{path.name}", flush=True)  # where a crashed page was
        seen = page.evaluate(LOAD_ANSWERING, [workflow, path.name, True, 200])
        assert len(seen["asked"]) == 1 and "ComfyUI_IPAdapter_plus" in seen["asked"][0], (path.name, seen["asked"])
        assert not [kind for kind in seen["types"] if is_port_node(kind)], (path.name, seen["types"])
        assert set(seen["unregistered"]) <= third_party, (path.name, seen["unregistered"])
        assert any(kind.startswith("DecoupledIPAdapter") for kind in seen["types"]), path.name
        if third_party or not run_them or f"{path.parent.name}/{path.name}" in port_workflow_files.NOT_RUN:
            continue
        prompt = _on_sd15_standins(seen["output"], pictures)
        entry = run_prompt(server, prompt)
        assert entry["status"]["status_str"] == "success", (path.name, entry["status"])
        ran.append(path.name)
    assert ran or not run_them, "no shared port workflow of core nodes ran"


@needs_port_workflows
def test_declining_the_offer_leaves_the_port_nodes_and_an_unmappable_file_says_why(page_on_server):
    server, page = page_on_server
    simple = json.loads((PORT_WORKFLOWS / "examples" / "ipadapter_simple.json").read_text())
    seen = page.evaluate(LOAD_ANSWERING, [simple, "simple.json", False, 200])
    assert len(seen["asked"]) == 1 and {"IPAdapter", "IPAdapterUnifiedLoader"} <= set(seen["unregistered"]), seen
    kolors = json.loads((PORT_WORKFLOWS / "examples" / "ipadapter_kolors.json").read_text())
    seen = page.evaluate(LOAD_ANSWERING, [kolors, "kolors.json", True, 1500])
    assert "IPAdapterModelLoader" in seen["unregistered"], seen
    assert any("Not converted" in toast and "is a Kolors adapter" in toast for toast in seen["toasts"]), seen
