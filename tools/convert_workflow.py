"""Converts a workflow made with ComfyUI_IPAdapter_plus to this pack's nodes.

    python tools/convert_workflow.py IN.json -o OUT.json

Editor format in gives editor format out; API format in gives API format out. IN is never changed. The report on
standard output says what each of the port's nodes became and what to check where the meaning differs. Exit 0 when
every node was mapped; otherwise exit 2 with one line naming the node types it cannot map and why (OUT is then not
written). Runs with any Python 3.11+, without ComfyUI.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from port_workflows.rules import NotConvertible  # noqa: E402
from port_workflows.formats import convert, is_editor_format, port_node_types  # noqa: E402

EXIT_NOT_MAPPED = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="the workflow (.json, editor or API format)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where to write the converted workflow")
    args = parser.parse_args(argv)
    if args.output.resolve() == args.input.resolve():
        parser.error("the output must be another file: the input is never changed")
    try:
        workflow = json.loads(args.input.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"convert_workflow: cannot read {args.input}: {error}", file=sys.stderr)
        return 1
    if not isinstance(workflow, dict):
        print(f"convert_workflow: {args.input} is not a ComfyUI workflow (a JSON object)", file=sys.stderr)
        return 1
    kind = "editor" if is_editor_format(workflow) else "API"
    try:
        converted, report = convert(workflow)
    except NotConvertible as error:
        print(f"convert_workflow: {args.input}: cannot map: {error}", file=sys.stderr)
        return EXIT_NOT_MAPPED
    args.output.write_text(json.dumps(converted, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    found = sorted(port_node_types(workflow))
    print(f"{args.input} ({kind} format): {len(found)} port node type(s) converted{': ' if found else ''}"
          f"{', '.join(found)}")  # fmt: skip
    for line in report:
        print(line)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
