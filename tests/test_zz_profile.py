import time, os
import torch

def test_profile(comfy_host):
    import comfy.sd, comfy.clip_vision
    from decoupled_ipadapter.ipadapter_core.training import run as R, loop
    from decoupled_ipadapter.ipadapter_core.adapter import load_adapter
    from decoupled_ipadapter.ipadapter_core.memory import manage
    from decoupled_ipadapter.nodes.train import caption_encoder, latent_encoder
    root = os.path.expanduser("~/.cache/decoupled-ipadapter/standins")
    t = time.perf_counter(); marks = []
    def mark(name):
        nonlocal t; now = time.perf_counter(); marks.append((name, round(now - t, 2))); t = now
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(f"{root}/checkpoints/v1-5-pruned-emaonly.safetensors")
        cv = comfy.clip_vision.load(f"{root}/clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
        start = manage(load_adapter(f"{root}/ipadapter/ip-adapter_sd15.safetensors"))
    mark("load")
    pics = torch.rand(2, 64, 64, 3)
    orig_encode = R.encode_training_data
    def timed_encode(*a, **k):
        mark("before encode"); out = orig_encode(*a, **k); mark("encode"); return out
    R.encode_training_data = timed_encode
    orig_train = R.train
    def timed_train(*a, **k):
        out = orig_train(*a, on_step=lambda s, l: mark(f"step {s}"), **{kk: v for kk, v in k.items() if kk != "on_step"}); return out
    R.train = timed_train
    with torch.inference_mode(False):
        R.train_adapter_file(model, encode_latents=latent_encoder(model, vae), clip_vision=cv, encode_text=caption_encoder(clip),
            images=[pics], captions=["a", "b"], start=start, start_path=None, kind="ip-adapter",
            settings=loop.TrainingSettings(steps=3, batch_size=1, learning_rate=1e-4, weight_decay=0.01, seed=0),
            output_path="/tmp/profile_out.safetensors")
    mark("save")
    print(marks)
