"""The shared ComfyUI_IPAdapter_plus workflows (../shared/data/ipadapter-plus-workflows): which the converter refuses
(and the port node types it names), and which of the converted ones the browser test does not run on its SD1.5
stand-ins (and why). The one list that tests/test_convert_workflow.py and tests/test_workflows_browser.py read; a file
not named here converts, and the browser test runs it when it needs no third-party pack.
"""

# file (relative to the set's folder) -> the node types the refusal names
REFUSED = {
    "examples/IPAdapter_FaceIDv2_Kolors.json": {"IPAdapterFaceIDKolors", "IPAdapterModelLoader"},  # Kolors
    "examples/ipadapter_clipvision_enhancer.json": {"IPAdapterClipVisionEnhancer"},  # average over whole + tiled
    "examples/ipadapter_kolors.json": {"IPAdapterModelLoader"},  # Kolors
    "wild/MinusZoneAI__ComfyUI-Kolors-MZ__workflow_ipa.json": {"IPAdapterModelLoader"},  # Kolors
    "wild/cozymantis__experiment-character-turnaround-animation-sv3d-ipadapter-batch-comfyui-workflow__"
    "experiment-sv3d-ipadapter.json": {"IPAdapterTiledBatch"},
    "wild/fofr__cog-comfyui-kolors-with-ipadapter__workflow_api.json": {"IPAdapterUnifiedLoaderCommunity"},  # Kolors
    "wild/fofr__cog-comfyui-kolors-with-ipadapter__workflow_ui.json": {"IPAdapterUnifiedLoaderCommunity"},  # Kolors
}

# converted files that the browser test opens but does not run, and why
NOT_RUN = {
    "wild/aimpowerment__comfyui-workflows__updated_artistic_images_workflow.json": "its .ipadpt files are not there",
    "wild/aimpowerment__comfyui-workflows__updated_stable_video_diff_workflow.json": "its .ipadpt files are not there",
}
