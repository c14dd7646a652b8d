# The two commands of the README. Both build the test host (.host/) on first use.
.PHONY: demo test bench

# The main job: a headless ComfyUI with the pack runs workflows/api/01_image_prompt.json through the HTTP API
# and writes the image under out/.
demo:
	bash scripts/demo.sh

# Every test tier: unit, in-process ComfyUI, real ComfyUI servers.
test:
	bash scripts/test.sh

# Speed and memory figures (not a test): prints a table, writes bench-results/bench.json.
bench:
	bash scripts/with_host.sh python scripts/bench.py
