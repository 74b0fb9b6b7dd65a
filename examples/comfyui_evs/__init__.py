"""EVS as a ComfyUI custom-node pack: copy or link this folder into ComfyUI/custom_nodes, with EVS pip-installed into
ComfyUI's Python (the README's "In ComfyUI" section). ComfyUI imports the folder as a package and reads these two names.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
