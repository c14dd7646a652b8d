# The commands of the README. Each builds its test host (.host/) on first use.
.PHONY: demo test test-latest bench pin-frontend

# The main job: a headless ComfyUI with the pack runs workflows/api/01_image_prompt.json through the HTTP API
# and writes the image under out/.
demo:
	bash scripts/demo.sh

# Every test tier on ComfyUI 0.3.75 with its own front-end (1.32.9): unit, in-process ComfyUI, real ComfyUI servers and
# the browser. Then the tests of the OpenCLIP encoders and scores again, with the oldest open_clip_torch that the
# pack's requirements.txt admits laid over the host (the host pins the newest).
test:
	bash scripts/test.sh
	bash scripts/test.sh --overlay scripts/oldest-requirements.txt tests/test_openclip.py tests/test_clip_scores.py

# The same ComfyUI 0.3.75 backend serving the newest front-end (scripts/frontend-latest.txt: comfyui-frontend-package
# with the workflow templates and embedded docs it reads, laid over the host and served with --front-end-root).
# Only the tiers a front-end can change run again: the real-server tests (`-m server`: what the server serves, the
# templates it lists, the workflows queued through it) and, among them, the browser tests (each workflow opened in
# the editor, its missing models and their links, graph to prompt, run from the page, the templates menu). The unit
# and in-process tiers import no front-end file, so `make test` runs them once. The full-size SDXL stand-in server
# (tests/test_workflows_sdxl.py: about 15 GB of RAM and minutes) runs in `make test` only: its editor checks are the
# same as the SD1.5 workflows' here, which cover what the front-end does with our nodes.
test-latest:
	bash scripts/test.sh --frontend scripts/frontend-latest.txt -m server --deselect tests/test_workflows_sdxl.py

# Moves test-latest's pin to the newest front-end on PyPI (or FRONTEND=x.y.z), with the newest templates and docs.
pin-frontend:
	bash scripts/pin_frontend.sh $(FRONTEND)

# Speed and memory figures (not a test): prints a table, writes bench-results/bench.json.
bench:
	bash scripts/with_host.sh python scripts/bench.py
