"""A synthetic reference picture for the demo and the server tests (no photo ships with the repository)."""

from io import BytesIO

from PIL import Image, ImageDraw


def reference_picture(size: int = 512) -> bytes:
    """A synthetic RGB reference: a diagonal colour gradient with a few solid shapes, as PNG bytes."""
    image = Image.new("RGB", (size, size))
    pixels = image.load()
    for y in range(size):
        for x in range(size):
            pixels[x, y] = (255 * x // size, 255 * y // size, 255 - 255 * (x + y) // (2 * size))
    draw = ImageDraw.Draw(image)

    def box(*fractions):
        return [size * fraction for fraction in fractions]

    draw.ellipse(box(0.15, 0.15, 0.55, 0.55), fill=(250, 220, 40), outline=(20, 20, 20), width=4)
    draw.rectangle(box(0.55, 0.5, 0.9, 0.85), fill=(30, 90, 200), outline=(255, 255, 255), width=4)
    draw.polygon(box(0.1, 0.9, 0.3, 0.6, 0.5, 0.9), fill=(200, 40, 60))
    buffer = BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
