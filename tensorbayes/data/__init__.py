"""
Data for the method: generators of problems with a known answer, and loaders of real data.

- :func:`planted_tensor`: a tensor of known ranks in any format, with a noisy observed subset
  of its entries and the noiseless rest held out (tensor completion, rank recovery).
- :func:`teacher_student`: a classification task labelled by a teacher network whose first
  weight is a planted low-rank TT or TTM (rank recovery inside a network).
- :class:`ClickGenerator` / :class:`ClickStream`: a synthetic, streamed click log with Criteo
  Kaggle's cardinalities and planted low-rank TTM embeddings (recommendation at scale).
- :func:`load_fashion_mnist`: Fashion-MNIST from the idx files of Debian's package
  ``dataset-fashion-mnist`` (or a folder given by ``root=``).

Nothing here downloads anything at run time.
"""

from .clicks import CRITEO_KAGGLE_CARDINALITIES, ClickGenerator, ClickStream
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from .planted import PlantedTensor, planted_tensor
from .teacher import TeacherStudent, teacher_student

__all__ = [
    "PlantedTensor",
    "planted_tensor",
    "FASHION_MNIST_CLASSES",
    "load_fashion_mnist",
    "TeacherStudent",
    "teacher_student",
    "CRITEO_KAGGLE_CARDINALITIES",
    "ClickGenerator",
    "ClickStream",
]
