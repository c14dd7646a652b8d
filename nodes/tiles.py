"""IPAdapter Tiles: a large or long reference cut into overlapping tiles, each with the mask of its own region."""

from comfy_api.latest import io

from ..ipadapter_core.pictures.tiles import TILE_SIZE, tiles_and_masks
from .errors import errors_named_for


class Tiles(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterTiles",
            display_name="IPAdapter Tiles",
            category="decoupled_ipadapter",
            description=(
                f"Cuts a reference picture into overlapping {TILE_SIZE}x{TILE_SIZE} tiles (a near-square picture: its "
                "centre square in 2x2 tiles; a longer one: the short side resized to "
                f"{TILE_SIZE}, at most 4 tiles along the long side) and gives each tile a mask of its region. Connect "
                "tiles to IPAdapter Encode Image's image and masks to Apply IPAdapter's attn_mask: each tile then "
                "acts only on its part of the picture, with its own softmax."
            ),
            inputs=[
                io.Image.Input(
                    "image",
                    tooltip="The reference pictures; with several, the tiles come tile by tile (tile 1 of every "
                    "picture, then tile 2, ...), and a tile's pictures share one softmax.",
                ),
                io.Float.Input(
                    "sharpening",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Contrast-adaptive sharpening of the resized picture (as Prep Image's); 0 = off.",
                ),
                io.Mask.Input(
                    "attn_mask",
                    optional=True,
                    tooltip="Optional: where on the picture the image prompt acts; each tile's mask is this mask "
                    "inside the tile's region. One mask, or one per picture.",
                ),
            ],
            outputs=[
                io.Image.Output(
                    display_name="tiles",
                    tooltip=f"The tiles, {TILE_SIZE}x{TILE_SIZE} each; connect to IPAdapter Encode Image's image.",
                ),
                io.Mask.Output(
                    display_name="masks",
                    tooltip="One mask per tile (per tile and picture with one mask per picture), at the size of the "
                    "resized picture; connect to Apply IPAdapter's attn_mask.",
                ),
            ],
        )

    @classmethod
    def execute(cls, image, sharpening, attn_mask=None) -> io.NodeOutput:
        with errors_named_for("IPAdapter Tiles"):
            tiles, masks = tiles_and_masks(image, sharpening=sharpening, attn_mask=attn_mask)
        return io.NodeOutput(tiles, masks)
