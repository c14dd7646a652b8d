"""A PNG of CLIP-I and CLIP-T against λ, drawn with Pillow (its default font has no λ glyph, so
the picture says "lambda"): one panel per score, every image a grey dot, the mean
per λ a coloured line. The paper's trade-off: CLIP-I rises with λ (closer to the image prompt) while CLIP-T falls
(further from the text)."""

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..ipadapter_core.errors import IPAdapterError
from .jobs import ScoredJob, WeightSummary

PANEL_SIZE = (520, 380)
MARGIN = dict(left=70, right=20, top=40, bottom=50)
TICKS = 5
BACKGROUND = "white"
AXIS = "black"
GRID = (225, 225, 225)
DOT = (150, 150, 150)
COLOURS = {"CLIP-I": (31, 119, 180), "CLIP-T": (214, 39, 40)}


@dataclass(frozen=True)
class Panel:
    title: str
    points: list[tuple[float, float]]  # (λ, score) of every image
    means: list[tuple[float, float]]  # (λ, mean score), λ increasing


def panels_of(scored: list[ScoredJob], summaries: list[WeightSummary]) -> list[Panel]:
    panels = [
        Panel(
            "CLIP-I",
            [(item.job.weight, item.clip_i) for item in scored if item.job.weight is not None],
            [(summary.weight, summary.clip_i) for summary in summaries],
        )
    ]
    clip_t_points = [(item.job.weight, item.clip_t) for item in scored if item.job.weight is not None and item.clip_t is not None]
    if clip_t_points:
        panels.append(
            Panel(
                "CLIP-T",
                clip_t_points,
                [(summary.weight, summary.clip_t) for summary in summaries if summary.clip_t is not None],
            )
        )
    return panels


def padded_range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 0.05)
    return low - pad, high + pad


def _draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], panel: Panel, font) -> None:
    left, top = origin[0] + MARGIN["left"], origin[1] + MARGIN["top"]
    right, bottom = origin[0] + PANEL_SIZE[0] - MARGIN["right"], origin[1] + PANEL_SIZE[1] - MARGIN["bottom"]
    x_low, x_high = padded_range([weight for weight, _ in panel.points])
    y_low, y_high = padded_range([score for _, score in panel.points])

    def at(weight: float, score: float) -> tuple[float, float]:
        return (
            left + (weight - x_low) / (x_high - x_low) * (right - left),
            bottom - (score - y_low) / (y_high - y_low) * (bottom - top),
        )

    for tick in range(TICKS + 1):
        y_value = y_low + (y_high - y_low) * tick / TICKS
        y = at(x_low, y_value)[1]
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.text((left - 8, y), f"{y_value:.3f}", fill=AXIS, font=font, anchor="rm")
    for weight in sorted({weight for weight, _ in panel.points}):
        x = at(weight, y_low)[0]
        draw.line([(x, bottom), (x, bottom + 5)], fill=AXIS)
        draw.text((x, bottom + 8), f"{weight:g}", fill=AXIS, font=font, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=AXIS)
    draw.text(((left + right) / 2, origin[1] + 12), f"{panel.title} against the weight (lambda)", fill=AXIS, font=font, anchor="mt")
    draw.text(((left + right) / 2, bottom + 28), "weight (lambda)", fill=AXIS, font=font, anchor="mt")
    for weight, score in panel.points:
        x, y = at(weight, score)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=DOT)
    colour = COLOURS[panel.title]
    mean_points = [at(weight, score) for weight, score in panel.means]
    if len(mean_points) > 1:
        draw.line(mean_points, fill=colour, width=2)
    for x, y in mean_points:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)


def draw_scores_plot(scored: list[ScoredJob], summaries: list[WeightSummary], path: Path) -> None:
    """Writes the plot to `path` (PNG); refuses when no image has a λ to plot against."""
    if not summaries:
        raise IPAdapterError("No scored image has a weight (λ), so there is nothing to plot against λ. Give a weight column.")
    panels = panels_of(scored, summaries)
    canvas = Image.new("RGB", (PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    for index, panel in enumerate(panels):
        _draw_panel(draw, (index * PANEL_SIZE[0], 0), panel, font)
    canvas.save(path, format="PNG")
