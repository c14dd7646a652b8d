"""IPAdapter Noise: a noise picture to encode as the image prompt's negative."""

from comfy_api.latest import io

from ..ipadapter_core.pictures.noise import NOISE_KINDS, NOISE_SIZE, noise_pictures
from .errors import errors_named_for, one_of, validation_result


class NoiseImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DecoupledIPAdapterNoise",
            display_name="IPAdapter Noise",
            category="decoupled_ipadapter",
            description=(
                f"Makes {NOISE_SIZE}x{NOISE_SIZE} noise pictures to connect to Encode Image's negative_image: the "
                "reference degraded (or a black square without one), so the negative keeps its colours but not its "
                "content. fade: mixed with uniform noise. dissolve: pixels replaced by random colours. gaussian: "
                "Gaussian noise added. shuffle: pixels moved, the picture turned and mirrored, noise multiplied in. "
                "The same seed gives the same picture."
            ),
            inputs=[
                io.Combo.Input("type", options=list(NOISE_KINDS), default="fade", tooltip="The kind of noise; see the node description."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05, tooltip="How much noise: 0 keeps the picture (shuffle still moves it), 1 the most."),
                io.Int.Input("blur", default=0, min=0, max=32, tooltip="Gaussian blur after the noise, in pixels (0: none; an even size is made odd)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="The random draws' seed."),
                io.Image.Input("image", optional=True, tooltip="The reference to degrade, one noise picture per picture; without it, a black square."),
            ],
            outputs=[io.Image.Output(tooltip="The noise pictures; connect to Encode Image's negative_image.")],
        )

    @classmethod
    def validate_inputs(cls, type=None):
        return validation_result(type, one_of(NOISE_KINDS, input_name="type"))

    @classmethod
    def execute(cls, type, strength, blur, seed, image=None) -> io.NodeOutput:
        with errors_named_for("IPAdapter Noise"):
            return io.NodeOutput(noise_pictures(type, strength=strength, blur=blur, seed=seed, image=image))
