"""One call of the torch.export-based ONNX exporter, set up as every export of ours needs it."""
import contextlib
import logging
import warnings

import torch

from .._files import written_atomically

EXPORT_EXTRA_HINT = 'pip install "retinaface-ext[export]"  (onnx, onnxscript and onnxruntime)'
DEFAULT_OPSET = 18  # the opset torch.onnx's translations are written for (no version conversion)


def import_onnx():
    """The onnx module; ImportError naming the extra when onnx or onnxscript is missing."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as error:
        raise ImportError(f"ONNX export needs {error.name}: {EXPORT_EXTRA_HINT}") from None
    return onnx


@contextlib.contextmanager
def _quiet_exporter():
    with warnings.catch_warnings():
        # torch 2.13's run_decompositions deep-copies the program, which rebuilds pytree
        # LeafSpec objects through their deprecated constructor: torch's own FutureWarning,
        # about torch's code, that no caller can act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning)
        # Inputs that share a torch.export.Dim share one ONNX axis name: that is what we ask for.
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used, since it shares",
                                category=UserWarning)
        # The registry logs one warning per torchvision op it cannot register when
        # torchvision is absent; we use none of them.
        registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registry_logger.level
        registry_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            registry_logger.setLevel(level)


def export_module(module, example_inputs, path, input_names, output_names, dynamic_shapes=None,
                  output_shapes=None, opset_version=DEFAULT_OPSET, check=True):
    """Exports ``module`` with ``torch.onnx.export(dynamo=True)`` to one self-contained file at ``path``.

    Our custom ops are translated to standard ONNX (``translations.onnx_translations``).
    ``dynamic_shapes`` as ``torch.export``; ``output_shapes`` optionally renames the
    outputs' symbolic dimensions (the exporter writes them as formulas of the input's).
    """
    onnx = import_onnx()
    from .translations import onnx_translations

    _check_no_inference_tensors(module)
    with _quiet_exporter():
        program = torch.onnx.export(
            module, tuple(example_inputs), dynamo=True, input_names=list(input_names),
            output_names=list(output_names), dynamic_shapes=dynamic_shapes,
            custom_translation_table=onnx_translations(), opset_version=opset_version, verbose=False,
        )
    _check_dynamic_axes_kept(program, input_names, dynamic_shapes)
    if output_shapes:
        import onnx_ir

        for value in program.model.graph.outputs:
            if value.name in output_shapes:
                value.shape = onnx_ir.Shape(output_shapes[value.name])
    with written_atomically(path) as temporary:
        program.save(temporary, external_data=False)
        if check:
            onnx.checker.check_model(temporary)
    return path


def _check_no_inference_tensors(module):
    # torch.export traces with autograd on, which refuses inference tensors; it
    # would then fall back to a graph fixed to the example's size.
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_inference():
            raise ValueError(f"ONNX export: {name} is an inference tensor (the model was created or loaded under "
                             "torch.inference_mode()); create or load the model outside inference mode to export it")


def _check_dynamic_axes_kept(program, input_names, dynamic_shapes):
    """Raises if an axis asked to be dynamic came out fixed.

    torch.onnx falls back to other capture strategies when torch.export fails,
    the last of which may specialise the graph to the example's sizes without an error.
    """
    for name, value, axes in zip(input_names, program.model.graph.inputs, dynamic_shapes or ()):
        fixed = [axis for axis in (axes or {}) if isinstance(value.shape[axis], int)]
        if fixed:
            raise RuntimeError(f"ONNX export: the exporter fixed axes {fixed} of input {name!r} to the example's "
                               f"sizes {[value.shape[a] for a in fixed]} (torch.export could not trace the model "
                               "with dynamic shapes; torch.onnx.export(..., verbose=True) shows why)")
