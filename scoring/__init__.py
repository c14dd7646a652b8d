"""The IP-Adapter paper's CLIP-I and CLIP-T scores: the formulas, scoring a folder or CSV of jobs, and the plot."""
