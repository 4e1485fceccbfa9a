"""Pictures of what a model does: attention heatmaps (PNG) and an interactive offline page (HTML).

Imports model/ (never the other way round); used only by sample.py (--attention) and
training/ (attention.png at each eval).
"""
