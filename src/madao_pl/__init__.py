"""madao_pl: MADAO (implicit-hypergradient augmentation policy search) for PyTorch Lightning.

Learn a data-augmentation policy while training the classifier, by gradient descent on the
validation loss. See the README for the command line and `madao_pl.module.MADAOModule` for use
inside your own Lightning code.
"""

__version__ = "0.1.0"
