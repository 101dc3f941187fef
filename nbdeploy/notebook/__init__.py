"""Reading notebooks: cells, tags, kernels and the typed parameters cell."""

from nbdeploy.notebook.parameters import Parameter, parse_parameters, resolve_parameters
from nbdeploy.notebook.reader import Notebook, read_notebook

__all__ = ["Notebook", "Parameter", "parse_parameters", "read_notebook", "resolve_parameters"]
