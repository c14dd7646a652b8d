"""The SDXL example workflow (workflows/08_sdxl_vit_h.json) on a full-size SDXL stand-in, in a server of its own.

ComfyUI recognises SDXL only from the real layer sizes, so the stand-in is a full sd_xl_base_1.0-shaped checkpoint
(3.47 B parameters, 6.6 GB fp16, random values; devkit/standins.py writes it tensor by tensor). On a CPU ComfyUI
holds its UNet in fp32: this server alone needs about 13 GB of RAM, so it runs by itself, after the SD1.5 ones.
Checks: the API file validates against /object_info and runs (ComfyUI builds model_base.SDXL from the file); the
editor file opens in the front-end, its graphToPrompt equals the API file, and it runs when queued from there.
"""

import pytest
from browser import frontend_page, playwright_driver
from server_harness import comfy_server, standin_models
from test_workflows import upload_inputs, validate_and_run
from test_workflows_browser import check_in_the_editor
from workflow_checks import SDXL_WORKFLOW


pytestmark = pytest.mark.server


def test_sdxl_workflow_runs_through_the_api_and_the_editor():
    models = standin_models(groups=("demo", "sdxl"))
    with comfy_server(models_dir=models) as server:
        upload_inputs(server)
        validate_and_run(server, SDXL_WORKFLOW)
        # ComfyUI names the model class it built from the checkpoint: model_base.SDXL, not an SD1.5 fallback.
        assert "Requested to load SDXL\n" in server.log(), server.log_tail()
        with playwright_driver() as playwright, frontend_page(playwright, server.url) as page:
            check_in_the_editor(server, page, SDXL_WORKFLOW)
