"""Pictures: label overlays, side-by-side panels, legends, palette PNGs, heat maps, learning curves and
one pixel's attention (``query_attention_maps``, ``query_attention_figure``).

matplotlib is imported only when a function needs it (``plot_learning_curve``, ``heatmap``); without it,
``heatmap`` falls back to a built-in viridis.
"""

from .attention_maps import query_attention_figure, query_attention_maps
from .curves import plot_learning_curve, read_log
from .overlay import (
                      blend_heatmap,
                      colormap_table,
                      error_map,
                      heatmap,
                      legend,
                      overlay,
                      panel_grid,
                      save_label_png,
                      scale_attention_figure,
                      side_by_side,
)

__all__ = ["overlay", "side_by_side", "error_map", "legend", "save_label_png", "heatmap", "blend_heatmap",
           "colormap_table", "panel_grid", "scale_attention_figure", "plot_learning_curve", "read_log",
           "query_attention_maps", "query_attention_figure"]
