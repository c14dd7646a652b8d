// Opening a workflow made with ComfyUI_IPAdapter_plus (whose nodes are not installed) offers to convert it in place
// to this pack's nodes. The conversion is the server's (nodes/port_workflows_route.py), the same code as
// tools/convert_workflow.py, so the editor and the command line give the same graph.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ROUTES = "/decoupled_ipadapter/port_workflows";
let portNodeTypes = null;

async function knownPortNodeTypes() {
    if (portNodeTypes === null) {
        const response = await api.fetchApi(`${ROUTES}/node_types`);
        portNodeTypes = response.ok ? new Set(await response.json()) : new Set();
    }
    return portNodeTypes;
}

function tell(severity, summary, detail) {
    const toast = app.extensionManager?.toast;
    if (toast?.add) {
        toast.add({ severity, summary, detail, life: 15000 });
    } else {
        window.alert(`${summary}\n\n${detail}`);
    }
}

app.registerExtension({
    name: "DecoupledIPAdapter.PortWorkflows",
    async beforeConfigureGraph(graphData) {
        const nodes = Array.isArray(graphData?.nodes) ? graphData.nodes : [];
        const known = await knownPortNodeTypes();
        // Only the port's nodes that are not installed: a user who has that pack keeps its nodes.
        const found = [...new Set(nodes.map((node) => node.type))]
            .filter((type) => known.has(type) && !(type in window.LiteGraph.registered_node_types));
        if (found.length === 0) return;
        const question = `This workflow uses ComfyUI_IPAdapter_plus nodes, which are not installed: ${found.join(", ")}.\n\n`
            + "Convert them to Decoupled IP-Adapter nodes? Your settings are kept; what works differently is listed "
            + "afterwards (README: 'Coming from ComfyUI_IPAdapter_plus').";
        if (!window.confirm(question)) return;
        const response = await api.fetchApi(`${ROUTES}/convert`, {
            method: "POST",
            headers: { "Content-Type": "application/json" },
            body: JSON.stringify(graphData),
        });
        const result = await response.json();
        if (!response.ok) {
            tell("error", "Not converted", result.error);
            return;
        }
        for (const key of Object.keys(graphData)) delete graphData[key];
        Object.assign(graphData, result.workflow);
        const checks = result.report.filter((line) => line.trim().startsWith("check:"));
        tell("info", `Converted ${found.length} ComfyUI_IPAdapter_plus node type(s)`,
            checks.length ? checks.map((line) => line.trim().replace(/^check: /, "- ")).join("\n") : "Nothing to check.");
    },
});
