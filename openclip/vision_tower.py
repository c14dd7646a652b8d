"""An OpenCLIP image tower with the call signature and outputs of ComfyUI's CLIP vision model.

ComfyUI's `CLIPVisionModelProjection` is called as `model(pixel_values=..., intermediate_output=-2)` and returns
(last hidden state, the hidden state after the requested layer, image embeds, multimodal projection), and it carries
the image projection as `visual_projection` (a Linear, weight [embed_dim, width]). This module gives open_clip's
VisionTransformer the same face: its `proj` parameter [width, embed_dim] becomes `visual_projection.weight` (its
transpose, the same numbers), so the projection is applied once, here.
"""

import torch


class OpenCLIPVisionModel(torch.nn.Module):
    def __init__(self, visual: torch.nn.Module):
        super().__init__()
        width, embed_dim = visual.proj.shape
        self.visual_projection = torch.nn.Linear(width, embed_dim, bias=False, device="meta", dtype=visual.proj.dtype)
        self.visual_projection.weight = torch.nn.Parameter(visual.proj.detach().t().contiguous(), requires_grad=False)
        visual.proj = None  # open_clip then returns the pooled, layer-normed class token unprojected
        self.visual = visual
        self.layers = len(visual.transformer.resblocks)

    def forward(self, pixel_values: torch.Tensor, intermediate_output: int | None = None):
        """`pixel_values` [B, 3, S, S] (normalised) -> (last hidden [B, T, W], hidden after layer
        `intermediate_output` [B, T, W] or None, image embeds [B, E], None)."""
        last = self.layers - 1
        wanted = None if intermediate_output is None else intermediate_output % self.layers
        indices = sorted({last, wanted} - {None})
        out = self.visual.forward_intermediates(
            pixel_values.to(self.visual_projection.weight.dtype), indices=indices, output_fmt="NLC", output_extra_tokens=True
        )
        hidden = {  # layer index -> [B, T, W]: the class token [B, 1, W] put back before the patch tokens [B, T-1, W]
            index: torch.cat([prefix, patches], dim=1)
            for index, prefix, patches in zip(indices, out["image_intermediates_prefix"], out["image_intermediates"])
        }
        image_embeds = self.visual_projection(out["image_features"])  # [B, W] -> [B, E]
        return hidden[last], None if wanted is None else hidden[wanted], image_embeds, None
