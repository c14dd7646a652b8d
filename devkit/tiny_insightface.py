"""A synthetic InsightFace model pack with buffalo_l's file names, input and output names and shapes, and the test
pictures its detector finds faces in.

- `det_10g.onnx` (SCRFD's interface: input `input.1` [1, 3, ?, ?]; nine outputs: scores [2·h·w, 1], boxes
  [2·h·w, 4] and five landmarks [2·h·w, 10] at strides 8, 16, 32). It scores only at stride 32: the brightness
  of the picture averaged over 32-pixel cells, then over 5×5 cells, through a steep sigmoid. A bright square on
  a dark picture (`face_picture`) is one face whose centre is the square's; a brighter square scores higher.
- `w600k_r50.onnx` (ArcFace's interface: input `input.1` [N, 3, 112, 112], one output [N, 512]): a fixed random
  linear map of the aligned crop averaged over 8×8 pixels, so different faces give different embeddings.

InsightFace's model zoo recognises them as its own detector and recogniser. Building both takes well under a second.
"""

from pathlib import Path

import numpy as np
import torch

PACK = "buffalo_l"
DETECTOR = "det_10g.onnx"
RECOGNISER = "w600k_r50.onnx"
SCORE_NAMES, BOX_NAMES, KPS_NAMES = ("448", "471", "494"), ("451", "474", "497"), ("454", "477", "500")
STRIDES = (8, 16, 32)
BOX_DISTANCE = 8.0  # strides from the anchor to each side of the box (256 px on the detector input): one face per square
LANDMARKS = (-1.2, -1.0, 1.2, -1.0, 0.0, 0.2, -1.0, 1.4, 1.0, 1.4)  # eyes, nose, mouth corners, in strides
OPSET = 17


def detector_model():
    """The det_10g.onnx stand-in (an onnx ModelProto)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["input.1"], ["gray"], name="gray", axes=[1], keepdims=1)]  # [1, 1, H, W]
    constants = [
        helper.make_tensor("box_distance", TensorProto.FLOAT, [1, 4], [BOX_DISTANCE] * 4),
        helper.make_tensor("landmarks", TensorProto.FLOAT, [1, 10], list(LANDMARKS)),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("off", TensorProto.FLOAT, [], [-30.0]),
        helper.make_tensor("centre", TensorProto.FLOAT, [], [0.2]),
        helper.make_tensor("steep", TensorProto.FLOAT, [], [25.0]),
        helper.make_tensor("column", TensorProto.INT64, [2], [-1, 1]),
    ]
    for stride, score, box, kps in zip(STRIDES, SCORE_NAMES, BOX_NAMES, KPS_NAMES):
        cells = f"cells{stride}"
        nodes.append(helper.make_node("AveragePool", ["gray"], [cells], name=cells, kernel_shape=[stride, stride], strides=[stride, stride]))
        if stride == 32:
            nodes += [
                helper.make_node("AveragePool", [cells], ["area"], name="area", kernel_shape=[5, 5], pads=[2, 2, 2, 2], count_include_pad=0),
                helper.make_node("Sub", ["area", "centre"], ["shifted"], name="shift"),
                helper.make_node("Mul", ["shifted", "steep"], [f"logit{stride}"], name="steepen"),
            ]  # fmt: skip
        else:
            nodes += [
                helper.make_node("Mul", [cells, "zero"], [f"flat{stride}"], name=f"flatten{stride}"),
                helper.make_node("Add", [f"flat{stride}", "off"], [f"logit{stride}"], name=f"silence{stride}"),
            ]
        nodes += [
            helper.make_node("Sigmoid", [f"logit{stride}"], [f"prob{stride}"], name=f"prob{stride}"),
            helper.make_node("Reshape", [f"prob{stride}", "column"], [f"one{stride}"], name=f"one{stride}"),  # [h·w, 1]
            helper.make_node("Concat", [f"one{stride}", f"one{stride}"], [f"two{stride}"], name=f"two{stride}", axis=1),
            helper.make_node("Reshape", [f"two{stride}", "column"], [score], name=f"score{stride}"),  # [2·h·w, 1]
            helper.make_node("Mul", [score, "zero"], [f"nothing{stride}"], name=f"nothing{stride}"),
            helper.make_node("Add", [f"nothing{stride}", "box_distance"], [box], name=f"box{stride}"),  # [2·h·w, 4]
            helper.make_node("Add", [f"nothing{stride}", "landmarks"], [kps], name=f"kps{stride}"),  # [2·h·w, 10]
        ]
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width])
        for names, width in ((SCORE_NAMES, 1), (BOX_NAMES, 4), (KPS_NAMES, 10))
        for name in names
    ]
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    graph = helper.make_graph(nodes, "scrfd_standin", [image], outputs, initializer=constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def recogniser_model():
    """The w600k_r50.onnx stand-in (an onnx ModelProto)."""
    from onnx import TensorProto, helper, numpy_helper

    generator = np.random.default_rng(23)
    projection = (generator.standard_normal((3 * 14 * 14, 512)) / 24).astype(np.float32)
    nodes = [
        helper.make_node("AveragePool", ["input.1"], ["pooled"], name="pool", kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),  # [N, 588]
        helper.make_node("MatMul", ["flat", "projection"], ["683"], name="embed"),  # [N, 512]
    ]
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])
    output = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])
    graph = helper.make_graph(nodes, "arcface_standin", [image], [output], initializer=[numpy_helper.from_array(projection, "projection")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8)


def build_insightface_pack(root: Path, *, name: str = PACK) -> Path:
    """`root/models/<name>/` with the two ONNX files (written once); returns that folder."""
    folder = Path(root) / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, build in ((DETECTOR, detector_model), (RECOGNISER, recogniser_model)):
        if not (folder / file_name).is_file():
            write_model(build, folder / file_name)
    return folder


def write_model(build, path: Path) -> None:
    """The ONNX model `build()` makes, checked, written to `path`."""
    import onnx

    model = build()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def face_picture(*, seed: int, size: int = 256, centres=((0.5, 0.5),), brightness=(1.0,), face: float = 0.4) -> torch.Tensor:
    """A ComfyUI IMAGE `[1, size, size, 3]`: a dark background with a textured bright square (a face for the
    stand-in detector) at each centre (fractions of the size), each as bright as its `brightness` (0..1)."""
    generator = torch.Generator().manual_seed(seed)
    picture = 0.1 + 0.05 * torch.rand(size, size, 3, generator=generator)  # [S, S, 3]
    half = int(size * face / 2)
    for (x, y), level in zip(centres, brightness):
        cx, cy = int(x * size), int(y * size)
        texture = 0.75 + 0.25 * torch.rand(2 * half, 2 * half, 3, generator=generator)  # [F, F, 3]
        picture[cy - half : cy + half, cx - half : cx + half] = level * texture
    return picture.unsqueeze(0)  # [1, S, S, 3]


def blank_picture(size: int = 256) -> torch.Tensor:
    """A picture without a face for the stand-in detector: `[1, S, S, 3]`, dark grey."""
    return torch.full((1, size, size, 3), 0.1)
