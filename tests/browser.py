"""Headless Chromium on the real ComfyUI front-end, for the workflow tests.

Debian's /usr/bin/chromium driven by the Python `playwright` package (its own browser download is never used:
scripts/test.sh installs Debian's chromium). Each session gets a fresh profile folder.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import requests
from conftest import FRONTEND_TESTS

CHROMIUM = Path(os.environ.get("DECOUPLED_IPADAPTER_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
# Front-end settings for a test run: no first-run template dialog.
SETTINGS = {"Comfy.TutorialCompleted": True}
VIEWPORT = {"width": 1800, "height": 1100}


def require_chromium() -> Path:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (scripts/test.sh does it)")
    return CHROMIUM


@contextlib.contextmanager
def playwright_driver():
    """The playwright driver for a test module (one per process at a time: its sync API cannot nest)."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as playwright:
        yield playwright


@contextlib.contextmanager
def frontend_page(playwright, url: str, *, timeout_ms: float = 90_000):
    """A page with ComfyUI's front-end loaded from `url` (the graph canvas ready), in a fresh browser profile;
    `page.console` collects the browser's console lines and uncaught page errors. Only a test marked `frontend` may
    open one (see conftest.FRONTEND_TESTS)."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    if current and current not in FRONTEND_TESTS:
        pytest.fail(f"{current} opens the editor page: mark it @pytest.mark.frontend, so make test-latest runs it too")
    requests.post(f"{url}/settings", json=SETTINGS, timeout=30).raise_for_status()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(require_chromium()), headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT,
        )  # fmt: skip
        try:
            page = context.new_page()
            page.set_default_timeout(timeout_ms)
            page.console = []
            page.on("console", lambda message: page.console.append(f"{message.type}: {message.text}"))
            page.on("pageerror", lambda error: page.console.append(f"pageerror: {error}"))
            page.goto(url)
            page.wait_for_function("window.app && window.app.graph && window.app.canvas && window.LiteGraph")
            # Newer front-ends check the start-up graph's models and nodes in the background (requests to the
            # server); a workflow loaded before that check ends has its own problems overwritten by it.
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(2000)
            yield page
        finally:
            context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


LOAD_AND_INSPECT = """async ([workflow, name]) => {
    window.app.graph.clear();
    await window.app.loadGraphData(workflow, true, true, name);
    await new Promise(resolve => setTimeout(resolve, 2500));  // newer front-ends report load problems after a moment
    const graph = window.app.graph;
    const unregistered = graph.nodes.filter(node => !window.LiteGraph.registered_node_types[node.type])
        .map(node => `${node.id} ${node.type}`);
    const withErrors = graph.nodes.filter(node => node.has_errors).map(node => `${node.id} ${node.type}`);
    const prompt = await window.app.graphToPrompt();
    const saved = graph.serialize();
    const visible = selector => [...document.querySelectorAll(selector)]
        .filter(element => element.offsetParent !== null).map(element => element.innerText.trim());
    // Newer front-ends report load problems (missing nodes, models, inputs) in an overlay ("N issues found", with
    // "View details") instead of a dialog: its text.
    const errorCards = visible('[data-testid="error-overlay"]').map(text => text.slice(0, 600));
    return {
        unregistered, withErrors, output: prompt.output, links: saved.links,
        // a node without widgets (VAEDecode) saves [] in older front-ends and no widgets_values in newer ones
        widgets: Object.fromEntries(saved.nodes.map(node => [node.id, node.widgets_values ?? []])),
        dialogs: visible('.p-dialog'), toasts: visible('.p-toast-message, [data-testid="toast"]'), errorCards,
    };
}"""

SHRINK = """([sizeInputs, size, steps, seedOffset, stepNodes]) => {
    for (const node of window.app.graph.nodes) {
        for (const widget of node.widgets || []) {
            if ((sizeInputs[node.type] || []).includes(widget.name)) widget.value = size;
            if (stepNodes.includes(node.type) && widget.name === 'steps') widget.value = steps;
            if (node.type === 'KSampler' && widget.name === 'seed') widget.value += seedOffset;
        }
    }
    window.app.graph.setDirtyCanvas(true, true);
}"""

SWAP_NODES = """([nodeType, standinType, copied, fixed]) => {
    // Each node of nodeType becomes a new standinType node: widgets from `copied` (its widget <- the old node's)
    // and `fixed` (values), the old node's first output's links moved to the new node's first output.
    const graph = window.app.graph;
    const linkOf = id => graph.links.get ? graph.links.get(id) : graph.links[id];
    for (const old of graph.nodes.filter(node => node.type === nodeType)) {
        const node = window.LiteGraph.createNode(standinType);
        graph.add(node);
        node.pos = [old.pos[0], old.pos[1]];
        for (const widget of node.widgets || []) {
            if (widget.name in copied) widget.value = old.widgets.find(w => w.name === copied[widget.name]).value;
            if (widget.name in fixed) widget.value = fixed[widget.name];
        }
        const targets = (old.outputs[0].links || []).map(linkOf).map(link => [link.target_id, link.target_slot]);
        graph.remove(old);
        for (const [target, slot] of targets) node.connect(0, graph.getNodeById(target), slot);
    }
    graph.setDirtyCanvas(true, true);
}"""

QUEUE = "async () => { await window.app.queuePrompt(0, 1); }"

FIT_VIEW = """() => {
    const nodes = window.app.graph.nodes, canvas = window.app.canvas, pad = 40;
    const left = Math.min(...nodes.map(node => node.pos[0])) - pad;
    const top = Math.min(...nodes.map(node => node.pos[1])) - 2 * pad;
    const right = Math.max(...nodes.map(node => node.pos[0] + node.size[0])) + pad;
    const bottom = Math.max(...nodes.map(node => node.pos[1] + node.size[1])) + pad;
    const scale = Math.min(canvas.canvas.width / (right - left), canvas.canvas.height / (bottom - top), 1);
    canvas.ds.scale = scale;
    canvas.ds.offset = [-left + 60 / scale, -top + 60 / scale];
    canvas.setDirty(true, true);
}"""

# The front-end's list of missing model files, as a user sees it: in newer front-ends the Errors panel (opened with the
# overlay's "View details"), each row's file, the folder under its name and the link its "Copy URL" button copies
# (the clipboard is replaced by a recorder), and the overlay's "N issues found" line, read before the panel is opened.
# `panel` is false where the front-end has no such panel (older ones, 1.32.9 among them, show a dialog instead).
MISSING_MODELS = """async () => {
    const copied = [];
    Object.defineProperty(navigator, 'clipboard', {
        value: {writeText: async text => { copied.push(text); }, readText: async () => ''}, configurable: true,
    });
    const pause = ms => new Promise(resolve => setTimeout(resolve, ms));
    const summary = document.body.innerText.match(/\\d+ issues? found/);
    const details = document.querySelector('[data-testid="error-overlay-see-errors"]');
    if (details) { details.click(); await pause(1000); }
    const rows = [];
    for (const button of document.querySelectorAll('button[aria-label="Copy URL"]')) {
        // the row: the nearest element around the button with the file's name over its folder
        let row = button.parentElement;
        while (row && row.innerText.trim().split('\\n').length < 2) row = row.parentElement;
        const [file, folder] = row ? row.innerText.trim().split('\\n').map(line => line.trim()) : [null, null];
        const before = copied.length;
        button.click();
        await pause(150);
        rows.push({file, folder, url: copied.length > before ? copied[copied.length - 1] : null});
    }
    const panel = Boolean(details) || Boolean(document.querySelector('[data-testid="missing-model-importable-rows"]'));
    return {panel, rows, summary: summary ? summary[0] : null};
}"""
