# The commands of the README. Each builds its test host (.host/) on first use.
.PHONY: demo test test-latest bench

# The main job: a headless ComfyUI with the pack runs workflows/api/01_image_prompt.json through the HTTP API
# and writes the image under out/.
demo:
	bash scripts/demo.sh

# Every test tier: unit, in-process ComfyUI, real ComfyUI servers; on the ComfyUI 0.3.75 host.
test:
	bash scripts/test.sh

# The same suite on the ComfyUI 0.28.2 host (.host/0.28.2/), built from comfyui-0.28.2.tar.gz in ../shared/hosts/
# or the file COMFYUI_ARCHIVE names; all but the full-size SDXL server (15 GB of RAM, minutes) and the full-size DiT
# adapter files (`slow`: reading a file does not depend on the host), which `make test` runs, so that both hosts fit
# CI's time.
test-latest:
	DECOUPLED_IPADAPTER_HOST=0.28.2 bash scripts/test.sh --deselect tests/test_workflows_sdxl.py -m "not slow"

# Speed and memory figures (not a test): prints a table, writes bench-results/bench.json.
bench:
	bash scripts/with_host.sh python scripts/bench.py
