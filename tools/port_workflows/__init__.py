"""Converting ComfyUI_IPAdapter_plus workflows ("the port's") to this pack's nodes: the one mapping that the command
line (tools/convert_workflow.py) and the editor (nodes/web/port_workflows.js, through the server route of
nodes/port_workflows_route.py) both use.

vocabulary.py: the two node vocabularies; rules.py: what replaces each port node; formats.py: the editor and API
formats read and written. Pure Python: no ComfyUI, no torch.
"""
