"""tinyshapes — an example of *your own* model and data for a prunetune study.

``tinyshapes.data:load`` makes a small image classification set; ``tinyshapes.nets:build``
makes a residual CNN for it. A study names them as factories (see ``../study.yaml``).
"""

from tinyshapes.data import CLASSES, load
from tinyshapes.nets import ShapeNet, build

__all__ = ["CLASSES", "ShapeNet", "build", "load"]
