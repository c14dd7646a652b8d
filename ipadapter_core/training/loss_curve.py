"""The loss curve of a training run as an IMAGE `[1, H, W, 3]`: the loss per step (a blue line), its lowest and
highest values written at the left."""

import torch

WIDTH, HEIGHT, MARGIN = 512, 256, 48


def loss_curve_image(losses: list[float]) -> torch.Tensor:
    import numpy as np
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(picture)
    plot_width, plot_height = WIDTH - MARGIN - 8, HEIGHT - 16
    draw.line([(MARGIN, 8), (MARGIN, 8 + plot_height), (MARGIN + plot_width, 8 + plot_height)], fill="black")
    if losses:
        low, high = min(losses), max(losses)
        span = (high - low) or 1.0
        steps = max(len(losses) - 1, 1)
        points = [
            (MARGIN + plot_width * index / steps, 8 + plot_height * (1 - (loss - low) / span))
            for index, loss in enumerate(losses)
        ]
        draw.line(points if len(points) > 1 else points * 2, fill="blue", width=2)
        draw.text((2, 4), f"{high:.4g}", fill="black")
        draw.text((2, plot_height - 4), f"{low:.4g}", fill="black")
    else:
        draw.text((MARGIN + 8, HEIGHT // 2), "0 steps: no loss", fill="black")
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)  # [H, W, 3]
    return pixels[None]  # [1, H, W, 3]
