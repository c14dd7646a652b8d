"""The server routes behind the editor's offer to convert a ComfyUI_IPAdapter_plus workflow (nodes/web/
port_workflows.js): the port's node types, and the conversion itself, done by the same code as
tools/convert_workflow.py (tools/port_workflows/)."""

import logging

from aiohttp import web

from ..tools.port_workflows.formats import convert
from ..tools.port_workflows.rules import PORT_NODE_TYPES, NotConvertible

ROUTES = "/decoupled_ipadapter/port_workflows"


async def node_types(request: web.Request) -> web.Response:
    """The port's node ids the converter knows (those it maps and those it names as not mapped yet)."""
    return web.json_response(sorted(PORT_NODE_TYPES))


async def convert_workflow(request: web.Request) -> web.Response:
    """The posted workflow converted: {"workflow", "report"}; a workflow it cannot map gives 422 and {"error"} naming
    the node types and why, anything that is not a workflow 400."""
    try:
        workflow = await request.json()
    except ValueError:
        return web.json_response({"error": "the request body is not JSON"}, status=400)
    if not isinstance(workflow, dict):
        return web.json_response({"error": "a workflow is a JSON object"}, status=400)
    try:
        converted, report = convert(workflow)
    except NotConvertible as refused:
        return web.json_response({"error": f"cannot map: {refused}"}, status=422)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        logging.warning("Decoupled IP-Adapter: a workflow posted for conversion could not be read: %r", error)
        return web.json_response({"error": f"not a ComfyUI workflow this converter can read ({error!r})"}, status=400)
    return web.json_response({"workflow": converted, "report": report})


def register_routes() -> None:
    """Adds the routes to ComfyUI's server (nothing when ComfyUI runs without one, as in-process tests do)."""
    from server import PromptServer

    server = getattr(PromptServer, "instance", None)
    if server is None:
        return
    server.routes.get(f"{ROUTES}/node_types")(node_types)
    server.routes.post(f"{ROUTES}/convert")(convert_workflow)
