# The commands of the README. Each builds its test host (.host/) on first use.
.PHONY: demo test test-latest bench pin-frontend

# The main job: a headless ComfyUI with the pack runs workflows/api/01_image_prompt.json through the HTTP API
# and writes the image under out/.
demo:
	bash scripts/demo.sh

# Every test tier on ComfyUI 0.3.75 with its own front-end (1.32.9): unit, in-process ComfyUI, real ComfyUI servers and
# the browser. Then the tests of the OpenCLIP encoders and scores and of InsightFace's face analysis again, with the
# oldest open_clip_torch that the pack's requirements.txt admits and the oldest insightface and onnxruntime of its
# optional FaceID requirement laid over the host (the host pins the newest).
test:
	bash scripts/test.sh
	bash scripts/test.sh --overlay scripts/oldest-requirements.txt tests/test_openclip.py tests/test_clip_scores.py tests/test_face_analysis.py

# The same ComfyUI 0.3.75 backend serving the newest front-end (scripts/frontend-latest.txt: comfyui-frontend-package
# with the workflow templates and embedded docs it reads, laid over the host and served with --front-end-root).
# Only what a front-end can change runs again: the real-server tests marked `frontend`, which read what the front-end
# packages give: the browser tests (each workflow opened in the editor, its missing models and their links, graph to
# prompt, run from the page, the templates menu; SD1.5, Flux and SD3.5) and the templates the server lists and serves.
# tests/browser.py refuses to open the page in a test without that mark, so no browser test is left out. The other
# real-server tests send prompts through the HTTP API, whose answers come from the same backend whichever front-end
# it serves; they, the unit and the in-process tiers (which import no front-end file) run once, in `make test`. The
# full-size SDXL stand-in server (tests/test_workflows_sdxl.py: about 15 GB of RAM and minutes) runs in `make test`
# only: its editor checks are the ones the SD1.5 workflows get here.
test-latest:
	bash scripts/test.sh --frontend scripts/frontend-latest.txt -m frontend --deselect tests/test_workflows_sdxl.py

# Moves test-latest's pin to the newest front-end on PyPI (or FRONTEND=x.y.z), with the newest templates and docs.
pin-frontend:
	bash scripts/pin_frontend.sh $(FRONTEND)

# Speed and memory figures (not a test): prints a table, writes bench-results/bench.json.
bench:
	bash scripts/with_host.sh python scripts/bench.py
