"""One call of the torch.export-based ONNX exporter, set up as every export of ours needs it."""
import contextlib
import logging
import os
import warnings

import torch

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

    with _quiet_exporter():
        program = torch.onnx.export(
            module, tuple(example_inputs), dynamo=True, input_names=list(input_names),
            output_names=list(output_names), dynamic_shapes=dynamic_shapes,
            custom_translation_table=onnx_translations(), opset_version=opset_version, verbose=False,
        )
    if output_shapes:
        import onnx_ir

        for value in program.model.graph.outputs:
            if value.name in output_shapes:
                value.shape = onnx_ir.Shape(output_shapes[value.name])
    program.save(os.fspath(path), external_data=False)
    if check:
        onnx.checker.check_model(os.fspath(path))
    return path
