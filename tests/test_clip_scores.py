"""CLIP-I and CLIP-T (IP-Adapter paper, section 4.2): the formulas, known answers on a tiny random OpenCLIP model, the
scoring node in-process, and the command-line tool on a folder of batch-tool PNGs and on a CSV."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin
from tiny_openclip import SMALL, openclip_config, save_openclip, tiny_openclip, tiny_openclip_state_dict

from decoupled_ipadapter.scoring.clip_scores import CLIPSCORE_WEIGHT, clip_i, clip_score, scores_of_embeddings
from decoupled_ipadapter.ipadapter_core.errors import IPAdapterError
from decoupled_ipadapter.openclip.preprocessing import comfy_clip_preprocess

REPO = Path(__file__).resolve().parents[1]


def direct_cosine(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return (first * second).sum(-1) / (first.norm(dim=-1) * second.norm(dim=-1))


# --- formulas (no host) -----------------------------------------------------------------------------------------------


def test_formulas_match_a_direct_computation():
    generator = torch.Generator().manual_seed(0)
    images, prompts, captions = (torch.randn(5, 8, generator=generator) for _ in range(3))
    assert torch.allclose(clip_i(images, prompts), direct_cosine(images, prompts), atol=1e-6)
    assert torch.allclose(clip_i(images, prompts), clip_i(prompts, images))  # CLIP-I is symmetric
    scores = scores_of_embeddings(images, prompts, captions, where="test")
    cosine = direct_cosine(images, captions)
    assert torch.allclose(scores.clip_t_cosine, cosine, atol=1e-6)
    assert torch.allclose(scores.clip_t, CLIPSCORE_WEIGHT * torch.where(cosine > 0, cosine, torch.zeros_like(cosine)), atol=1e-6)
    assert (cosine < 0).any() and (scores.clip_t[cosine < 0] == 0).all()  # CLIPScore clips negative cosines to 0
    assert clip_score(torch.tensor([0.3]), weight=1.0).item() == pytest.approx(0.3)


def test_one_prompt_is_broadcast_and_a_count_mismatch_is_refused():
    generator = torch.Generator().manual_seed(1)
    images, prompt = torch.randn(3, 8, generator=generator), torch.randn(1, 8, generator=generator)
    assert torch.allclose(scores_of_embeddings(images, prompt, None, where="t").clip_i, direct_cosine(images, prompt), atol=1e-6)
    with pytest.raises(IPAdapterError, match="3 generated images but 2 image prompts"):
        scores_of_embeddings(images, torch.randn(2, 8), None, where="t")
    with pytest.raises(IPAdapterError, match="not from one CLIP model"):
        scores_of_embeddings(images, prompt, torch.randn(1, 6), where="t")


# --- with a tiny OpenCLIP model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_files(comfy_host, tmp_path_factory):
    """The SMALL model with and without its text tower (and its config), in a folder registered as a clip_vision folder
    meanwhile."""
    import folder_paths

    root = tmp_path_factory.mktemp("scoring_models")
    files = {
        "full": save_openclip(
            tiny_openclip_state_dict(SMALL, seed=7), root / "open_clip_model.safetensors", config=openclip_config(SMALL)
        ),
        "vision_only": save_openclip(tiny_openclip_state_dict(SMALL, seed=7, text=False), root / "vision_only.bin"),
    }
    folder_paths.add_model_folder_path("clip_vision", str(root))
    yield files
    paths = folder_paths.folder_names_and_paths["clip_vision"][0]
    if str(root) in paths:
        paths.remove(str(root))


@pytest.fixture(scope="module")
def model(model_files):
    from decoupled_ipadapter.openclip.model import load_openclip_model

    return load_openclip_model(str(model_files["full"]))


def pictures(count: int, *, seed: int) -> torch.Tensor:
    return torch.rand(count, 36, 44, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.host
def test_known_answers_self_symmetry_and_batches(model):
    from decoupled_ipadapter.scoring.clip_scores import score_images

    generated, prompt = pictures(3, seed=1), pictures(1, seed=2)
    assert torch.allclose(score_images(model, prompt, prompt, "", where="t").clip_i, torch.ones(1), atol=1e-6)
    forward = score_images(model, generated[:1], prompt, "", where="t").clip_i
    backward = score_images(model, prompt, generated[:1], "", where="t").clip_i
    assert torch.allclose(forward, backward, atol=1e-6)
    batch = score_images(model, generated, prompt, "a red bicycle", where="t")
    for index in range(3):
        single = score_images(model, generated[index : index + 1], prompt, "a red bicycle", where="t")
        for name in ("clip_i", "clip_t", "clip_t_cosine"):
            assert torch.allclose(getattr(batch, name)[index], getattr(single, name)[0], atol=1e-5), name
    assert len(set(batch.clip_i.tolist())) == 3  # the images really differ


@pytest.mark.host
def test_scores_match_open_clip_itself(model):
    """The whole chain against open_clip's own CLIP (same weights) fed ComfyUI's preprocessing and the tokenizer."""
    import open_clip

    from decoupled_ipadapter.scoring.clip_scores import score_images

    oracle = tiny_openclip(SMALL, seed=7)
    generated, prompt, caption = pictures(2, seed=3), pictures(1, seed=4), "two dogs on a beach"
    with torch.no_grad():
        image_features = oracle.encode_image(comfy_clip_preprocess()(torch.cat([generated, prompt]), size=32))
        text_features = oracle.encode_text(open_clip.tokenizer.SimpleTokenizer(context_length=16)([caption]))
    expected_i = direct_cosine(image_features[:2], image_features[2:])
    expected_cosine = direct_cosine(image_features[:2], text_features)
    scores = score_images(model, generated, prompt, caption, where="t")
    assert torch.allclose(scores.clip_i, expected_i, atol=1e-5)
    assert torch.allclose(scores.clip_t_cosine, expected_cosine, atol=1e-5)
    assert torch.allclose(scores.clip_t, 2.5 * expected_cosine.clamp(min=0), atol=1e-5)


@pytest.mark.host
def test_a_model_without_text_tower_gives_clip_i_and_refuses_clip_t(model_files):
    from decoupled_ipadapter.scoring.clip_scores import score_images
    from decoupled_ipadapter.openclip.model import load_openclip_model

    vision_only = load_openclip_model(str(model_files["vision_only"]))
    assert vision_only.text is None
    assert score_images(vision_only, pictures(1, seed=5), pictures(1, seed=6), "", where="t").clip_t is None
    with pytest.raises(IPAdapterError, match="'vision_only.bin' holds an image tower only.*leave the caption empty"):
        score_images(vision_only, pictures(1, seed=5), pictures(1, seed=6), "a cat", where="Scores")


# --- the node, in-process ---------------------------------------------------------------------------------------------


@pytest.mark.host
def test_scores_node_shows_the_scores_and_outputs_their_means(comfy_host, model_files, model):
    from decoupled_ipadapter.scoring.clip_scores import score_images
    from decoupled_ipadapter.nodes.clip_scores import CLIPScores
    from decoupled_ipadapter.nodes.openclip_loader import LoadOpenCLIPModel

    with torch.inference_mode():
        openclip = LoadOpenCLIPModel.execute(clip_name=model_files["full"].name, activation="auto").result[0]
        generated, prompt = pictures(2, seed=8), pictures(1, seed=9)
        output = CLIPScores.execute(openclip=openclip, generated=generated, image_prompt=prompt, caption="a small house")
    expected = score_images(model, generated, prompt, "a small house", where="t")
    clip_i_mean, clip_t_mean, cosine_mean = output.result
    assert clip_i_mean == pytest.approx(expected.clip_i.mean().item(), abs=1e-6)
    assert clip_t_mean == pytest.approx(expected.clip_t.mean().item(), abs=1e-6)
    assert cosine_mean == pytest.approx(expected.clip_t_cosine.mean().item(), abs=1e-6)
    text = output.ui.as_dict()["text"][0]
    assert f"image 2: CLIP-I {expected.clip_i[1].item():.4f}" in text
    assert f"mean: CLIP-I {clip_i_mean:.4f}  CLIP-T {clip_t_mean:.4f}" in text
    with pytest.raises(IPAdapterError, match="CLIP-I / CLIP-T Scores: .*2 generated images but 3 image prompts"):
        CLIPScores.execute(openclip=openclip, generated=generated, image_prompt=pictures(3, seed=1), caption="")


# --- the command-line tool --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli(comfy_host):
    spec = importlib.util.spec_from_file_location("clip_scores_cli", REPO / "tools" / "clip_scores.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_picture(tensor: torch.Tensor, path: Path, metadata: dict | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    if metadata is not None:
        info.add_text("decoupled_ipadapter", json.dumps(metadata))
    Image.fromarray((tensor[0].numpy() * 255).round().astype("uint8")).save(path, pnginfo=info)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def check_plot(path: Path) -> None:
    with Image.open(path) as plot:
        assert plot.format == "PNG" and plot.size == (1040, 380)  # two panels: CLIP-I and CLIP-T
        assert len(plot.convert("RGB").getcolors(1 << 16)) > 3  # axes, dots, lines: not a blank canvas


@pytest.mark.host
def test_cli_scores_a_folder_of_batch_tool_pngs(cli, model, model_files, tmp_path, capsys):
    from decoupled_ipadapter.scoring.clip_scores import score_images
    from decoupled_ipadapter.scoring.jobs import load_image

    references, out = tmp_path / "references", tmp_path / "out"
    references.mkdir(), out.mkdir()
    save_picture(pictures(1, seed=20), references / "cat.png")
    for index, weight in enumerate([0.0, 0.5, 0.5, 1.0]):
        metadata = dict(job_id=f"j{index}", image="cat.png", prompt="a cat", weight=weight, seed=index, server="s", workflow="w")
        save_picture(pictures(1, seed=30 + index), out / f"gen_{index}.png", metadata)
    save_picture(pictures(1, seed=40), out / "unrelated.png")
    assert cli.main(["--model", str(model_files["full"]), "--folder", str(out), "--references", str(references)]) == 0
    rows = read_csv(out / "clip_scores.csv")
    assert [row["generated"] for row in rows] == [str(out / f"gen_{index}.png") for index in range(4)]
    assert [float(row["weight"]) for row in rows] == [0.0, 0.5, 0.5, 1.0]
    for row in rows:
        expected = score_images(model, load_image(Path(row["generated"])), load_image(references / "cat.png"), "a cat", where="t")
        assert float(row["clip_i"]) == pytest.approx(expected.clip_i.item(), abs=1e-5)
        assert float(row["clip_t"]) == pytest.approx(expected.clip_t.item(), abs=1e-5)
        assert float(row["clip_t_cosine"]) == pytest.approx(expected.clip_t_cosine.item(), abs=1e-5)
    check_plot(out / "clip_scores.png")
    captured = capsys.readouterr()
    mean_half = (float(rows[1]["clip_i"]) + float(rows[2]["clip_i"])) / 2
    assert f"   0.5       2  {mean_half:.4f}" in captured.out
    assert "skipped unrelated.png" in captured.err


@pytest.mark.host
@pytest.mark.parametrize("damage", ["truncated", "corrupt_pixels", "not_a_png", "empty"])
def test_cli_reports_a_damaged_png_in_folder_mode_in_one_line(cli, model_files, tmp_path, capsys, damage):
    references, out = tmp_path / "references", tmp_path / "out"
    references.mkdir(), out.mkdir()
    save_picture(pictures(1, seed=20), references / "cat.png")
    metadata = dict(job_id="j", image="cat.png", prompt="a cat", weight=0.5, seed=1, server="s", workflow="w")
    save_picture(pictures(1, seed=21), out / "gen_0.png", metadata)
    whole = save_picture(pictures(1, seed=22), out / "gen_1.png", metadata).read_bytes()
    pixels = whole.index(b"IDAT") + 20
    damaged = {
        "truncated": whole[: len(whole) // 2],  # the download or the copy stopped halfway
        "corrupt_pixels": whole[:pixels] + bytes(byte ^ 0xFF for byte in whole[pixels : pixels + 8]) + whole[pixels + 8 :],
        "not_a_png": b"<html>not found</html>",
        "empty": b"",
    }[damage]
    (out / "gen_1.png").write_bytes(damaged)
    assert cli.main(["--model", str(model_files["full"]), "--folder", str(out), "--references", str(references)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("clip_scores: 'gen_1.png' cannot be read as a PNG (") and "generate it again" in lines[0]
    assert not (out / "clip_scores.csv").exists()


@pytest.mark.host
def test_cli_scores_a_csv_and_reports_bad_rows(cli, model_files, tmp_path, capsys):
    for name, seed in (("ref.png", 1), ("a.png", 2), ("b.png", 3)):
        save_picture(pictures(1, seed=seed), tmp_path / name)
    table = tmp_path / "jobs.csv"
    table.write_text("image_prompt,generated,caption,weight\nref.png,a.png,a boat,0.2\nref.png,b.png,,0.8\nref.png,ref.png,a boat,\n")
    assert cli.main(["--model", str(model_files["full"]), "--csv", str(table)]) == 0
    rows = read_csv(tmp_path / "clip_scores.csv")
    assert list(rows[0]) == ["image_prompt", "generated", "caption", "weight", "clip_i", "clip_t", "clip_t_cosine"]
    assert rows[1]["clip_t"] == "" and rows[1]["caption"] == ""  # no caption: CLIP-I only
    assert float(rows[2]["clip_i"]) == pytest.approx(1.0, abs=1e-5) and rows[2]["weight"] == ""
    with Image.open(tmp_path / "clip_scores.png") as plot:
        assert plot.size == (1040, 380)
    table.write_text("image_prompt,generated,caption,weight\nref.png,missing.png,x,0.5\n")
    assert cli.main(["--model", str(model_files["full"]), "--csv", str(table)]) == 2
    assert "'jobs.csv' line 2: generated 'missing.png' is not a file" in capsys.readouterr().err
    table.write_text("image_prompt,generated,caption,weight\nref.png,a.png,x,0.5\n")
    assert cli.main(["--model", str(tmp_path / "none.bin"), "--csv", str(table)]) == 2
    assert "none.bin' does not exist" in capsys.readouterr().err
